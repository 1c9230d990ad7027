"""The DICOM reader against references: dcm2niix's own regression outputs (dcm_qa_nih, dcm_qa_enh),
dcm2niix run here on pydicom's and nibabel's bundled files, and pydicom's transfer-syntax zoo.

Comparisons are in world space: both sides are brought to canonical orientation with
volume.to_canonical (dcm2niix stores rows flipped), then voxels must be equal and affines within
1e-3 mm.
"""

import gzip
import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from modules.io import dicom
from modules.io.volume import CaseError, to_canonical
from pipeline import cli
from pipeline.tools import bench_dicom
from tests.conftest import shared_path

NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "nicom", "tests", "data")
PYDICOM_DATA = os.path.dirname(get_testdata_file("MR_small.dcm"))
AFFINE_TOL_MM = 1e-3


def _canonical_nifti(path, scaled=False):
    """(array, affine, slope, intercept) of a NIfTI in canonical orientation; stored values unless scaled."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if scaled else np.asanyarray(img.dataobj.get_unscaled())
    array, affine = to_canonical(data, img.affine)
    return array, affine, float(img.dataobj.slope), float(img.dataobj.inter)


def _assert_same(volume, path):
    array, affine, slope, inter = _canonical_nifti(path)
    assert (slope, inter) == (1.0, 0.0), "reference is scaled; compare stored values explicitly"
    assert volume.array.shape == array.shape
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_TOL_MM)


def _only_stack(folder):
    series, rejected = dicom.scan_tree(folder)
    assert len(series) == 1, (series.keys(), rejected)
    key, paths = next(iter(series.items()))
    return dicom.read_series(paths, key)


def _dcm2niix(folder, out_dir):
    """Runs dcm2niix as batch.sh does (-z n), without sidecar; returns the NIfTI files written."""
    os.makedirs(out_dir, exist_ok=True)
    proc = subprocess.run(
        [bench_dicom.dcm2niix_binary(), "-z", "n", "-b", "n", "-f", "%f_%s_%e", "-o", str(out_dir), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir) if f.endswith(".nii"))


# --------------------------------------------------------------- dcm2niix regression references

NIH_CASES = [
    ("20180918GE/mr_0004", "DCM2NIIX_regression_test_4.nii"),
    ("20180918GE/mr_0005", "DCM2NIIX_regression_test_5.nii"),
    ("20180918GE/mr_0006", "DCM2NIIX_regression_test_6.nii"),
    ("20180918GE/mr_0007", "DCM2NIIX_regression_test_7.nii"),
    ("20180918Si/mr_0003", "EPI_PE=AP_3.nii"),
    ("20180918Si/mr_0004", "EPI_PE=PA_4.nii"),
    ("20180918Si/mr_0005", "EPI_PE=RL_5.nii"),
    ("20180918Si/mr_0006", "EPI_PE=LR_6.nii"),
]


@pytest.mark.parametrize("series,ref", NIH_CASES)
def test_classic_and_mosaic_4d_series_match_dcm2niix_reference(series, ref):
    """GE fMRI (150 single-frame files = 15 slices x 10 volumes) and Siemens EPI mosaics
    (2 files = 2 volumes of 5 tiles): 4D, voxels identical, affine within 1e-3 mm."""
    root = shared_path("dicom", "dcm_qa_nih")
    volume = _only_stack(os.path.join(root, "In", series))
    assert volume.array.ndim == 4 and volume.meta["volumes"] == volume.array.shape[3]
    _assert_same(volume, os.path.join(root, "Ref", ref))


def test_enhanced_siemens_xa10_multivolume_matches_reference():
    """4 enhanced multi-frame files of 6 frames each: one 4D series of 4 volumes."""
    root = shared_path("dicom", "dcm_qa_enh")
    volume = _only_stack(os.path.join(root, "In", "Siemens", "XA10"))
    assert volume.array.shape == (64, 64, 6, 4)
    _assert_same(volume, os.path.join(root, "Ref", "Siemens_REST1_w_SMS_PF7-8_6.nii"))


def test_enhanced_philips_file_with_two_stacks_matches_reference():
    """One enhanced file holding a magnitude echo and a B0 field map (per-frame rescale).

    Stored values are identical to dcm2niix's. Scaling legitimately differs for the magnitude:
    dcm2niix applies Philips' private floating-point scale (2005,100E), we apply the standard
    Pixel Value Transformation (RescaleSlope/Intercept), which is what the DICOM standard defines
    as the modality value; both are linear in the stored value, so per-volume normalisation in
    preprocessing makes them equivalent. The field map (Hz) uses the same slope on both sides.
    """
    root = shared_path("dicom", "dcm_qa_enh")
    path = os.path.join(root, "In", "Philips", "IM_0027_fMAP.dcm")
    series, _ = dicom.scan_tree(os.path.dirname(path))
    assert len(series) == 2
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for key, paths in series.items():
        volume = dicom.read_series(paths, key)
        field_map = "FIELD_MAP" in key.image_type
        ref = os.path.join(root, "Ref", "Philips_WIP_B0_NS_801_" + ("e2_fieldmaphz.nii" if field_map else "e1.nii"))
        stored, affine, slope, inter = _canonical_nifti(ref)
        first = next(
            i
            for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence)
            if ("FIELD_MAP" in f.MRImageFrameTypeSequence[0].FrameType) == field_map
        )
        pvt = ds.PerFrameFunctionalGroupsSequence[first].PixelValueTransformationSequence[0]
        rs, ri = float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
        np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_TOL_MM)
        np.testing.assert_array_equal(np.round((volume.array.astype(np.float64) - ri) / rs), stored)
        if field_map:  # dcm2niix's JSON rounds the slope to 0.2442: compare within that
            np.testing.assert_allclose(volume.array, stored * slope + inter, rtol=0, atol=1e-5 * 4095 + 1e-3)


def test_convert_cli_writes_what_ingestion_reads(tmp_path, capsys):
    root = shared_path("dicom")
    out = tmp_path / "ge.nii.gz"
    assert cli.main(["convert", os.path.join(root, "dcm_qa_nih", "In", "20180918GE", "mr_0004"), str(out)]) == 0
    array, affine, _, _ = _canonical_nifti(str(out))
    ref, ref_affine, _, _ = _canonical_nifti(os.path.join(root, "dcm_qa_nih", "Ref", "DCM2NIIX_regression_test_4.nii"))
    np.testing.assert_array_equal(array, ref)
    np.testing.assert_allclose(affine, ref_affine, atol=AFFINE_TOL_MM)
    # Two stacks in one folder: refused with a listing, then chosen with --series.
    philips = os.path.join(root, "dcm_qa_enh", "In", "Philips")
    assert cli.main(["convert", philips, str(tmp_path / "p.nii")]) == 1
    err = capsys.readouterr().err
    assert "2 image stacks" in err and "--series" in err and "FIELD_MAP" in err
    assert cli.main(["convert", philips, str(tmp_path / "p.nii"), "--series", "2"]) == 0
    assert nib.load(str(tmp_path / "p.nii")).shape == (64, 64, 32)


def test_inventory_of_the_4d_tree_quarantines_every_series_and_lists_every_file(tmp_path, monkeypatch):
    """The ExampleGen ingests 3D: 4D series are quarantined with the volume count; README files
    are reported too; no usable case means exit status 1."""
    root = shared_path("dicom", "dcm_qa_nih", "In")
    report = tmp_path / "inv.json"
    monkeypatch.setenv("MEDTFX_PATIENT_SALT", "pepper")
    assert cli.main(["inventory", root, "--report", str(report), "--images-only"]) == 1
    records = json.loads(report.read_text())["cases"]
    listed = {p for r in records for p in r["inputs"]}
    on_disk = {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}
    assert on_disk == listed
    series = [r for r in records if r["case_id"].startswith("series-")]
    assert len(series) == 8 and all(r["status"] == "quarantined" for r in series)
    reasons = sorted(r["reason"] for r in series)
    assert sum("4D series with 10 volumes" in r for r in reasons) == 4
    assert sum("4D series with 2 volumes" in r for r in reasons) == 4
    assert all("README" in os.path.basename(r["inputs"][0]) or r in series for r in records)
    assert "Regression" not in report.read_text()  # PatientName of these files


# --------------------------------------------------------------- dcm2niix run here on bundled files


def test_gzipped_siemens_dwi_mosaics_match_dcm2niix(tmp_path):
    """nibabel's Siemens DWI mosaics (b0, b1000), read from .dcm.gz: one 4D series of 2 volumes.
    dcm2niix cannot read gzipped DICOM, so it gets decompressed copies."""
    dwi_gz, dwi_plain = tmp_path / "dwi_gz", tmp_path / "dwi"
    dwi_gz.mkdir()
    dwi_plain.mkdir()
    for name in ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"):
        shutil.copy(os.path.join(NIBABEL_DATA, name), dwi_gz / name)
        (dwi_plain / name[:-3]).write_bytes(gzip.decompress((dwi_gz / name).read_bytes()))
    volume = _only_stack(str(dwi_gz))
    (ref,) = _dcm2niix(dwi_plain, tmp_path / "out")
    assert volume.array.shape == (128, 128, 48, 2)
    _assert_same(volume, ref)


def test_mosaic_that_is_not_a_whole_grid_is_refused(tmp_path):
    """nibabel's 0.dcm: 48 tiles in a 256x256 mosaic (7x7 grid of 36.57 px). dcm2niix guesses
    36x36 tiles and writes a volume; we refuse, since a wrong tile size scrambles every slice."""
    shutil.copy(os.path.join(NIBABEL_DATA, "0.dcm"), tmp_path / "0.dcm")
    with pytest.raises(CaseError, match="not a 7x7 grid of whole tiles"):
        _only_stack(str(tmp_path))


def test_enhanced_philips_mprage_matches_dcm2niix(tmp_path):
    """nibabel's enhanced Philips MPRAGE (176 frames): stored values and geometry as dcm2niix."""
    folder = tmp_path / "mprage"
    folder.mkdir()
    with gzip.open(os.path.join(NIBABEL_DATA, "philips_mprage.dcm.gz")) as fh:
        (folder / "mprage.dcm").write_bytes(fh.read())
    volume = _only_stack(str(folder))
    (ref,) = _dcm2niix(folder, tmp_path / "out")
    stored, affine, _, _ = _canonical_nifti(ref)
    ds = pydicom.dcmread(str(folder / "mprage.dcm"), stop_before_pixels=True)
    pvt = (
        ds.PerFrameFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
        or ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    )
    rs, ri = float(pvt[0].RescaleSlope), float(pvt[0].RescaleIntercept)
    np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_TOL_MM)
    # dcm2niix scales with Philips' private slope (see the dcm_qa_enh test): compare stored values.
    np.testing.assert_array_equal(np.round((volume.array.astype(np.float64) - ri) / rs), stored)


def _write_series(src, out_dir, n_slices=3, step_mm=4.0):
    """`n_slices` copies of one pydicom test file, moved along the slice normal (a volume whose
    every slice is the source image). The pixel data stays encoded as in the source."""
    os.makedirs(out_dir, exist_ok=True)
    ds = pydicom.dcmread(src)
    normal = dicom.slice_normal(ds.ImageOrientationPatient)
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    for k in range(n_slices):
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * step_mm * normal]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[src, str(k)])
        ds.save_as(os.path.join(out_dir, f"s{k}.dcm"), enforce_file_format=False)
    return out_dir


LOSSLESS_SYNTAXES = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_padded.dcm",
]


def test_lossless_transfer_syntaxes_decode_exactly_and_match_dcm2niix(tmp_path):
    """Every lossless syntax of MR_small gives exactly the uncompressed reference volume; the
    uncompressed series also matches dcm2niix. (The PyPI dcm2niix is built without JPEG 2000 /
    JPEG-LS, so dcm2niix is only run on the uncompressed copy.)"""
    reference = _only_stack(_write_series(get_testdata_file("MR_small.dcm"), str(tmp_path / "ref")))
    assert reference.array.shape == (64, 64, 3)
    (ref_nifti,) = _dcm2niix(tmp_path / "ref", tmp_path / "d2n")
    _assert_same(reference, ref_nifti)
    for name in LOSSLESS_SYNTAXES:
        volume = _only_stack(_write_series(get_testdata_file(name), str(tmp_path / name)))
        np.testing.assert_array_equal(volume.array, reference.array, err_msg=name)
        np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-6, err_msg=name)


def test_ct_in_hounsfield_units_from_a_jpeg2000_series(tmp_path):
    """CT rescale (intercept -1024) applied; lossy JPEG 2000 CT decodes (pylibjpeg-openjpeg)."""
    volume = _only_stack(_write_series(get_testdata_file("CT_small.dcm"), str(tmp_path / "ct")))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert volume.array.dtype == np.int16 and volume.modality == "CT"
    assert set(np.unique(volume.array)) == set(np.unique(hu))
    j2k = _only_stack(_write_series(get_testdata_file("693_J2KI.dcm"), str(tmp_path / "j2k"), step_mm=5.0))
    assert j2k.array.shape == (512, 512, 3) and j2k.array.min() < -1000  # air in HU


def test_tensorflow_io_fallback_decodes_what_pydicom_cannot(tmp_path, monkeypatch):
    """JPEG-lossy.dcm has non-conformant JPEG markers pylibjpeg rejects; DCMTK (tensorflow-io)
    decodes it to within 1 of the conformant encoding JPGExtended.dcm (lossy decoders differ by
    rounding). Forcing the fallback on lossless files reproduces pydicom's values exactly,
    including signed data and rescaled CT (the modality LUT is stripped before DCMTK)."""
    lossy = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    with pytest.raises(RuntimeError, match="Unable to decode"):
        _ = lossy.pixel_array
    pixels = dicom.decode_pixels(lossy, "JPEG-lossy.dcm")
    good = pydicom.dcmread(get_testdata_file("JPGExtended.dcm")).pixel_array
    assert pixels.shape == (1,) + good.shape
    assert np.max(np.abs(pixels[0].astype(np.int32) - good.astype(np.int32))) <= 1
    for name in ("MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        expected = ds.pixel_array
        got = dicom.pixels._decode_with_tfio(ds, name, RuntimeError("forced"))
        np.testing.assert_array_equal(got[0], expected, err_msg=name)
    # And through a whole series, with pydicom's decoder broken on purpose.
    folder = _write_series(get_testdata_file("MR_small_RLE.dcm"), str(tmp_path / "rle"))
    expected = _only_stack(folder).array
    dicom.clear_cache()

    def broken(self):
        raise RuntimeError("no decoder")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(broken))
    np.testing.assert_array_equal(_only_stack(folder).array, expected)


# --------------------------------------------------------------- the fast header reader


def _all_dicom_files():
    files = [os.path.join(PYDICOM_DATA, f) for f in sorted(os.listdir(PYDICOM_DATA)) if f.endswith(".dcm")]
    files += [
        os.path.join(NIBABEL_DATA, f)
        for f in ("0.dcm", "csa_slice_norm.dcm", "decimal_rescale.dcm", "slicethickness_empty_string.dcm")
    ]
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "dicom")
    if os.path.isdir(data):
        for dirpath, _, names in os.walk(data):
            files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".dcm")][:3]
    return files


def _number_or_text(value):
    try:
        return round(float(value), 9)
    except ValueError:  # badVR.dcm has NumberOfFrames '1A': both must keep the text
        return str(value).strip()


def test_fast_header_reader_agrees_with_pydicom_on_every_file():
    checked = 0
    for path in _all_dicom_files():
        with open(path, "rb") as fh:
            header = dicom.header.parse(fh.read())
        if header is None:
            continue
        ds = pydicom.dcmread(path, force=True)
        for name, vr in dicom.header.TAGS.values():
            ours = header.get(name)
            theirs = ds.get(name) if name in ds else None
            if theirs is None or theirs == "":
                assert ours in (None, "", []), (path, name, ours)
                continue
            if vr == "US":
                assert ours == int(theirs), (path, name)
            elif vr in ("DS", "IS"):
                theirs_values = list(theirs) if isinstance(theirs, pydicom.multival.MultiValue) else [theirs]
                ours_values = ours if isinstance(ours, list) else [ours]
                assert [_number_or_text(v) for v in ours_values] == [_number_or_text(v) for v in theirs_values], (
                    path,
                    name,
                )
            else:
                # We strip each value of padding spaces (pydicom keeps inner ones: 'DERIVED \\PRIMARY').
                theirs_values = list(theirs) if isinstance(theirs, pydicom.multival.MultiValue) else [theirs]
                ours_values = ours if isinstance(ours, list) else [ours]
                assert ours_values == [str(v).strip() for v in theirs_values], (path, name)
        if header.pixel_dtype and not header.needs_pydicom:
            count = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
            with open(path, "rb") as fh:
                fh.seek(header.pixel_offset)
                raw = np.frombuffer(fh.read(count * np.dtype(header.pixel_dtype).itemsize), header.pixel_dtype)
            np.testing.assert_array_equal(raw.reshape(ds.pixel_array.shape), ds.pixel_array, err_msg=path)
        checked += 1
    assert checked >= 40


@pytest.mark.bench
def test_bench_dicom_reports_the_ratio(tmp_path):
    """`medtfx bench dicom`: our reader within 1.5x of dcm2niix on the real series."""
    shared_path("dicom", "dcm_qa_nih")
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "dicom", "--json", str(out), "--repeats", "3"]) == 0
    result = json.loads(out.read_text())
    assert {"medtfx_s", "dcm2niix_s", "series"} <= set(result)
    assert all(r["outputs"]["medtfx"] == r["outputs"]["dcm2niix"] for r in result["series"])
    assert result["ratio"] <= 1.5, result
