"""The DICOM reader at clinical size and its fast paths.

- A generated 400 x 512^2 CT series (the bench's) reads voxel for voxel as dcm2niix converts it;
  its JPEG 2000 twin (same stored values) reads identically, decoded with the helper process
  and without it.
- The canonical fill (each frame written once into the canonical, Fortran-ordered array) equals
  the previous path (a native (X, Y, Z, T) array in the compute type, narrowed, then
  volume.to_canonical) over a table of orientations, storage types and rescales.
- Helper processes: a bad file is named as without helpers; a helper that dies leaves its files
  to this process; the limits follow the environment.
"""

import collections
import os

import nibabel as nib
import numpy as np
import pydicom
import pydicom.encaps
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from modules.io import dicom
from modules.io.dicom import pixels
from modules.io.volume import CaseError, canonical_grid, from_canonical, to_canonical
from pipeline.tools import bench_dicom

AFFINE_TOL_MM = 1e-3


def _read_folder(folder):
    dicom.clear_cache()
    stacks, rejected = dicom.list_stacks(str(folder))
    assert len(stacks) == 1 and not rejected, (stacks, rejected)
    return dicom.read_series(stacks[0][1], stacks[0][0])


# ------------------------------------------------------------------ clinical size vs dcm2niix


def test_generated_clinical_ct_reads_as_dcm2niix_converts_it(tmp_path):
    """400 slices of 512^2 int16 CT (GE-style padding -2000, intercept -1024): same HU voxels
    as dcm2niix's NIfTI (which keeps the stored values with scl_inter -1024), affine within
    1e-3 mm, stored as int16, Fortran-ordered (NIfTI's layout)."""
    n_slices, slice_mm, syntax, signed = bench_dicom.CT_SERIES["generated/ct_512x512x400_uncompressed"]
    folder = tmp_path / "ct"
    bench_dicom.write_ct_series(str(folder), n_slices, slice_mm, syntax, signed)
    volume = _read_folder(folder)
    written = bench_dicom.run_dcm2niix(str(folder), str(tmp_path))
    assert len(written) == 1
    reference = nib.load(str(tmp_path / written[0]))
    expected, affine = to_canonical(np.asarray(reference.dataobj), reference.affine)
    assert volume.array.shape == (512, 512, 400) and volume.array.dtype == np.int16
    assert volume.array.flags.f_contiguous
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_TOL_MM)
    np.testing.assert_allclose(volume.spacing, [0.7, 0.7, 1.0], atol=1e-6)
    assert volume.array.min() == -3024  # padding -2000 stored, -1024 intercept


@pytest.mark.parametrize("helpers", ["0", "1"])
def test_jpeg2000_series_reads_like_its_uncompressed_twin(tmp_path, monkeypatch, helpers):
    """JPEG 2000 lossless and uncompressed copies of the same unsigned 12-bit CT slices give the
    same volume, with the helper process decoding beside this one and without it (24 files:
    above PARALLEL_MIN_FILES, so the helper takes part)."""
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", helpers)
    n_slices = 24
    assert n_slices >= pixels.PARALLEL_MIN_FILES
    bench_dicom.write_ct_series(str(tmp_path / "raw"), n_slices, 1.25, "1.2.840.10008.1.2.1", False)
    bench_dicom.write_ct_series(str(tmp_path / "j2k"), n_slices, 1.25, bench_dicom.JPEG2000_LOSSLESS, False)
    raw, j2k = _read_folder(tmp_path / "raw"), _read_folder(tmp_path / "j2k")
    assert raw.array.dtype == j2k.array.dtype == np.int16
    np.testing.assert_array_equal(j2k.array, raw.array)
    np.testing.assert_allclose(j2k.affine, raw.affine, atol=1e-9)


def test_jpeg2000_series_reads_as_a_jpeg2000_dcm2niix_converts_it(tmp_path):
    """Against dcm2niix itself where one with OpenJPEG is installed (Debian's; the PyPI wheel
    has no JPEG 2000 decoder)."""
    try:
        binary = bench_dicom.dcm2niix_binary(jpeg2000=True)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    folder = tmp_path / "j2k"
    bench_dicom.write_ct_series(str(folder), 20, 2.5, bench_dicom.JPEG2000_LOSSLESS, False)
    volume = _read_folder(folder)
    written = bench_dicom.run_dcm2niix(str(folder), str(tmp_path), binary)
    reference = nib.load(str(tmp_path / written[0]))
    expected, affine = to_canonical(np.asarray(reference.dataobj), reference.affine)
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_TOL_MM)


# ------------------------------------------------------------------ canonical fill == old path


def _old_fill_pixels(layout, infos):
    """The reader's previous pixel path, kept as the reference: (X, Y, Z, T) native array in the
    compute type, every frame rescaled, then narrowed to int16/uint16/int32/float64."""
    n_x, n_y, n_z, n_t = layout.shape
    wanted = collections.defaultdict(list)
    for z, row in enumerate(layout.grid):
        for t, frame in enumerate(row):
            wanted[frame.path].append((z, t, frame))
    stored_by_path = {path: pixels._file_pixels(infos[path]) for path in wanted}
    frames = [f for row in layout.grid for f in row]
    dtype = pixels._output_dtype(frames, {p.dtype.str for p in stored_by_path.values()})
    out = np.empty((n_t, n_z, n_y, n_x), dtype=dtype)
    for path, items in wanted.items():
        for z, t, frame in items:
            plane = stored_by_path[path][frame.tile if frame.tile >= 0 else frame.index]
            if frame.slope != 1.0 or frame.intercept != 0.0:
                if dtype.kind == "i":
                    plane = plane.astype(dtype) * int(frame.slope) + int(frame.intercept)
                else:
                    plane = plane.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
            out[t, z] = plane
    array = out.transpose(3, 2, 1, 0)
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        lo, hi = int(array.min()), int(array.max())
        for narrow in (np.int16, np.uint16, np.int32, np.float64):
            if narrow is np.float64 or (np.iinfo(narrow).min <= lo and hi <= np.iinfo(narrow).max):
                array = array.astype(narrow)
                break
    return array


_AXIAL = ([1, 0, 0], [0, 1, 0])
_CORONAL = ([1, 0, 0], [0, 0, -1])
_SAGITTAL = ([0, 1, 0], [0, 0, -1])
_FLIPPED = ([-1, 0, 0], [0, -1, 0])
_OBLIQUE = ([0.9659258, 0.2588190, 0], [0, 0, -1])  # coronal-like, turned 15 degrees


def _write_series(folder, iop, stored, slope=None, intercept=None, volumes=1):
    """One file per (slice, volume) of `stored` (Z * volumes, rows, cols), slices stepping 2 mm
    along the normal of `iop` (row, column directions, LPS)."""
    os.makedirs(folder, exist_ok=True)
    row, col = np.asarray(iop[0], float), np.asarray(iop[1], float)
    normal = np.cross(row, col)
    series_uid = generate_uid()
    n_slices = stored.shape[0] // volumes
    for k in range(stored.shape[0]):
        z, t = k % n_slices, k // n_slices
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series_uid, series_uid
        ds.InstanceNumber, ds.TemporalPositionIdentifier = k + 1, t + 1
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row, col])]
        ds.ImagePositionPatient = [float(v) for v in np.array([10.0, -20.0, 30.0]) + 2.0 * z * normal]
        ds.PixelSpacing = [0.9, 0.8]
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        bits = stored.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored[k].tobytes()
        ds.save_as(os.path.join(folder, f"im{k:03d}.dcm"), enforce_file_format=True)


def _stored(dtype, lo, hi, shape=(6, 5, 7)):
    rng = np.random.default_rng(7)
    values = rng.integers(lo, hi, size=shape, endpoint=True)
    values.flat[0], values.flat[1] = lo, hi  # both extremes present
    return values.astype(dtype)


FILL_CASES = [
    # name, orientation, stored, slope, intercept, volumes, expected dtype
    ("ct_uint16_intercept", _AXIAL, _stored(np.uint16, 0, 4095), 1, -1024, 1, np.int16),
    ("ct_int16_padding", _FLIPPED, _stored(np.int16, -2000, 3000), 1, -1024, 1, np.int16),
    ("mr_uint16_plain_narrows_to_int16", _CORONAL, _stored(np.uint16, 0, 30000), None, None, 1, np.int16),
    ("mr_uint16_full_range", _SAGITTAL, _stored(np.uint16, 0, 65535), None, None, 1, np.uint16),
    ("uint8_stays", _OBLIQUE, _stored(np.uint8, 0, 255), None, None, 1, np.uint8),
    ("negative_slope", _CORONAL, _stored(np.int16, -500, 500), -3, 7, 1, np.int16),
    ("slope_beyond_int16", _SAGITTAL, _stored(np.uint16, 0, 65535), 2, -100, 1, np.int32),
    ("beyond_int32_to_float64", _AXIAL, _stored(np.uint16, 0, 65535), 100000, 5, 1, np.float64),
    ("fractional_rescale", _OBLIQUE, _stored(np.int16, -1000, 1000), 0.5, -0.25, 1, np.float32),
    ("4d_three_volumes", _SAGITTAL, _stored(np.int16, -100, 900, (9, 5, 7)), 1, -1024, 3, np.int16),
]


@pytest.mark.parametrize(
    "name, iop, stored, slope, intercept, volumes, dtype", FILL_CASES, ids=[c[0] for c in FILL_CASES]
)
def test_canonical_fill_equals_the_previous_path(tmp_path, name, iop, stored, slope, intercept, volumes, dtype):
    folder = str(tmp_path / name)
    _write_series(folder, iop, stored, slope, intercept, volumes)
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    dicom.clear_cache()
    volume, layout = dicom.read_stack(paths)
    _, _, infos = dicom.scan_files(paths)
    native = _old_fill_pixels(layout, infos)
    expected, affine = to_canonical(native if volumes > 1 else native[..., 0], dicom.LPS_TO_RAS @ layout.affine_lps)
    assert volume.array.dtype == expected.dtype == np.dtype(dtype)
    assert volume.array.shape == expected.shape
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-9)


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_canonical_grid_and_native_view_match_to_canonical(axes, flips):
    """canonical_grid gives to_canonical's shape and affine; from_canonical of an empty canonical
    array is a writable view through which the native array lands where to_canonical puts it."""
    array = np.arange(3 * 4 * 5 * 2).reshape(3, 4, 5, 2)
    affine = np.eye(4)
    affine[:3, :3] = np.eye(3)[:, axes] * np.array(flips) * [0.7, 1.1, 2.5]
    affine[:3, 3] = [10.0, -20.0, 5.0]
    expected, expected_affine = to_canonical(array, affine)
    shape, grid_affine = canonical_grid(affine, array.shape[:3])
    assert shape == expected.shape[:3]
    np.testing.assert_allclose(grid_affine, expected_affine)
    canonical = np.zeros(shape + (2,), array.dtype, order="F")
    native = from_canonical(canonical, affine)
    assert np.shares_memory(native, canonical)
    native[...] = array
    np.testing.assert_array_equal(canonical, expected)


# ------------------------------------------------------------------ helper processes


def _series_with_a_bad_file(folder, n_files):
    """A JPEG 2000 series whose 10th file holds noise instead of a codestream (header intact)."""
    paths = bench_dicom.write_ct_series(folder, n_files, 2.0, bench_dicom.JPEG2000_LOSSLESS, False)
    bad = paths[9]
    ds = pydicom.dcmread(bad)
    ds.PixelData = pydicom.encaps.encapsulate([np.random.default_rng(1).bytes(4096)])
    ds.save_as(bad)
    return bad


@pytest.mark.parametrize("helpers", ["0", "1"])
def test_an_undecodable_file_is_named_with_and_without_helpers(tmp_path, monkeypatch, helpers):
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", helpers)
    bad = _series_with_a_bad_file(str(tmp_path / "j2k"), 20)
    dicom.clear_cache()
    paths = sorted(os.path.join(tmp_path, "j2k", f) for f in os.listdir(tmp_path / "j2k"))
    with pytest.raises(CaseError, match=f"{os.path.basename(bad)}: .*(cannot be decoded|pixel data)"):
        dicom.read_series(paths)


def _die(info, environment):
    """Stands in for pixels._decode_in_helper: the helper process dies, as on a native crash."""
    os._exit(3)


def test_a_helper_that_dies_leaves_its_files_to_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "1")
    folder = tmp_path / "j2k"
    bench_dicom.write_ct_series(str(folder), 18, 2.0, bench_dicom.JPEG2000_LOSSLESS, False)
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "0")
    expected = _read_folder(folder).array
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "1")
    monkeypatch.setattr(pixels, "_decode_in_helper", _die)
    np.testing.assert_array_equal(_read_folder(folder).array, expected)
    monkeypatch.undo()
    # The dead pool was dropped: the next series gets a working helper.
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "1")
    np.testing.assert_array_equal(_read_folder(folder).array, expected)


def test_helpers_apply_the_limits_of_this_process(tmp_path, monkeypatch):
    """A byte limit set after the helper started still holds in it (passed with each file)."""
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "1")
    folder = tmp_path / "j2k"
    bench_dicom.write_ct_series(str(folder), 16, 2.0, bench_dicom.JPEG2000_LOSSLESS, False)
    _read_folder(folder)  # starts the helper under the default limits
    infos = [dicom.read_file_info(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    monkeypatch.setenv("MEDTFX_MAX_BYTES", "1000")
    with pytest.raises(CaseError, match="MEDTFX_MAX_BYTES"):
        pixels.stored_pixels(infos)


def test_decode_helpers_follow_the_environment(monkeypatch):
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "0")
    assert dicom.decode_helpers() == 0
    monkeypatch.setenv("MEDTFX_DECODE_HELPERS", "3")
    assert dicom.decode_helpers() == 3
    monkeypatch.delenv("MEDTFX_DECODE_HELPERS")
    assert dicom.decode_helpers() == max(len(os.sched_getaffinity(0)) - 1, 0)


# ------------------------------------------------------------------ header prefix


@pytest.mark.parametrize("prefix", [200, 1000, 1 << 16])
def test_header_from_a_prefix_matches_the_whole_file(tmp_path, monkeypatch, prefix):
    """Reading only the first bytes of a file gives the same FileInfo as reading all of it, or,
    when the header does not fit, falls back to the whole file."""
    folder = str(tmp_path / "ct")
    paths = bench_dicom.write_ct_series(folder, 2, 1.0, "1.2.840.10008.1.2.1", True)
    dicom.clear_cache()
    whole = dicom.read_file_info(paths[0])
    monkeypatch.setattr(dicom.files, "_PREFIX_BYTES", prefix)
    dicom.clear_cache()
    part = dicom.read_file_info(paths[0])
    assert (part.pixel_offset, part.pixel_dtype, part.meta) == (whole.pixel_offset, whole.pixel_dtype, whole.meta)
    assert whole.pixel_offset is not None and whole.pixel_dtype == "<i2"


def test_a_truncated_file_is_still_refused_when_its_header_is_read_from_a_prefix(tmp_path):
    folder = str(tmp_path / "ct")
    paths = bench_dicom.write_ct_series(folder, 2, 1.0, "1.2.840.10008.1.2.1", True)
    with open(paths[0], "r+b") as fh:
        fh.truncate(os.path.getsize(paths[0]) - 1000)
    dicom.clear_cache()
    with pytest.raises(CaseError, match="the file is truncated"):
        dicom.read_file_info(paths[0])


def test_a_file_that_changes_between_the_two_reads_is_refused(tmp_path, monkeypatch):
    """Raw pixels are read once for their extremes and once for the voxels; values beyond the
    first read's range would wrap in the narrowed type, so they are refused instead."""
    folder = str(tmp_path / "ct")
    paths = bench_dicom.write_ct_series(folder, 3, 1.0, "1.2.840.10008.1.2.1", True)
    reads = collections.Counter()
    original = pixels._RawReader.read

    def grows_on_the_second_read(self, info):
        reads[info.path] += 1
        stored = original(self, info)
        if reads[info.path] == 2 and info.path == paths[1]:
            stored[0, 0, 0] = 32767  # beyond int16 after the -1024 intercept's range check
        return stored

    monkeypatch.setattr(pixels._RawReader, "read", grows_on_the_second_read)
    dicom.clear_cache()
    with pytest.raises(CaseError, match="changed while it was being read"):
        dicom.read_series(paths)
