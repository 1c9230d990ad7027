"""Defective DICOM made from phantoms (known truth) and pydicom's test files: every defect is
detected and named, nothing is converted silently wrong, no patient identifier leaks."""

import gzip
import json
import logging
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from components.image_example_gen import cases
from modules.io import dicom
from modules.io.volume import CaseError, to_canonical
from pipeline import cli
from pipeline.tools.phantoms import make_phantom


def _copy_series(phantom_dir, name, dest):
    src = os.path.join(phantom_dir, "dicom", name)
    shutil.copytree(src, dest)
    return sorted(os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".dcm"))


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _read_only_stack(folder):
    series, rejected = dicom.scan_tree(str(folder))
    assert len(series) == 1, (list(series), rejected)
    key, paths = next(iter(series.items()))
    return dicom.read_series(paths, key)


def _truth(index):
    p = make_phantom(index, seed=7)
    return to_canonical(p.image, p.affine)


@pytest.mark.parametrize("with_tag", [True, False])
def test_gantry_tilt_is_refused(phantom_dir, tmp_path, with_tag):
    files = _copy_series(phantom_dir, "phantom_000", tmp_path / "tilt")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        col_dir = np.asarray(ds.ImageOrientationPatient[3:], float)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(ds.ImagePositionPatient, float) + 0.4 * k * col_dir]
        if with_tag:
            ds.GantryDetectorTilt = 12.0
        ds.save_as(path)
    step = abs(float(np.diff([pydicom.dcmread(f).ImagePositionPatient[2] for f in files[:2]])[0]))
    normal = dicom.slice_normal(pydicom.dcmread(files[0]).ImageOrientationPatient)
    spacing = abs(np.diff([np.asarray(pydicom.dcmread(f).ImagePositionPatient, float) @ normal for f in files[:2]])[0])
    with pytest.raises(CaseError, match=r"gantry tilt: slices are sheared by [0-9.]+ degrees") as info:
        _read_only_stack(tmp_path / "tilt")
    angle = float(str(info.value).split("sheared by ")[1].split(" degrees")[0])
    assert angle == pytest.approx(np.degrees(np.arctan(0.4 / spacing)), abs=0.05), step


def test_missing_and_irregular_slices_are_named(phantom_dir, tmp_path):
    files = _copy_series(phantom_dir, "phantom_001", tmp_path / "gap")
    os.remove(files[7])
    os.remove(files[8])
    with pytest.raises(CaseError, match=r"non-uniform slice spacing .*; 2 missing slice\(s\)\?"):
        _read_only_stack(tmp_path / "gap")
    files = _copy_series(phantom_dir, "phantom_001", tmp_path / "irregular")
    ds = pydicom.dcmread(files[5])
    normal = dicom.slice_normal(ds.ImageOrientationPatient)
    _edit(
        files[5], ImagePositionPatient=[f"{v:.4f}" for v in np.asarray(ds.ImagePositionPatient, float) + 0.3 * normal]
    )
    with pytest.raises(CaseError, match="non-uniform slice spacing") as info:
        _read_only_stack(tmp_path / "irregular")
    assert "missing slice" not in str(info.value)


def test_mixed_orientations_in_one_series_are_split_not_mixed(phantom_dir, tmp_path):
    """Two orientations under one SeriesInstanceUID become two stacks, each read correctly; the
    folder cannot pair a single label with them, and says so."""
    folder = tmp_path / "mixed"
    axial = _copy_series(phantom_dir, "phantom_000", folder)
    uid = pydicom.dcmread(axial[0]).SeriesInstanceUID
    for path in sorted(os.listdir(os.path.join(phantom_dir, "dicom", "phantom_001"))):
        if path.endswith(".dcm"):
            target = str(folder / ("cor_" + path))
            shutil.copy(os.path.join(phantom_dir, "dicom", "phantom_001", path), target)
            _edit(target, SeriesInstanceUID=uid)
    series, rejected = dicom.scan_tree(str(folder))
    assert rejected == [] and len(series) == 2
    names = sorted(dicom.describe(k) for k in series)
    assert names[0].startswith("axial") or names[1].startswith("axial")
    for key, paths in series.items():
        volume = dicom.read_series(paths, key)
        index = 0 if os.path.basename(paths[0]).startswith("slice") else 1
        image, affine = _truth(index)
        np.testing.assert_array_equal(volume.array, image)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-3)
    with pytest.raises(CaseError, match="hold 2 image stacks"):
        dicom.read_series(sorted(p for ps in series.values() for p in ps))
    specs, _ = cases.find_cases(str(tmp_path))
    dicom_specs = [s for s in specs if s.kind == "dicom"]
    assert len(dicom_specs) == 2 and all("2 image stacks" in s.problem for s in dicom_specs)


def _add_second_volume(files, folder, **changes):
    """Copies of every slice as volume 2 (same positions), e.g. an fMRI time point or an echo."""
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[path, "v2"])
        ds.InstanceNumber = len(files) + k + 1
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(os.path.join(folder, f"v2_{k:04d}.dcm"))


def test_4d_series_is_read_4d_and_quarantined_for_training(phantom_dir, tmp_path):
    folder = tmp_path / "fmri"
    files = _copy_series(phantom_dir, "phantom_001", folder)
    _add_second_volume(files, folder, AcquisitionNumber=2, TemporalPositionIdentifier=2)
    volume = _read_only_stack(folder)
    image, affine = _truth(1)
    assert volume.array.shape == image.shape + (2,) and volume.meta["volumes"] == 2
    np.testing.assert_array_equal(volume.array[..., 0], image)
    np.testing.assert_array_equal(volume.array[..., 1], image)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)
    specs, _ = cases.find_cases(str(tmp_path))
    (spec,) = [s for s in specs if s.kind == "dicom"]
    example, record = cases.process_case(spec, "salt", None)
    assert example is None and "4D series with 2 volumes" in record["reason"]
    # `medtfx convert` writes the 4D NIfTI, like dcm2niix.
    out = tmp_path / "fmri.nii.gz"
    assert cli.main(["convert", str(folder), str(out)]) == 0
    import nibabel as nib

    assert nib.load(str(out)).shape == image.shape + (2,)
    # A volume missing one slice is an incomplete 4D series, not a silent 4D with a hole.
    os.remove(os.path.join(folder, "v2_0003.dcm"))
    with pytest.raises(CaseError, match="incomplete multi-volume series"):
        _read_only_stack(folder)


def test_echoes_of_one_series_are_separate_stacks(phantom_dir, tmp_path):
    folder = tmp_path / "me"
    files = _copy_series(phantom_dir, "phantom_001", folder)
    for path in files:
        _edit(path, EchoNumbers=1)
    _add_second_volume(files, folder, EchoNumbers=2)
    series, _ = dicom.scan_tree(str(folder))
    assert sorted(k.echo for k in series) == ["1", "2"]
    image, _ = _truth(1)
    for key, paths in series.items():
        np.testing.assert_array_equal(dicom.read_series(paths, key).array, image)


def test_non_image_objects_and_non_dicom_files_are_rejected_with_reasons(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset

    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "report.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "contours.dcm")  # no DICM preamble
    shutil.copy(
        os.path.join(os.path.dirname(get_testdata_file("MR_small.dcm")), "dicomdirtests", "DICOMDIR"),
        tmp_path / "DICOMDIR",
    )
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), tmp_path / "ecg.dcm")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # grayscale presentation state
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    gsps = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    gsps.SOPClassUID, gsps.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    gsps.Modality = "PR"
    gsps.save_as(tmp_path / "state.dcm", enforce_file_format=True)
    (tmp_path / "notes.bin").write_bytes(os.urandom(300))
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200)
    series, rejected = dicom.scan_tree(str(tmp_path))
    assert series == {}
    reasons = {os.path.basename(p): r for p, r in rejected}
    assert "Comprehensive SR" in reasons["report.dcm"] and "not an image volume" in reasons["report.dcm"]
    assert "RT Structure Set" in reasons["contours.dcm"]
    assert "Presentation State" in reasons["state.dcm"]
    assert "ECG" in reasons["ecg.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "not a DICOM file" in reasons["notes.bin"] and "not a DICOM file" in reasons["scan.jpg"]


def test_colour_and_geometry_less_images_are_named(tmp_path):
    folder = tmp_path / "sc"
    folder.mkdir()
    shutil.copy(get_testdata_file("SC_rgb_rle.dcm"), folder / "a.dcm")
    with pytest.raises(CaseError, match="colour image"):
        _read_only_stack(folder)
    folder = tmp_path / "nm"
    folder.mkdir()
    shutil.copy(get_testdata_file("JPGExtended.dcm"), folder / "a.dcm")
    with pytest.raises(CaseError, match="has no patient geometry"):
        _read_only_stack(folder)


def test_gzipped_series_reads_like_the_plain_one(phantom_dir, tmp_path):
    files = _copy_series(phantom_dir, "phantom_002", tmp_path / "gz")
    for path in files:
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            dst.write(src.read())
        os.remove(path)
    volume = _read_only_stack(tmp_path / "gz")
    image, affine = _truth(2)
    np.testing.assert_array_equal(volume.array, image)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)


def test_enhanced_multiframe_from_phantom_matches_truth(phantom_dir, tmp_path):
    """highdicom converts the phantom's single-frame MR series into one Legacy Converted Enhanced
    MR file (per-frame PlanePosition, shared orientation/spacing): same voxels and geometry."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    src = os.path.join(phantom_dir, "dicom", "phantom_003")
    datasets = [pydicom.dcmread(os.path.join(src, f)) for f in sorted(os.listdir(src)) if f.endswith(".dcm")]
    for ds in datasets:  # type-2 attributes the phantom writer leaves out and highdicom requires
        for keyword in (
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "ContentDate",
            "ContentTime",
            "SeriesDate",
            "SeriesTime",
        ):
            if keyword not in ds:
                setattr(ds, keyword, "")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
        ds.EchoTime, ds.EchoTrainLength, ds.RepetitionTime = 10.0, 1, 500.0
    enhanced = LegacyConvertedEnhancedMRImage(datasets, pydicom.uid.generate_uid(), 5, pydicom.uid.generate_uid(), 1)
    folder = tmp_path / "enh"
    folder.mkdir()
    enhanced.save_as(folder / "enhanced.dcm")
    volume = _read_only_stack(folder)
    image, affine = _truth(3)
    np.testing.assert_array_equal(volume.array, image)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)


def test_reasons_and_logs_never_show_patient_identifiers(phantom_dir, tmp_path, caplog):
    """A defective series stored in a folder named after the patient: the quarantine reason (and
    so the executor's log line and the inventory report's reasons) is scrubbed."""
    truth = make_phantom(0, seed=7)
    root = tmp_path / "ds"
    folder = root / truth.patient_id
    files = _copy_series(phantom_dir, "phantom_000", folder)
    os.remove(files[3])
    specs, _ = cases.find_cases(str(root))
    (spec,) = [s for s in specs if s.kind == "dicom"]
    _, record = cases.process_case(spec, "salt", None)
    assert record["status"] == "quarantined" and "missing slice" in record["reason"]
    assert truth.patient_id not in record["reason"] and "<redacted>" in record["reason"]
    assert record["case_id"].startswith("series-") and truth.patient_id not in record["case_id"]
    # The inventory's input paths too: the folder name is the patient ID.
    assert len(record["inputs"]) == len(spec.inputs) > 1
    assert all(truth.patient_id not in p and "<redacted>" in p for p in record["inputs"])
    # Ingested cases too: the phantom folders carry the second component of PatientName.
    dicom_spec = [s for s in cases.find_cases(os.path.join(phantom_dir, "dicom"))[0] if s.kind == "dicom"][0]
    _, ok_record = cases.process_case(dicom_spec, "salt", None)
    assert ok_record["status"] == "ok" and ok_record["inputs"]
    assert all("/<redacted>/" in p and "phantom_0" not in p for p in ok_record["inputs"])
    from components.image_example_gen import executor

    with caplog.at_level(logging.WARNING):
        list(executor._ProcessCase("salt", None).process(spec))
    assert "quarantined" in caplog.text and truth.patient_id not in caplog.text
    assert "Phantom^" not in caplog.text and "19700101" not in caplog.text


def test_inventory_lists_every_file_of_a_messy_tree(phantom_dir, tmp_path):
    root = tmp_path / "tree"
    _copy_series(phantom_dir, "phantom_000", root / "good")
    files = _copy_series(phantom_dir, "phantom_001", root / "fmri")
    _add_second_volume(files, str(root / "fmri"), AcquisitionNumber=2)
    shutil.copy(get_testdata_file("test-SR.dcm"), root / "report.dcm")
    (root / "README.txt").write_text("acquisition notes")
    (root / "good" / "sidecar.json").write_text("{}")
    report = tmp_path / "inv.json"
    assert cli.main(["inventory", str(root), "--report", str(report)]) == 0  # one usable case
    records = json.loads(report.read_text())["cases"]
    listed = {p for r in records for p in r["inputs"]}
    assert listed == {os.path.join(d, f) for d, _, names in os.walk(root) for f in names}
    by_status = {r["status"] for r in records}
    assert by_status == {"ok", "quarantined"}
    assert all(r["reason"] for r in records if r["status"] == "quarantined")
    assert sum(r["status"] == "ok" for r in records) == 1
