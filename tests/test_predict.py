"""`medtfx predict` against the exported test model, in process and over gRPC (serving double)."""

import itertools
import os

import grpc
import numpy as np
import pytest

from modules.io import dicom
from modules.io.nifti_reader import write_nifti
from modules.io.volume import to_canonical
from pipeline.client import predict
from tests.seg_checks import assert_seg_matches_mask_in_world
from tests.serving_double import exported_test_model, serving_double_for


@pytest.fixture(scope="module")
def model():
    return exported_test_model()


@pytest.fixture(scope="module")
def served(model):
    """A loopback PredictionService (test double) serving the pushed model; each test sets the
    failure behaviour it needs."""
    server, target, servicer = serving_double_for(model)
    yield target, servicer
    server.stop(None)


@pytest.fixture(scope="module")
def in_process(model):
    return predict.InProcessModel(model["model_dir"])


def _grpc_model(target, model, **kwargs):
    return predict.GrpcModel(target, model["model_name"], timeout_s=60, **kwargs)


@pytest.fixture(scope="module")
def nifti_inputs(tmp_path_factory):
    """Phantom images in three NIfTI orientations: as generated (oblique, permuted axes), an
    extra flip+permutation of that, and the canonical copy of the first."""
    from pipeline.tools.phantoms import make_phantom

    out = tmp_path_factory.mktemp("nifti_inputs")
    p = make_phantom(2, seed=5)  # sagittal-like acquisition: permuted and flipped axes
    paths = {"native": str(out / "case_native.nii.gz")}
    write_nifti(paths["native"], p.image, p.affine)
    # Flip axis 0 and move it last: same world content, another voxel order.
    flipped = np.flip(p.image, axis=0)
    affine = p.affine.copy()
    affine[:3, 3] += affine[:3, 0] * (p.image.shape[0] - 1)
    affine[:3, 0] *= -1
    paths["permuted"] = str(out / "case_permuted.nii")
    write_nifti(paths["permuted"], np.transpose(flipped, (1, 2, 0)), affine[:, [1, 2, 0, 3]])
    canonical, canonical_affine = to_canonical(p.image, p.affine)
    paths["canonical"] = str(out / "case_canonical.nii.gz")
    write_nifti(paths["canonical"], canonical, canonical_affine)
    return paths, p.modality


def test_from_canonical_undoes_every_axis_permutation_and_flip():
    """All 48 orientations (slightly oblique): voxels come back exactly."""
    from pipeline.tools.phantoms import rotation

    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    tilt = rotation(np.random.default_rng(0), 8.0)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            direction = tilt @ (np.eye(3)[:, perm] * np.array(signs)[np.newaxis, :])
            affine[:3, :3] = direction * [0.7, 1.0, 2.5]
            affine[:3, 3] = [10.0, -5.0, 3.0]
            canonical, _ = to_canonical(array, affine)
            np.testing.assert_array_equal(predict.from_canonical(canonical, affine), array)


def test_grpc_equals_in_process_and_masks_keep_each_inputs_geometry(model, served, in_process, nifti_inputs, tmp_path):
    import nibabel as nib

    paths, modality = nifti_inputs
    target, servicer = served
    servicer.fail_first = 0
    inputs = [paths["native"], paths["permuted"], paths["canonical"]]
    local = predict.predict_inputs(in_process, inputs, str(tmp_path / "local"), modality=modality, log=lambda m: None)
    client = _grpc_model(target, model)
    remote = predict.predict_inputs(client, inputs, str(tmp_path / "grpc"), modality=modality, log=lambda m: None)
    assert client.num_classes() == in_process.num_classes() == model["num_classes"]  # GetModelMetadata
    client.close()
    assert [r["status"] for r in local + remote] == ["ok"] * 6, local + remote
    assert local[0]["wire_dtype"] == "int16"  # integral volumes travel as int16
    masks = {}
    for name, path in zip(("native", "permuted", "canonical"), inputs):
        source = nib.load(path)
        a = nib.load(os.path.join(tmp_path / "local", predict.input_name(path) + ".nii.gz"))
        b = nib.load(os.path.join(tmp_path / "grpc", predict.input_name(path) + ".nii.gz"))
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))  # gRPC == in process
        assert a.shape == source.shape[:3]
        np.testing.assert_allclose(a.affine, source.affine, atol=1e-5)
        masks[name] = to_canonical(np.asarray(a.dataobj), a.affine)[0]
    # The model saw the same canonical volume three times: reoriented back, masks agree voxel
    # for voxel, so each output overlays its own input.
    assert masks["native"].any()
    np.testing.assert_array_equal(masks["native"], masks["canonical"])
    np.testing.assert_array_equal(masks["permuted"], masks["canonical"])


def test_dicom_series_gives_nifti_and_a_readable_dicom_seg(model, in_process, phantom_dir, tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom

    series = os.path.join(phantom_dir, "dicom", sorted(os.listdir(os.path.join(phantom_dir, "dicom")))[0])
    (record,) = predict.predict_inputs(in_process, [series], str(tmp_path), log=lambda m: None)
    assert record["status"] == "ok", record
    mask_img = nib.load(record["outputs"]["nifti"])
    first = pydicom.dcmread(os.path.join(series, "slice_0000.dcm"), stop_before_pixels=True)
    n_slices = len([f for f in os.listdir(series) if f.endswith(".dcm")])
    assert mask_img.shape == (first.Columns, first.Rows, n_slices)  # the series' own grid
    mask = np.asarray(mask_img.dataobj)
    seg = hd.seg.segread(record["outputs"]["dicom_seg"])
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == model["num_classes"] - 1
    assert seg.PatientID == first.PatientID  # a SEG belongs to the patient's study, by design
    # One frame per (slice, label) pair where the label is present (empty frames omitted).
    expected_frames = sum(
        int(np.any(mask[:, :, k] == label)) for k in range(n_slices) for label in range(1, model["num_classes"])
    )
    assert int(seg.NumberOfFrames) == expected_frames == record["seg_frames"]
    # Frames map back onto the source slices: the SEG read by source instance is the mask.
    _, frames = predict.dicom_native_grid(
        dicom.read_stack([os.path.join(series, f) for f in os.listdir(series) if f.endswith(".dcm")])[1]
    )
    uids = [pydicom.dcmread(f.path, stop_before_pixels=True).SOPInstanceUID for f in frames]
    rebuilt = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(rebuilt, np.transpose(mask, (2, 1, 0)))
    assert_seg_matches_mask_in_world(seg, mask, mask_img.affine)


def _enhanced_copy(series_dir, out_dir, seed=0):
    """The classic phantom series as one Legacy Converted Enhanced multi-frame file (highdicom),
    its frames in shuffled order so frame number and slice position disagree."""
    import highdicom as hd
    import pydicom

    datasets = [
        predict._with_type2_defaults(pydicom.dcmread(os.path.join(series_dir, f)))
        for f in sorted(os.listdir(series_dir))
        if f.endswith(".dcm")
    ]
    np.random.default_rng(seed).shuffle(datasets)
    convert = {"CT": hd.legacy.LegacyConvertedEnhancedCTImage, "MR": hd.legacy.LegacyConvertedEnhancedMRImage}[
        datasets[0].Modality
    ]
    image = convert(
        legacy_datasets=datasets,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    os.makedirs(out_dir)
    image.save_as(os.path.join(out_dir, "enhanced.dcm"))
    return os.path.join(out_dir, "enhanced.dcm")


def test_enhanced_multiframe_input_gets_the_same_mask_and_a_frame_referencing_seg(
    model, in_process, phantom_dir, tmp_path
):
    import highdicom as hd
    import nibabel as nib
    import pydicom

    series = os.path.join(phantom_dir, "dicom", sorted(os.listdir(os.path.join(phantom_dir, "dicom")))[0])
    enhanced = _enhanced_copy(series, str(tmp_path / "enhanced_in" / "case"))
    classic_record, enhanced_record = predict.predict_inputs(
        in_process, [series, os.path.dirname(enhanced)], str(tmp_path / "out"), log=lambda m: None
    )
    assert enhanced_record["status"] == "ok" and not enhanced_record.get("warnings"), enhanced_record
    classic_img = nib.load(classic_record["outputs"]["nifti"])
    enhanced_img = nib.load(enhanced_record["outputs"]["nifti"])
    # Same pixels, same geometry, another file layout: the same mask on the same grid.
    np.testing.assert_allclose(enhanced_img.affine, classic_img.affine, atol=1e-4)
    mask = np.asarray(enhanced_img.dataobj)
    np.testing.assert_array_equal(mask, np.asarray(classic_img.dataobj))
    assert mask.any()
    seg = hd.seg.segread(enhanced_record["outputs"]["dicom_seg"])
    source = pydicom.dcmread(enhanced, stop_before_pixels=True)
    _, frames = predict.dicom_native_grid(dicom.read_stack([enhanced])[1])
    assert sorted(f.index for f in frames) == list(range(int(source.NumberOfFrames)))
    assert [f.index for f in frames] != sorted(f.index for f in frames)  # the shuffle took effect
    # Read by source frame number (1-based), in slice order: the mask, slice by slice.
    rebuilt = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID,
        source_frame_numbers=[f.index + 1 for f in frames],
        combine_segments=True,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(rebuilt, np.transpose(mask, (2, 1, 0)))
    assert_seg_matches_mask_in_world(seg, mask, enhanced_img.affine)


def test_a_seg_the_sources_cannot_support_is_a_warning_and_the_mask_is_still_written(
    model, in_process, phantom_dir, tmp_path, monkeypatch
):
    series = os.path.join(phantom_dir, "dicom", sorted(os.listdir(os.path.join(phantom_dir, "dicom")))[0])

    def refuse(*args, **kwargs):
        raise ValueError("Source images must have a shared orientation.")

    monkeypatch.setattr(predict, "write_dicom_seg", refuse)
    messages = []
    (record,) = predict.predict_inputs(in_process, [series], str(tmp_path), log=messages.append)
    assert record["status"] == "ok" and os.path.isfile(record["outputs"]["nifti"])
    assert "dicom_seg" not in record["outputs"]
    assert record["warnings"] == [
        f"{series}: DICOM SEG not written: ValueError: Source images must have a shared orientation."
    ]
    assert any(m.startswith("WARNING") and series in m for m in messages)


def test_bad_inputs_fail_alone_with_reasons_naming_the_file(served, model, in_process, nifti_inputs, tmp_path):
    paths, modality = nifti_inputs
    target, servicer = served
    servicer.fail_first = 0
    bad = tmp_path / "bad"
    bad.mkdir()
    write_nifti(str(bad / "flat.nii.gz"), np.zeros((8, 8), np.int16), np.eye(4))
    write_nifti(str(bad / "fourd.nii.gz"), np.zeros((8, 8, 8, 2), np.int16), np.eye(4))
    write_nifti(str(bad / "nan.nii.gz"), np.full((8, 8, 8), np.nan, np.float32), np.eye(4))
    write_nifti(str(bad / "thin.nii.gz"), np.zeros((8, 8, 1), np.int16), np.eye(4))
    (bad / "notes.txt").write_text("not an image")
    (bad / "empty_dicom_dir").mkdir()
    inputs = [
        str(bad / "flat.nii.gz"),
        paths["native"],
        str(bad / "fourd.nii.gz"),
        str(bad / "nan.nii.gz"),
        str(bad / "thin.nii.gz"),
        str(bad / "notes.txt"),
        str(bad / "empty_dicom_dir"),
        str(bad / "missing.nii.gz"),
    ]
    client = _grpc_model(target, model)
    records = predict.predict_inputs(
        client, inputs, str(tmp_path / "out"), modality=modality, max_voxels=10**6, log=lambda m: None
    )
    client.close()
    status = {os.path.basename(r["input"]): r for r in records}
    assert status["case_native.nii.gz"]["status"] == "ok"
    expected = {
        "flat.nii.gz": "3D",
        "fourd.nii.gz": "3D",
        "nan.nii.gz": "NaN",
        "thin.nii.gz": "at least 2",
        "notes.txt": "not a NIfTI",
        "empty_dicom_dir": "holds no DICOM image",
        "missing.nii.gz": "no such file",
    }
    for name, phrase in expected.items():
        r = status[name]
        assert r["status"] == "failed" and name in r["reason"] and phrase in r["reason"], r
    # Too large for the configured limit: rejected before anything is sent.
    (record,) = predict.predict_inputs(
        in_process, [paths["native"]], str(tmp_path / "out2"), max_voxels=1000, log=lambda m: None
    )
    assert record["status"] == "failed" and "exceed the limit of 1000" in record["reason"]
    assert "case_native" in record["reason"]


def test_cli_exit_code_and_report(served, model, nifti_inputs, tmp_path):
    import json

    from pipeline import cli

    paths, modality = nifti_inputs
    target, servicer = served
    servicer.fail_first = 0
    out = tmp_path / "cli"
    argv = [
        "predict",
        "--server",
        target,
        "--model-name",
        model["model_name"],
        "--modality",
        modality,
        "--output",
        str(out),
        paths["native"],
    ]
    assert cli.main(argv) == 0
    assert cli.main(argv[:-1] + [paths["native"], str(tmp_path / "nope.nii.gz")]) == 1
    with open(out / predict.REPORT_FILE) as fh:
        results = json.load(fh)["results"]
    assert [r["status"] for r in results] == ["ok", "failed"]


def test_grpc_client_retries_transient_failures_with_backoff(served, model, nifti_inputs, tmp_path):
    paths, modality = nifti_inputs
    target, servicer = served
    sleeps = []
    servicer.fail_first, servicer.fail_code = 2, grpc.StatusCode.UNAVAILABLE
    client = _grpc_model(target, model, attempts=4, initial_backoff=0.25, sleep=sleeps.append)
    (record,) = predict.predict_inputs(
        client, [paths["canonical"]], str(tmp_path / "a"), modality=modality, num_classes=3, log=lambda m: None
    )
    assert record["status"] == "ok" and client.retries == 2 and sleeps == [0.25, 0.5]
    # Persistent overload: bounded attempts, then a per-file failure naming the status.
    sleeps.clear()
    servicer.fail_first, servicer.fail_code = 10, grpc.StatusCode.RESOURCE_EXHAUSTED
    (record,) = predict.predict_inputs(
        client, [paths["canonical"]], str(tmp_path / "b"), modality=modality, num_classes=3, log=lambda m: None
    )
    assert record["status"] == "failed" and "RESOURCE_EXHAUSTED" in record["reason"] and len(sleeps) == 3
    # Not transient: no retry.
    sleeps.clear()
    servicer.fail_first, servicer.fail_code = 1, grpc.StatusCode.INVALID_ARGUMENT
    (record,) = predict.predict_inputs(
        client, [paths["canonical"]], str(tmp_path / "c"), modality=modality, num_classes=3, log=lambda m: None
    )
    assert record["status"] == "failed" and "INVALID_ARGUMENT" in record["reason"] and sleeps == []
    servicer.fail_first = 0
    client.close()
    # Unknown model name: NOT_FOUND from the server, reported per file.
    client = _grpc_model(target, {"model_name": "no-such-model"}, sleep=sleeps.append)
    (record,) = predict.predict_inputs(
        client, [paths["canonical"]], str(tmp_path / "d"), num_classes=3, log=lambda m: None
    )
    client.close()
    assert record["status"] == "failed" and "NOT_FOUND" in record["reason"]


def test_no_patient_name_reaches_warnings_or_the_log(in_process, phantom_dir, tmp_path, capsys):
    """highdicom warns about single-component person names by quoting them; predict must not
    let a patient's name out that way (nor any other)."""
    import warnings

    import pydicom

    source = os.path.join(phantom_dir, "dicom", sorted(os.listdir(os.path.join(phantom_dir, "dicom")))[0])
    series = tmp_path / "series"
    series.mkdir()
    for name in os.listdir(source):
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(os.path.join(source, name))
            ds.PatientName = "SMITHERSON"  # one component: the form highdicom complains about
            ds.save_as(str(series / name))
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (record,) = predict.predict_inputs(in_process, [str(series)], str(tmp_path / "out"), log=messages.append)
    assert record["status"] == "ok" and "dicom_seg" in record["outputs"], record
    out, err = capsys.readouterr()
    text = "\n".join([str(w.message) for w in caught] + messages + [out, err])
    assert "SMITHERSON" not in text
    with open(tmp_path / "out" / predict.REPORT_FILE) as fh:
        assert "SMITHERSON" not in fh.read()
