"""PACS in and out over DICOMweb against a real Orthanc (tests/orthanc.py).

Phantom CT series (uncompressed and JPEG 2000) and their SEGs are uploaded through Orthanc's REST
API; cases are materialised from the PACS and ingested; a study is segmented with
`medtfx predict --dicomweb ... --store` and the stored SEG, read back over QIDO-RS/WADO-RS, must
reference its source series and equal the in-process mask voxel for voxel.
"""

import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from components.image_example_gen import pacs_source
from modules.io import dicom, dicomweb
from modules.io.nifti_reader import read_nifti
from modules.io.volume import to_canonical
from pipeline.client import predict
from pipeline.tools.phantoms import make_phantom, write_dicom_series
from tests.orthanc import PASSWORD, USER, start_orthanc
from tests.serving_double import band_model, exported_test_model

SEED = 23
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# ---------------------------------------------------------------------------------------------
# Protocol pieces without a server
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, root, query",
    [
        ("dicomweb+http://pacs:8042/dicom-web", "http://pacs:8042/dicom-web", {}),
        (
            "dicomweb+https://h/dicomWeb/?StudyDate=20240101-20241231&SeriesDescription=*AX*",
            "https://h/dicomWeb",
            {"StudyDate": "20240101-20241231", "SeriesDescription": "*AX*"},
        ),
        ("http://127.0.0.1:1/dicom-web", "http://127.0.0.1:1/dicom-web", {}),
    ],
)
def test_dataset_url_gives_root_and_qido_keys(text, root, query):
    assert dicomweb.parse_dataset_url(text) == (root, query)


@pytest.mark.parametrize(
    "text, message",
    [
        ("dicomweb+http://alice:secret@pacs/dicom-web", "carries credentials"),
        ("dicomweb+ftp://pacs/dicom-web", "not a DICOMweb URL"),
        ("/data/folder", "not a DICOMweb URL"),
    ],
)
def test_dataset_url_refuses_credentials_and_other_schemes(text, message):
    with pytest.raises(ValueError, match=message):
        dicomweb.parse_dataset_url(text)
    assert "secret" not in str(pytest.raises(ValueError, dicomweb.parse_dataset_url, text).value)


@pytest.mark.parametrize(
    "environ, header, auth",
    [
        ({dicomweb.TOKEN_ENV: "tok"}, "Bearer tok", None),
        ({dicomweb.TOKEN_ENV: "tok", dicomweb.USER_ENV: "u", dicomweb.PASSWORD_ENV: "p"}, "Bearer tok", None),
        ({dicomweb.USER_ENV: "u", dicomweb.PASSWORD_ENV: "p"}, None, ("u", "p")),
        ({}, None, None),
    ],
)
def test_credentials_come_from_the_environment(environ, header, auth):
    session = dicomweb.session_from_env(environ)
    assert session.headers.get("Authorization") == header and session.auth == auth


def test_half_basic_credentials_are_refused():
    with pytest.raises(ValueError, match="set both"):
        dicomweb.session_from_env({dicomweb.USER_ENV: "u"})


def test_unreachable_server_is_retried_with_backoff_then_reported():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    client = dicomweb.DicomWebClient(
        f"http://127.0.0.1:{port}/dicom-web",
        timeout_s=2,
        attempts=4,
        initial_backoff=0.25,
        environ={},
        sleep=sleeps.append,
    )
    with pytest.raises(dicomweb.DicomWebError, match="QIDO-RS series of study 1.2.3: ConnectionError"):
        client.search_series("1.2.3")
    assert sleeps == [0.25, 0.5, 1.0] and client.retries == 3


@pytest.mark.parametrize(
    "input_base, processor",
    [
        ("dicomweb+http://pacs/dicom-web?StudyDate=2024", "PacsInputProcessor"),
        ("/data/folder", "FileBasedInputProcessor"),
    ],
)
def test_example_gen_driver_fingerprints_a_pacs_by_its_listing_and_folders_by_their_files(input_base, processor):
    from tfx.components.example_gen import utils

    from components.image_example_gen.driver import ImageExampleGenDriver

    driver = ImageExampleGenDriver(metadata_handle=None)
    splits = utils.make_default_input_config().splits
    assert type(driver.get_input_processor(splits, input_base_uri=input_base)).__name__ == processor


# ---------------------------------------------------------------------------------------------
# Test data: phantom series and SEGs
# ---------------------------------------------------------------------------------------------


def _series(index, folder, study_uid, modality=None, jpeg2000=False, study_date=""):
    """Phantom `index` as DICOM files in `folder`, moved into `study_uid` (one patient per study,
    dated `study_date` YYYYMMDD when given), optionally relabelled to `modality` and JPEG 2000
    (lossless) compressed. Returns (phantom, paths, SeriesInstanceUID)."""
    phantom = make_phantom(index, SEED)
    write_dicom_series(phantom, folder, SEED)
    os.remove(os.path.join(folder, "label.nii.gz"))
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    series_uid = generate_uid()
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = study_uid, study_uid, series_uid
        ds.PatientName, ds.PatientID = f"Secretname^{study_uid[-6:]}", f"PID-{study_uid[-6:]}"
        if modality:
            ds.Modality = modality
        if study_date:
            ds.StudyDate = study_date
        if jpeg2000:
            ds.compress(JPEG2000Lossless)
        ds.save_as(path)
    return phantom, paths, series_uid


def _native_label(phantom, paths):
    """The phantom's ground-truth label on the DICOM series' own (column, row, slice) grid."""
    affine, _ = predict.dicom_native_grid(dicom.read_stack(paths)[1])
    canonical, _ = to_canonical(phantom.label, phantom.affine)
    return predict.from_canonical(canonical, affine).astype(np.uint8), affine


def _seg(paths, label, out_path, shift_mm=None):
    """A SEG of `label` (native grid) referencing the series in `paths`. shift_mm: put the SEG's
    frames on a grid shifted by that (RAS) vector instead, i.e. off the series' lattice."""
    layout = dicom.read_stack(paths)[1]
    affine, frames = predict.dicom_native_grid(layout)
    if shift_mm is None:
        predict.write_dicom_seg(out_path, label, frames, affine, num_classes=3)
        return out_path
    shifted = affine.copy()
    shifted[:3, 3] += shift_mm
    original = predict._frame_aligned_pixels
    predict._frame_aligned_pixels = lambda *a: None  # geometry from the (shifted) volume
    try:
        predict.write_dicom_seg(out_path, label, frames, shifted, num_classes=3)
    finally:
        predict._frame_aligned_pixels = original
    return out_path


def _broken_seg(source_path, out_path, study_uid):
    """A file claiming to be a SEG (SOP class, modality) without any SEG module: unreadable."""
    ds = pydicom.dcmread(source_path)
    ds.Modality, ds.SOPClassUID = "SEG", SEG_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = SEG_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), study_uid
    ds.save_as(out_path)
    return out_path


# QIDO-RS StudyDate ranges selecting parts of the `pacs` archive (see its docstring).
CHECK_DATES = "20240101-20241231"  # studies A and B: ingested cases and every quarantine reason
TRAINING_DATES = "20240101-20251231"  # A and B plus the training studies C..F


def _study_uid(name):
    """A StudyInstanceUID fixed by `name`. Patient IDs are derived from it, so the train/eval
    split by patient hash is the same on every run."""
    return generate_uid(entropy_srcs=["medtfx-test-study", name])


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding seven studies, one patient each:
    A (2024): CT (uncompressed) + its SEG; a 'PT' series (an MR phantom relabelled) without SEG; an
       unreadable SEG object.
    B (2024): CT (JPEG 2000) + its SEG; a CT whose SEG lies half a voxel off the series' grid.
    C..F (2025): a CT with its SEG each, C and E JPEG 2000: with A and B six training cases.
    T (2026): a CT (JPEG 2000) without SEG: the study a model trained from the PACS segments."""
    server = start_orthanc()
    root = tmp_path_factory.mktemp("pacs_data")
    study = {name: _study_uid(name) for name in "ABCDEFT"}
    data = {"server": server, "study": study, "study_a": study["A"], "study_b": study["B"]}
    data.update(truth={}, series={}, folders={})
    uploads = []
    for name, index, in_study, date, kwargs, seg in (
        ("ct_plain", 0, "A", "20240315", {}, "ok"),
        ("pt_unlabelled", 1, "A", "20240315", {"modality": "PT"}, None),
        ("ct_jpeg2000", 2, "B", "20240611", {"jpeg2000": True}, "ok"),
        ("ct_off_grid", 4, "B", "20240611", {}, "shifted"),
        ("train_c", 6, "C", "20250110", {"jpeg2000": True}, "ok"),
        ("train_d", 8, "D", "20250221", {}, "ok"),
        ("train_e", 10, "E", "20250402", {"jpeg2000": True}, "ok"),
        ("train_f", 12, "F", "20250517", {}, "ok"),
        ("target", 14, "T", "20260105", {"jpeg2000": True}, None),
    ):
        folder = str(root / name)
        phantom, paths, series_uid = _series(index, folder, study[in_study], study_date=date, **kwargs)
        data["series"][name] = (series_uid, paths)
        data["folders"][name] = folder
        uploads += paths
        if seg:
            label, affine = _native_label(phantom, paths)
            data["truth"][series_uid] = (label, affine)
            uploads.append(
                _seg(paths, label, str(root / f"{name}.seg.dcm"), shift_mm=None if seg == "ok" else affine[:3, 0] * 0.5)
            )
    data["broken_seg"] = _broken_seg(data["series"]["ct_plain"][1][0], str(root / "broken.dcm"), study["A"])
    uploads.append(data["broken_seg"])
    server.upload(uploads)
    yield data
    server.stop()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.delenv(dicomweb.TOKEN_ENV, raising=False)
    monkeypatch.setenv(dicomweb.USER_ENV, USER)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, PASSWORD)


# ---------------------------------------------------------------------------------------------
# Protocol against Orthanc
# ---------------------------------------------------------------------------------------------


def test_without_credentials_orthanc_refuses_and_it_is_not_retried(pacs, monkeypatch):
    for name in (dicomweb.TOKEN_ENV, dicomweb.USER_ENV, dicomweb.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    sleeps = []
    client = dicomweb.DicomWebClient(pacs["server"].dicomweb, sleep=sleeps.append)
    with pytest.raises(dicomweb.DicomWebError, match="HTTP 401"):
        client.search_series(pacs["study_a"])
    assert sleeps == []


@pytest.mark.parametrize(
    "name, transfer_syntax", [("ct_plain", pydicom.uid.ExplicitVRLittleEndian), ("ct_jpeg2000", JPEG2000Lossless)]
)
def test_wado_returns_instances_in_their_stored_transfer_syntax(pacs, credentials, name, transfer_syntax):
    series_uid, paths = pacs["series"][name]
    study = pacs["study_a"] if name == "ct_plain" else pacs["study_b"]
    client = dicomweb.DicomWebClient(pacs["server"].dicomweb)
    instances = client.retrieve_series(study, series_uid)
    assert len(instances) == len(paths)
    assert {ds.file_meta.TransferSyntaxUID for ds in instances} == {transfer_syntax}
    assert pacs["server"].instance_transfer_syntax(instances[0].SOPInstanceUID) == transfer_syntax
    # Pixels survive the trip (JPEG 2000 lossless decodes to the uploaded values).
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths[:3]}
    for ds in instances:
        if ds.SOPInstanceUID in by_uid:
            np.testing.assert_array_equal(ds.pixel_array, by_uid[ds.SOPInstanceUID].pixel_array)


# ---------------------------------------------------------------------------------------------
# Training from the PACS: materialised cases, ingested
# ---------------------------------------------------------------------------------------------


def test_materialised_labels_are_the_segs_on_each_series_grid(pacs, credentials, tmp_path):
    result = pacs_source.materialise(f"dicomweb+{pacs['server'].dicomweb}?StudyDate={CHECK_DATES}", str(tmp_path))
    assert result.cases == 2
    with open(result.manifest) as fh:
        rows = fh.read().splitlines()
    assert rows[0] == "image,label,modality,site" and len(rows) == 3
    for name in ("ct_plain", "ct_jpeg2000"):
        series_uid, _ = pacs["series"][name]
        truth, affine = pacs["truth"][series_uid]
        label_path = os.path.join(
            os.path.dirname(result.manifest), "labels", pacs_source.series_id(series_uid) + ".nii.gz"
        )
        label = read_nifti(label_path)
        np.testing.assert_array_equal(label.array, to_canonical(truth, affine)[0])
        assert truth.any()


def test_inventory_from_the_pacs_ingests_cases_and_quarantines_the_rest_with_reasons(
    pacs, credentials, tmp_path, capsys
):
    from pipeline import cli

    report = tmp_path / "inventory.json"
    url = f"dicomweb+{pacs['server'].dicomweb}?StudyDate={CHECK_DATES}"
    assert cli.main(["inventory", url, "--report", str(report)]) == 0
    with open(report) as fh:
        records = json.load(fh)["cases"]
    ok = [r for r in records if r["status"] == "ok"]
    quarantined = {
        r["reason"].split(": ", 1)[0].rsplit("/", 1)[-1]: r["reason"] for r in records if r["status"] != "ok"
    }
    assert len(ok) == 2, records
    series = {name: uid for name, (uid, _) in pacs["series"].items()}
    expected = {
        series["pt_unlabelled"]: "no DICOM SEG in the study references this series",
        series["ct_off_grid"]: "do not lie on the series' voxel grid",
    }
    for uid, phrase in expected.items():
        assert phrase in quarantined.pop(uid)
    (broken,) = quarantined.values()
    assert "unreadable SEG" in broken
    text = report.read_text() + "\n".join(capsys.readouterr())
    assert "Secretname" not in text and "PID-" not in text


def test_the_example_gen_transform_ingests_a_pacs_dataset_url(pacs, credentials, tmp_path):
    """ImageExampleGen's Beam transform with a dicomweb+ input_base: cases materialised into the
    cache, encoded as tf.Examples; the quarantined series go to the report."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from components.image_example_gen import executor

    properties = {
        "input_base": f"dicomweb+{pacs['server'].dicomweb}?StudyDate={CHECK_DATES}",
        executor.REQUIRE_LABELS_KEY: 1,
        executor._REPORT_URI_KEY: str(tmp_path / "report"),
        executor._PACS_CACHE_KEY: str(tmp_path / "cache"),
    }
    with beam.Pipeline() as pipeline:
        examples = pipeline | executor._ImagesToExample(properties, "*")
        assert_that(examples | beam.Map(lambda e: 1) | beam.CombineGlobally(sum), equal_to([2]))
    records = executor.merge_report(str(tmp_path / "report"), str(tmp_path / "inventory.json"))
    assert [r["status"] for r in records].count("ok") == 2 and len(records) == 5, records


# ---------------------------------------------------------------------------------------------
# Inference from and to the PACS
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_only_model(tmp_path_factory):
    """The tests' band model exported with modalities=['CT']: it refuses anything else."""
    import tensorflow_transform as tft

    from modules.train import trainer

    base = exported_test_model()
    output = tft.TFTransformOutput(os.path.join(base["root"], "transform"))
    shape = output.transformed_feature_spec()["image"].shape
    model_dir = str(tmp_path_factory.mktemp("ct_model") / "model")
    trainer.export(band_model(shape, base["num_classes"]), output, model_dir, modalities=["CT"])
    return model_dir


@pytest.fixture(scope="module")
def study_pacs(tmp_path_factory):
    """A fresh Orthanc with one study: a CT series, a 'PT' series and a ground-truth SEG."""
    server = start_orthanc()
    root = tmp_path_factory.mktemp("study")
    study = generate_uid()
    phantom, ct_paths, ct_uid = _series(0, str(root / "ct"), study)
    _, pt_paths, pt_uid = _series(3, str(root / "pt"), study, modality="PT")
    label, _ = _native_label(phantom, ct_paths)
    server.upload(ct_paths + pt_paths + [_seg(ct_paths, label, str(root / "truth.seg.dcm"))])
    yield {"server": server, "study": study, "ct": (ct_uid, ct_paths), "pt": pt_uid, "ct_folder": str(root / "ct")}
    server.stop()


def _seg_series(client, study):
    return [s for s in client.search_series(study) if s.modality == "SEG"]


def _stored_seg(client, study, before):
    """The one SEG series of `study` not in `before` (QIDO-RS), retrieved and read with highdicom."""
    import highdicom as hd

    (new,) = [s for s in _seg_series(client, study) if s not in before]
    (stored,) = client.retrieve_series(study, new.series_uid)
    return hd.seg.Segmentation.from_dataset(stored)


def _local_mask(model_dir, folder, out_dir):
    """In-process `predict` of the DICOM series in `folder`: (mask (X, Y, Z) uint8 on the
    series' own grid, its voxel -> RAS affine, the NIfTI written)."""
    import nibabel as nib

    (local,) = predict.predict_inputs(predict.InProcessModel(model_dir), [folder], out_dir, log=lambda m: None)
    assert local["status"] == "ok", local
    image = nib.load(local["outputs"]["nifti"])
    return np.asarray(image.dataobj), image.affine, local["outputs"]["nifti"]


def _assert_stored_seg_is_the_local_mask(seg, study, series_uid, mask, affine):
    """The stored SEG is in `study`, references only `series_uid` and, read onto the series'
    grid, equals the in-process `mask` voxel for voxel (and the mask is not empty)."""
    assert seg.StudyInstanceUID == study
    assert {series for _, series, _ in seg.get_source_image_uids()} == {series_uid}
    assert mask.any()
    np.testing.assert_array_equal(pacs_source.seg_label_on_grid(seg, mask.shape, affine), mask)


def test_predict_study_stores_a_seg_that_references_its_series_and_equals_the_local_mask(
    study_pacs, ct_only_model, credentials, tmp_path, capsys
):
    import nibabel as nib

    from pipeline import cli

    url, study = study_pacs["server"].dicomweb, study_pacs["study"]
    ct_uid, ct_paths = study_pacs["ct"]
    client = dicomweb.DicomWebClient(url)
    before = _seg_series(client, study)
    listing = pacs_source.listing_fingerprint(f"dicomweb+{url}")
    argv = ["predict", "--model", ct_only_model, "--dicomweb", url, "--study", study]
    # Without --store nothing is written back.
    assert cli.main(argv + ["--output", str(tmp_path / "dry")]) == 0
    assert _seg_series(client, study) == before
    assert pacs_source.listing_fingerprint(f"dicomweb+{url}") == listing
    assert cli.main(argv + ["--output", str(tmp_path / "out"), "--store"]) == 0
    # A study that gains a series is a new training input: its listing fingerprint changes.
    assert pacs_source.listing_fingerprint(f"dicomweb+{url}") != listing
    with open(tmp_path / "out" / predict.REPORT_FILE) as fh:
        records = {r["series_uid"]: r for r in json.load(fh)["results"]}
    assert records[ct_uid]["status"] == "ok" and len(records[ct_uid]["stored"]) == 1, records
    pt = records[study_pacs["pt"]]
    assert pt["status"] == "skipped" and "the model refused the input" in pt["reason"], pt
    assert {r["status"] for uid, r in records.items() if uid not in (ct_uid, study_pacs["pt"])} == {"skipped"}
    # QIDO-RS finds the new SEG in the study; it references the source series and equals, voxel
    # for voxel, the in-process mask of the same series read from a folder.
    seg = _stored_seg(client, study, before)
    assert seg.SOPInstanceUID == records[ct_uid]["stored"][0]
    mask, affine, _ = _local_mask(ct_only_model, study_pacs["ct_folder"], str(tmp_path / "local"))
    _assert_stored_seg_is_the_local_mask(seg, study, ct_uid, mask, affine)
    np.testing.assert_array_equal(np.asarray(nib.load(records[ct_uid]["outputs"]["nifti"]).dataobj), mask)
    # No patient identity in what medtfx printed or reported.
    text = "\n".join(capsys.readouterr()) + (tmp_path / "out" / predict.REPORT_FILE).read_text()
    assert "Secretname" not in text and "PID-" not in text


# ---------------------------------------------------------------------------------------------
# Round trip: plan and train from the PACS, segment a study of it with the pushed model
# ---------------------------------------------------------------------------------------------

# The smallest run that still plans, trains, evaluates and pushes (as tests/test_pipeline_e2e.py):
# one timed calibration step in one precision, 60 training steps (a 1-minute budget leaves the
# planner no training time after export, so the steps are set), no test-time mirroring.
TINY_RUN = [
    f"--set={setting}"
    for setting in (
        "planning.budget_minutes=1",
        "planning.calibration_steps=1",
        "mixed_precision=false",
        "train_steps=60",
        "epochs=1",
        "eval_steps=1",
        "val_dice_cases=1",
        "tta_mirror_axes=[]",
    )
]


@pytest.fixture
def default_salt(monkeypatch):
    """The configured default patient salt: the split by patient hash below is then fixed."""
    monkeypatch.delenv("MEDTFX_PATIENT_SALT", raising=False)


def test_plan_from_the_pacs(pacs, credentials, default_salt, tmp_path, capsys):
    from pipeline import cli
    from pipeline.runners import local

    url = f"dicomweb+{pacs['server'].dicomweb}?StudyDate={CHECK_DATES}"
    argv = ["plan", "--data", url, "--output", str(tmp_path / "plan.json"), "--workdir", str(tmp_path / "work")]
    assert cli.main(argv + TINY_RUN) == 0
    with open(tmp_path / "plan.json") as fh:
        plan = json.load(fh)
    assert plan["inputs"]["modalities"] == ["CT"] and plan["settings"]["training"]["num_classes"] == 3, plan
    # The examples are fingerprinted by the archive's listing (TFX's own would find no file at
    # a URL and give every listing the same, empty fingerprint: caching would then reuse them).
    examples = local.latest_artifacts(str(tmp_path / "work" / "metadata.sqlite"))["Examples"]
    fingerprint = examples.custom_properties["input_fingerprint"].string_value
    assert fingerprint == pacs_source.listing_fingerprint(url) and fingerprint.startswith("pacs:series:8,"), fingerprint
    assert "Secretname" not in "\n".join(capsys.readouterr())


@pytest.mark.slow
def test_a_model_trained_from_the_pacs_stores_a_seg_equal_to_the_local_mask(
    pacs, credentials, default_salt, tmp_path, capsys
):
    """`medtfx run --data dicomweb+...` on studies A..F (six cases, three series quarantined),
    then `medtfx predict --dicomweb --store` with the pushed model on study T (JPEG 2000): the SEG
    found by QIDO-RS in T references T's CT and equals the in-process mask voxel for voxel."""
    from pipeline import cli

    url, workdir = pacs["server"].dicomweb, tmp_path / "work"
    data = f"dicomweb+{url}?StudyDate={TRAINING_DATES}"
    assert cli.main(["run", "--data", data, "--workdir", str(workdir)] + TINY_RUN) == 0
    with open(workdir / "run_summary.json") as fh:
        summary = json.load(fh)
    assert (summary["cases_ok"], summary["cases_quarantined"]) == (6, 3), summary
    assert summary["blessed"] is True and summary["pushed_to"], summary
    client = dicomweb.DicomWebClient(url)
    study, (series_uid, _) = pacs["study"]["T"], pacs["series"]["target"]
    before = _seg_series(client, study)
    argv = ["predict", "--model", summary["pushed_to"], "--dicomweb", url, "--study", study]
    assert cli.main(argv + ["--output", str(tmp_path / "out"), "--store"]) == 0
    with open(tmp_path / "out" / predict.REPORT_FILE) as fh:
        (record,) = json.load(fh)["results"]
    assert record["status"] == "ok" and record["series_uid"] == series_uid, record
    seg = _stored_seg(client, study, before)
    assert [seg.SOPInstanceUID] == record["stored"]
    mask, affine, _ = _local_mask(summary["pushed_to"], pacs["folders"]["target"], str(tmp_path / "local"))
    _assert_stored_seg_is_the_local_mask(seg, study, series_uid, mask, affine)
    text = "\n".join(capsys.readouterr()) + (workdir / "run_summary.json").read_text()
    assert "Secretname" not in text and "PID-" not in text


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--study", "1.2.3", "in.nii.gz"], "takes --study UID and no INPUT"),
        ([], "takes --study UID and no INPUT"),
    ],
)
def test_predict_dicomweb_argument_errors(argv_tail, message, ct_only_model, tmp_path, capsys):
    from pipeline import cli

    argv = [
        "predict",
        "--model",
        ct_only_model,
        "--output",
        str(tmp_path),
        "--dicomweb",
        "http://127.0.0.1:1/dicom-web",
    ] + argv_tail
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_credentials_in_the_data_url_are_refused_before_anything_runs(tmp_path, capsys):
    from pipeline import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--data", "dicomweb+http://alice:secret@pacs/dicom-web", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2 and "carries credentials" in capsys.readouterr().err
