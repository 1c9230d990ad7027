"""Readers against phantoms with known geometry, defects, and the real hippocampus mess."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from components.image_example_gen import cases
from modules import features as example_schema
from modules.io import dicom
from modules.io.nifti_reader import read_nifti
from modules.io.volume import CaseError, to_canonical
from pipeline.tools.phantoms import make_phantom
from tests.conftest import shared_path


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_nifti_and_dicom_readers_agree_with_the_phantom(phantom_dir, index):
    truth = make_phantom(index, seed=7)
    image, affine = to_canonical(truth.image, truth.affine)
    nifti = read_nifti(os.path.join(phantom_dir, "decathlon", "imagesTr", f"{truth.name}.nii.gz"))
    series, rejected = dicom.scan_tree(os.path.join(phantom_dir, "dicom", truth.name))
    assert rejected == [] and len(series) == 1
    from_dicom = dicom.read_series(next(iter(series.values())))
    for volume in (nifti, from_dicom):
        np.testing.assert_array_equal(volume.array, image)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-3)
    assert from_dicom.modality == truth.modality
    assert from_dicom.array.dtype == np.int16


def test_dicom_missing_slice_and_single_slice_are_refused(phantom_dir, tmp_path):
    src = os.path.join(phantom_dir, "dicom", "phantom_000")
    files = sorted(f for f in os.listdir(src) if f.endswith(".dcm"))
    gap = tmp_path / "gap"
    gap.mkdir()
    for f in files[:5] + files[6:]:
        shutil.copy(os.path.join(src, f), gap / f)
    series, _ = dicom.scan_tree(str(gap))
    with pytest.raises(CaseError, match="non-uniform slice spacing"):
        dicom.read_series(next(iter(series.values())))
    with pytest.raises(CaseError, match="single slice"):
        dicom.read_series([os.path.join(src, files[0])])


def test_non_dicom_files_are_rejected_with_a_reason(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"hello")
    series, rejected = dicom.scan_tree(str(tmp_path))
    assert series == {}
    assert rejected[0][0].endswith("notes.bin") and "not a DICOM file" in rejected[0][1]


def test_dicom_cases_pair_labels_and_hide_patient_identifiers(phantom_dir):
    specs, info = cases.find_cases(os.path.join(phantom_dir, "dicom"))
    assert info.layout == "dicom" and len(specs) == 4
    for spec in specs:
        example, record = cases.process_case(spec, "salt", None)
        assert record["status"] == "ok", record
        blob = example.SerializeToString()
        assert b"PHANTOM-7" not in blob and b"Phantom^" not in blob and b"19700101" not in blob
        decoded = example_schema.decode_case(example)
        assert decoded["label"] is not None and decoded["label"].max() == 2
        assert "PHANTOM" not in json.dumps(record)


def test_label_with_wrong_grid_is_quarantined(phantom_dir, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(os.path.join(phantom_dir, "decathlon"), root)
    import nibabel as nib

    path = root / "labelsTr" / "phantom_001.nii.gz"
    img = nib.load(str(path))
    moved = img.affine.copy()
    moved[:3, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), moved), str(path))
    specs, info = cases.find_cases(str(root))
    records = {r["case_id"]: r for r in (cases.process_case(s, "x", set(info.labels))[1] for s in specs)}
    assert records["phantom_001"]["status"] == "quarantined"
    assert "geometry" in records["phantom_001"]["reason"]
    assert records["phantom_000"]["status"] == "ok"


def test_inventory_reports_every_hippocampus_file_and_the_three_orphans(tmp_path):
    root = shared_path("hippocampus")
    report = tmp_path / "inventory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inventory", root, "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(report.read_text())["cases"]
    listed = {p for r in records for p in r["inputs"]}
    on_disk = {os.path.join(root, d, f) for d in ("imagesTr", "labelsTr") for f in os.listdir(os.path.join(root, d))}
    assert on_disk <= listed
    bad = {r["case_id"]: r["reason"] for r in records if r["status"] != "ok"}
    assert set(bad) == {"hippocampus_118", "hippocampus_010", "hippocampus_281"}
    assert "no label" in bad["hippocampus_118"]
    assert "without image" in bad["hippocampus_010"]
    assert sum(r["status"] == "ok" for r in records) == 200


# --- NIfTI: orientation from sform or qform, scaling, dtypes, label checks (issue 3) ---


def _write(path, data, affine, sform=1, qform=1, slope=None, inter=None):
    import nibabel as nib

    img = nib.Nifti1Image(data, None)
    img.set_sform(affine, code=sform)
    img.set_qform(affine, code=qform)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))


@pytest.mark.parametrize("which", ["sform", "qform"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_nifti_any_orientation_from_sform_or_qform_and_any_dtype(tmp_path, which, dtype):
    truth = make_phantom(2, seed=3)  # oblique sagittal-like grid
    path = tmp_path / f"img_{which}.nii.gz"
    data = np.clip(truth.image, 0, 255).astype(dtype)
    _write(path, data, truth.affine, sform=1 if which == "sform" else 0, qform=1)
    volume = read_nifti(str(path))
    image, affine = to_canonical(data, truth.affine)
    np.testing.assert_array_equal(volume.array, image)
    # qform stores a rotation + zooms (float32 quaternion): same geometry to ~1e-4 mm.
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)


def test_nifti_scaling_is_applied_and_missing_orientation_refused(tmp_path):
    truth = make_phantom(1, seed=3)
    _write(tmp_path / "scaled.nii", truth.image, truth.affine, slope=0.5, inter=-10.0)
    volume = read_nifti(str(tmp_path / "scaled.nii"))
    image, _ = to_canonical(truth.image, truth.affine)
    np.testing.assert_allclose(volume.array, image * 0.5 - 10.0)
    _write(tmp_path / "bare.nii", truth.image, truth.affine, sform=0, qform=0)
    with pytest.raises(CaseError, match="neither sform nor qform"):
        read_nifti(str(tmp_path / "bare.nii"))


def test_nifti_label_and_image_defects_are_quarantined_with_reasons(phantom_dir, tmp_path):
    import nibabel as nib

    root = tmp_path / "ds"
    shutil.copytree(os.path.join(phantom_dir, "decathlon"), root)
    imgs, labs = root / "imagesTr", root / "labelsTr"

    def rewrite(path, fn):
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(fn(np.asanyarray(img.dataobj)), img.affine), str(path))

    rewrite(labs / "phantom_000.nii.gz", lambda a: np.where(a == 2, 7, a).astype(np.uint8))  # 7 not declared
    rewrite(labs / "phantom_001.nii.gz", lambda a: a.astype(np.float32) + 0.5)  # non-integer
    rewrite(imgs / "phantom_002.nii.gz", lambda a: np.where(a > 100, np.nan, a.astype(np.float32)))
    rewrite(labs / "phantom_003.nii.gz", lambda a: a[:-1])  # wrong shape
    (root / "imagesTs").mkdir()
    shutil.copy(imgs / "phantom_003.nii.gz", root / "imagesTs" / "extra.nii.gz")
    specs, info = cases.find_cases(str(root))
    records = {r["case_id"]: r for r in (cases.process_case(s, "x", set(info.labels))[1] for s in specs)}
    assert "not in the declared label set" in records["phantom_000"]["reason"]
    assert "non-integer" in records["phantom_001"]["reason"]
    assert "NaN" in records["phantom_002"]["reason"]
    assert "label shape" in records["phantom_003"]["reason"]
    assert "imagesTs" in records["extra.nii.gz"]["reason"]
    listed = {p for r in records.values() for p in r["inputs"]}
    on_disk = {os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f != "dataset.json"}
    assert listed == on_disk
