"""DICOM files to canonical :class:`Volume` s: classic and enhanced multi-frame, Siemens mosaic, 3D and 4D.

How a tree of files becomes volumes:
  file  -> frames: one 2D image each, with its own geometry (a classic file is one frame, an
           enhanced multi-frame file has one per item of its per-frame functional groups, a Siemens
           mosaic is cut into its tiles);
  frames -> stacks: grouped by SeriesInstanceUID, then split by orientation, echo, image type and
           matrix size, because one series may mix them (dcm2niix splits the same way);
  stack -> volume: slice positions sorted along the slice normal by projection of
           ImagePositionPatient; frames repeating the positions are the volumes of a 4D series
           (fMRI, DWI), ordered by temporal position / acquisition / instance number.
Geometry follows the DICOM standard (C.7.6.2.1.1): voxel (c, r, s) lies at
    IPP_0 + c * PixelSpacing[1] * IOP_row + r * PixelSpacing[0] * IOP_col + s * slice_step
in LPS patient coordinates; x and y are flipped to get RAS+, as NIfTI and dcm2niix do.
Stored values become modality values with RescaleSlope/Intercept (per frame for enhanced files),
so CT is in HU. Defects are refused with a reason, never converted silently wrong: single slices,
gantry tilt, missing slices / non-uniform spacing, incomplete 4D series, colour or geometry-less
images, non-image objects, DICOMDIR, non-DICOM files.

Speed: classic uncompressed files (the bulk of any archive) are parsed by
:mod:`dicom_header` (a small top-level tag reader, checked against pydicom in the tests) and their
pixels read straight from the file; everything else goes through pydicom, with pylibjpeg /
pyjpegls decoders and tensorflow-io (DCMTK) as the last resort for pixel data pydicom cannot decode.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import math
import os
import threading
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from modules.io import dicom_header
from modules.io.volume import CaseError, Volume, to_canonical

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Storage classes whose instances carry image pixels that can form a volume (CT, MR, PET, NM,
# secondary capture: the latter are refused later when they lack geometry).
_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                       "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
                       "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.7")
_NOT_IMAGE_SOPS = ("1.2.840.10008.5.1.4.1.1.4.2",)  # MR spectroscopy (shares the MR prefix)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# Relative deviation of slice gaps above which a series counts as non-uniform (missing slices).
SLICE_GAP_TOLERANCE = 0.01
# Frames closer than this along the normal (mm) are at the same slice position.
POSITION_TOLERANCE_MM = 0.01
# Largest in-plane drift of the slice origins per mm of stack height before we call it gantry
# tilt (~0.06 degrees); scanners' rounding stays well below.
TILT_TOLERANCE = 1e-3
# Orientation cosines that differ by less than this belong to the same stack.
ORIENTATION_TOLERANCE = 1e-3
# Files never looked at as DICOM: labels, sidecars, manifests (the case finder handles them).
SKIPPED_SUFFIXES = (".nii", ".nii.gz", ".json", ".csv", ".txt", ".md", ".bval", ".bvec")
_GZIP_MAGIC = b"\x1f\x8b"


class SeriesKey(NamedTuple):
    """What one stack of frames has in common. A tuple, so usable as a dict key.

    orientation: the stack's ImageOrientationPatient rounded to 4 decimals, () if the frames have none.
    """

    series_uid: str
    orientation: tuple
    echo: str
    image_type: str
    size: Tuple[int, int]


def describe(key: SeriesKey) -> str:
    """Readable, identifier-free description of a stack, e.g. 'axial 64x64, echo 2, FIELD_MAP'."""
    parts = [f"{_plane_name(key.orientation)} {key.size[1]}x{key.size[0]}"]
    if key.echo:
        parts.append(f"echo {key.echo}")
    if key.image_type:
        parts.append(key.image_type)
    return ", ".join(parts)


def _plane_name(iop: tuple) -> str:
    if len(iop) != 6:
        return "no geometry"
    normal = np.abs(np.cross(iop[:3], iop[3:]))
    axis = int(np.argmax(normal))
    name = ("sagittal", "coronal", "axial")[axis]
    return name if normal[axis] > 0.99 else f"oblique ({name}-like)"


@dataclasses.dataclass
class Frame:
    """One 2D image of a file, with everything needed to place it in a volume.

    iop: (6,) row then column direction cosines (LPS), or None; ipp: (3,) LPS mm of the first
    voxel, or None; pixel_spacing: (row spacing, column spacing) mm. index: frame number in the
    file (0 for single-frame files); tile: mosaic tile number, -1 when not a mosaic.
    problem: set when the frame cannot be part of a volume (colour, no geometry, ...).
    """

    path: str
    index: int
    rows: int
    cols: int
    iop: Optional[np.ndarray]
    ipp: Optional[np.ndarray]
    pixel_spacing: Optional[Tuple[float, float]]
    slope: float = 1.0
    intercept: float = 0.0
    series_uid: str = ""
    echo: str = ""
    image_type: str = ""
    order: tuple = ()
    tile: int = -1
    problem: Optional[str] = None


@dataclasses.dataclass
class FileInfo:
    """What a header read tells about one file: its frames, and how to get its pixels.

    pixel_offset/pixel_dtype are set when the pixels are stored raw (uncompressed, native byte
    order), so they can be read straight from disk; otherwise pydicom decodes them.
    meta: non-identifying descriptors (modality, manufacturer, UIDs, tilt);
    identifiers: patient name/ID/birth date, only to scrub them out of messages.
    """

    path: str
    frames: List[Frame]
    meta: dict
    identifiers: Tuple[str, ...] = ()
    patient_id: str = ""
    pixel_offset: Optional[int] = None
    pixel_dtype: Optional[str] = None
    n_frames: int = 1


# ----------------------------------------------------------------------------- file reading


def _read_bytes(path: str) -> Tuple[bytes, bool]:
    """(content, was_gzipped): .dcm.gz (any gzip stream) is decompressed in memory."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data), True
        except (OSError, EOFError) as exc:
            raise CaseError(f"{path}: corrupt gzip file ({exc})") from exc
    return data, False


def _dcmread(data: bytes, path: str, header_only: bool):
    """pydicom dataset from file content; files without the DICM preamble are accepted only when
    they parse into something with a SOP Class UID (old ACR-NEMA style exports)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise CaseError(f"{path}: not a DICOM file or corrupt header ({type(exc).__name__})") from exc
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only, force=True)
        sop = str(ds.get("SOPClassUID", "") or "")
    except Exception:
        sop = ""
    if not sop or not all(ch.isdigit() or ch == "." for ch in sop):
        raise CaseError(f"{path}: not a DICOM file")
    return ds


def read_header(path: str):
    """The DICOM header of `path` (gzip allowed) without pixel data; CaseError if not DICOM."""
    data, _ = _read_bytes(path)
    return _dcmread(data, path, header_only=True)


def _floats(value, n: int) -> Optional[np.ndarray]:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _num(value, default: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _identifiers(ds) -> Tuple[str, ...]:
    out = []
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = str(ds.get(tag, "") or "").strip()
        if len(value) >= 3:
            out.append(value)
            out.extend(v for v in value.replace("^", " ").split() if len(v) >= 3)
    return tuple(dict.fromkeys(out))


def _sop_name(sop: str) -> str:
    from pydicom.uid import UID

    name = UID(sop).name
    return f"{name} ({sop})" if name and name != sop else f"SOP class {sop or 'missing'}"


def non_image_reason(ds, path: str) -> Optional[str]:
    """Why a DICOM object cannot be part of an image volume (DICOMDIR, SR, RTSTRUCT, ...), or None."""
    sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None) or {},
                                                    "MediaStorageSOPClassUID", "") or "")
    if os.path.basename(path).upper() == "DICOMDIR" or sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return "DICOMDIR index file, not an image"
    if sop.startswith(_NOT_IMAGE_SOPS) or (sop and not sop.startswith(_IMAGE_SOP_PREFIXES)):
        return f"DICOM object is not an image volume: {_sop_name(sop)}"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return f"DICOM object without pixel data: {_sop_name(sop)}"
    return None


def _meta(ds) -> dict:
    return {"modality": str(ds.get("Modality", "") or ""),
            "manufacturer": str(ds.get("Manufacturer", "") or ""),
            "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "sop_class": str(ds.get("SOPClassUID", "") or ""),
            "gantry_tilt": _num(ds.get("GantryDetectorTilt", 0), 0.0)}


def _common_problem(ds) -> Optional[str]:
    if _int(ds.get("SamplesPerPixel", 1), 1) != 1:
        return (f"colour image ({ds.get('PhotometricInterpretation', '')}, "
                f"{ds.get('SamplesPerPixel')} samples per pixel): not a grayscale cross-sectional slice")
    if "Rows" not in ds or "Columns" not in ds:
        return "image without Rows/Columns"
    return None


def _text(value) -> str:
    """A (possibly multi-valued) DICOM string value as one string, values joined by '\\'."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _image_type(values) -> str:
    """ImageType minus the ORIGINAL/PRIMARY boilerplate, e.g. 'M\\ND\\NORM'."""
    if values is None:
        return ""
    if isinstance(values, str):
        values = values.split("\\")
    return "\\".join(str(v) for v in list(values)[2:] if str(v) not in ("", "NONE"))


def _classic_frames(ds, path: str) -> List[Frame]:
    """Frames of a classic (single-frame, or mosaic) image."""
    problem = _common_problem(ds)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    if problem is None and (iop is None or ipp is None or spacing is None):
        missing = [n for n, v in (("ImageOrientationPatient", iop), ("ImagePositionPatient", ipp),
                                  ("PixelSpacing", spacing)) if v is None]
        problem = (f"{_sop_name(str(ds.get('SOPClassUID', '')))} has no patient geometry "
                   f"({', '.join(missing)}): not a slice of a volume")
    n_frames = _int(ds.get("NumberOfFrames", 1), 1)
    if problem is None and n_frames > 1:
        problem = f"multi-frame image ({n_frames} frames) without per-frame geometry"
    order = (_int(ds.get("TemporalPositionIdentifier", 0)), _int(ds.get("AcquisitionNumber", 0)),
             _int(ds.get("InstanceNumber", 0)), path)
    base = Frame(path=path, index=0, rows=_int(ds.get("Rows", 0)), cols=_int(ds.get("Columns", 0)),
                 iop=iop, ipp=ipp, pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
                 slope=_num(ds.get("RescaleSlope", 1), 1.0) or 1.0,
                 intercept=_num(ds.get("RescaleIntercept", 0), 0.0),
                 series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                 echo=_text(ds.get("EchoNumbers")),
                 image_type=_image_type(ds.get("ImageType")), order=order, problem=problem)
    if problem is None and _is_mosaic(ds):
        return _mosaic_frames(ds, base)
    return [base]


def _is_mosaic(ds) -> bool:
    image_type = ds.get("ImageType") or []
    return "MOSAIC" in [str(v).upper() for v in image_type]


def _mosaic_frames(ds, base: Frame) -> List[Frame]:
    """Cuts a Siemens mosaic into its tiles, each placed on its slice (as nibabel / dcm2niix do).

    The mosaic's IPP is the corner of the whole mosaic grid; the true slice origin is moved by half
    the difference between mosaic and tile size. Slices follow the CSA SliceNormalVector.
    """
    import warnings

    with warnings.catch_warnings():  # nibabel warns that its DICOM *wrappers* are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader
    try:
        csa = csareader.get_csa_header(ds, "image")
    except Exception:
        csa = None
    n_tiles = _int(ds.get((0x0019, 0x100A)).value if (0x0019, 0x100A) in ds else 0)
    if not n_tiles and csa:
        n_tiles = _int(csareader.get_n_mosaic(csa))
    if n_tiles < 1:
        base.problem = "Siemens mosaic without NumberOfImagesInMosaic"
        return [base]
    grid = int(math.ceil(math.sqrt(n_tiles)))
    if base.rows % grid or base.cols % grid:
        # dcm2niix and nibabel would guess a tile size here; a wrong guess scrambles every slice.
        base.problem = (f"Siemens mosaic of {base.cols}x{base.rows} pixels is not a {grid}x{grid} grid of "
                        f"whole tiles for {n_tiles} images")
        return [base]
    rows, cols = base.rows // grid, base.cols // grid
    row_dir, col_dir = base.iop[:3], base.iop[3:]
    normal = np.cross(row_dir, col_dir)
    csa_normal = csareader.get_slice_normal(csa) if csa else None
    if csa_normal is not None and np.all(np.isfinite(csa_normal)) and np.linalg.norm(csa_normal) > 0.5:
        normal = np.asarray(csa_normal, dtype=np.float64) / np.linalg.norm(csa_normal)
    step = _num(ds.get("SpacingBetweenSlices"), 0.0) or _num(ds.get("SliceThickness"), 0.0)
    if step <= 0:
        base.problem = "Siemens mosaic without slice spacing (SpacingBetweenSlices/SliceThickness)"
        return [base]
    row_spacing, col_spacing = base.pixel_spacing
    origin = (base.ipp + row_dir * col_spacing * (base.cols - cols) / 2.0
              + col_dir * row_spacing * (base.rows - rows) / 2.0)
    return [dataclasses.replace(base, rows=rows, cols=cols, tile=k, ipp=origin + k * step * normal)
            for k in range(n_tiles)]


def _item(groups, name: str):
    """First item of functional group `name` from a per-frame item, else the shared one."""
    for group in groups:
        if group is not None and name in group:
            seq = group[name].value
            if seq:
                return seq[0]
    return None


def _enhanced_frames(ds, path: str) -> List[Frame]:
    """Frames of an enhanced multi-frame image from its Shared/PerFrame functional groups."""
    problem = _common_problem(ds)
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    n_frames = _int(ds.get("NumberOfFrames", len(per_frame)), len(per_frame))
    if problem is None and len(per_frame) != n_frames:
        problem = f"enhanced image has {len(per_frame)} per-frame items for {n_frames} frames"
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    instance = _int(ds.get("InstanceNumber", 0))
    rows, cols = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    frames = []
    for i, item in enumerate(per_frame):
        groups = (item, shared)
        position = _item(groups, "PlanePositionSequence")
        orientation = _item(groups, "PlaneOrientationSequence")
        measures = _item(groups, "PixelMeasuresSequence")
        transform = _item(groups, "PixelValueTransformationSequence")
        content = _item(groups, "FrameContentSequence")
        echo = _item(groups, "MREchoSequence")
        ftype = (_item(groups, "MRImageFrameTypeSequence") or _item(groups, "CTImageFrameTypeSequence")
                 or _item(groups, "PETFrameTypeSequence"))
        ipp = _floats(position.get("ImagePositionPatient") if position else None, 3)
        iop = _floats(orientation.get("ImageOrientationPatient") if orientation else
                      ds.get("ImageOrientationPatient"), 6)
        spacing = _floats(measures.get("PixelSpacing") if measures else ds.get("PixelSpacing"), 2)
        frame_problem = problem
        if frame_problem is None and (ipp is None or iop is None or spacing is None):
            frame_problem = (f"enhanced image frame {i + 1} has no plane position, orientation or "
                             "pixel spacing")
        source = transform if transform is not None else ds
        echo_label = ""
        if echo is not None and "EffectiveEchoTime" in echo:
            echo_label = f"TE={_num(echo.EffectiveEchoTime, 0.0):g}"
        frame_type = ftype.get("FrameType") if ftype is not None else ds.get("ImageType")
        component = str(ftype.get("ComplexImageComponent", "") or "") if ftype is not None else ""
        image_type = _image_type(frame_type)
        if component and component not in image_type.split("\\"):
            image_type = "\\".join(p for p in (image_type, component) if p)
        order = (_int(content.get("TemporalPositionIndex", 0)) if content else 0,
                 _int(content.get("FrameAcquisitionNumber", 0)) if content else 0, instance, path, i)
        frames.append(Frame(path=path, index=i, rows=rows, cols=cols, iop=iop, ipp=ipp,
                            pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
                            slope=_num(source.get("RescaleSlope", 1), 1.0) or 1.0,
                            intercept=_num(source.get("RescaleIntercept", 0), 0.0),
                            series_uid=series_uid, echo=echo_label, image_type=image_type,
                            order=order, problem=frame_problem))
    return frames


def file_info_from_dataset(ds, path: str) -> FileInfo:
    """FileInfo of an image dataset (raises CaseError for non-image objects)."""
    reason = non_image_reason(ds, path)
    if reason:
        raise CaseError(f"{path}: {reason}")
    if ds.get("PerFrameFunctionalGroupsSequence"):
        frames = _enhanced_frames(ds, path)
        n_frames = len(frames)
    else:
        frames = _classic_frames(ds, path)
        n_frames = _int(ds.get("NumberOfFrames", 1), 1)
    return FileInfo(path=path, frames=frames, meta=_meta(ds), identifiers=_identifiers(ds),
                    patient_id=str(ds.get("PatientID", "") or ""), n_frames=n_frames)


# Header cache: scan_tree's parse is reused by read_series (convert reads every file once).
_CACHE_LIMIT = 50000
_cache: "collections.OrderedDict[str, Tuple[tuple, FileInfo]]" = collections.OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget cached headers (benchmarks measure cold reads)."""
    with _cache_lock:
        _cache.clear()


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_file_info(path: str) -> FileInfo:
    """Frames and pixel location of one file; CaseError for non-DICOM and non-image files.

    Classic uncompressed files are parsed by the fast reader; anything it does not handle
    (enhanced, mosaic, compressed, big endian, gzip, odd layouts) by pydicom.
    """
    stamp = _stat_key(path)
    with _cache_lock:  # Beam's direct runner reads cases from several threads
        hit = _cache.get(path)
        if hit is not None and hit[0] == stamp:
            _cache.move_to_end(path)
            return hit[1]
    info = _read_file_info(path)
    with _cache_lock:
        _cache[path] = (stamp, info)
        while len(_cache) > _CACHE_LIMIT:
            _cache.popitem(last=False)
    return info


def _read_file_info(path: str) -> FileInfo:
    data, gzipped = _read_bytes(path)
    fast = None if gzipped else dicom_header.parse(data)
    if fast is not None and not fast.needs_pydicom:
        info = file_info_from_dataset(fast, path)
    else:
        info = file_info_from_dataset(_dcmread(data, path, header_only=False), path)
    if fast is not None and fast.pixel_dtype and info.frames and info.frames[0].tile < 0:
        # Uncompressed native pixels: read them straight from the file later.
        info.pixel_offset, info.pixel_dtype = fast.pixel_offset, fast.pixel_dtype
    return info


# ----------------------------------------------------------------------------- grouping


def _group_frames(frames: Iterable[Frame]) -> Dict[SeriesKey, List[Frame]]:
    """Splits frames into stacks: same series, orientation (within tolerance), echo, type, size."""
    groups: Dict[SeriesKey, List[Frame]] = {}
    reps: Dict[tuple, List[Tuple[np.ndarray, tuple]]] = collections.defaultdict(list)
    for frame in frames:
        base = (frame.series_uid, frame.echo, frame.image_type, (frame.rows, frame.cols))
        orientation: tuple = ()
        if frame.iop is not None:
            for rep, rounded in reps[base]:
                if np.max(np.abs(rep - frame.iop)) <= ORIENTATION_TOLERANCE:
                    orientation = rounded
                    break
            else:
                orientation = tuple(float(v) for v in np.round(frame.iop, 4) + 0.0)
                reps[base].append((frame.iop, orientation))
        key = SeriesKey(frame.series_uid, orientation, frame.echo, frame.image_type, (frame.rows, frame.cols))
        groups.setdefault(key, []).append(frame)
    return groups


def _skipped(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(SKIPPED_SUFFIXES)


def scan_files(paths: Sequence[str]) -> Tuple[Dict[SeriesKey, List[Frame]], List[Tuple[str, str]], Dict[str, FileInfo]]:
    """Reads the headers of `paths`. Returns (stacks: key -> frames, rejected: [(path, reason)],
    infos: path -> FileInfo)."""
    infos: Dict[str, FileInfo] = {}
    rejected: List[Tuple[str, str]] = []
    for path in paths:
        try:
            infos[path] = read_file_info(path)
        except CaseError as exc:
            rejected.append((path, str(exc)))
        except OSError as exc:
            rejected.append((path, f"{path}: unreadable ({exc.strerror or exc})"))
    stacks = _group_frames(f for info in infos.values() for f in info.frames)
    return stacks, rejected, infos


def list_files(root: str) -> List[str]:
    """Every file below `root` that could be DICOM (sorted; labels and sidecars left out)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out.extend(os.path.join(dirpath, n) for n in sorted(filenames) if not _skipped(n))
    return out


def scan_tree(root: str) -> Tuple[Dict[SeriesKey, List[str]], List[Tuple[str, str]]]:
    """Groups every DICOM image file under `root` into series (stacks).

    Returns (series: key -> sorted [paths], rejected: [(path, reason)]) where rejected holds files
    that are not DICOM, DICOMDIR, or DICOM objects without image volume (SR, RTSTRUCT, ...).
    A multi-frame file holding several stacks (e.g. two echoes) is listed under each of them.
    """
    stacks, rejected, _ = scan_files(list_files(root))
    series = {key: sorted({f.path for f in frames}) for key, frames in stacks.items()}
    return series, rejected


# ----------------------------------------------------------------------------- geometry


def slice_normal(iop: Iterable[float]) -> np.ndarray:
    """(3,) unit normal (LPS) of slices with ImageOrientationPatient `iop`."""
    iop = np.asarray(list(iop), dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


@dataclasses.dataclass
class Layout:
    """Where each frame of a stack goes. grid[z][t] is the frame at slice z of volume t;
    affine_lps (4, 4) maps voxel (column, row, slice) to LPS mm."""

    grid: List[List[Frame]]
    affine_lps: np.ndarray

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(X, Y, Z, T): columns, rows, slices, volumes."""
        first = self.grid[0][0]
        return first.cols, first.rows, len(self.grid), len(self.grid[0])


def stack_layout(frames: List[Frame], where: str, gantry_tilt: float = 0.0) -> Layout:
    """Places the frames of one stack: sorts positions along the normal, finds volumes, checks
    spacing and tilt. Raises CaseError naming the defect."""
    problems = [f for f in frames if f.problem]
    if problems:
        raise CaseError(f"{where}: {problems[0].problem}")
    if len(frames) < 2:
        raise CaseError(f"{where}: series has a single slice; a 3D volume needs at least two")
    first = frames[0]
    normal = slice_normal(first.iop)
    positions = np.array([f.ipp for f in frames])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    # Cluster sorted distances into slice positions.
    slices: List[List[int]] = [[int(order[0])]]
    for prev, idx in zip(order[:-1], order[1:]):
        if distance[idx] - distance[prev] > POSITION_TOLERANCE_MM:
            slices.append([])
        slices[-1].append(int(idx))
    counts = sorted({len(s) for s in slices})
    if len(counts) > 1:
        raise CaseError(f"{where}: incomplete multi-volume series: {len(slices)} slice positions hold "
                        f"between {counts[0]} and {counts[-1]} frames (missing or extra slices)")
    n_volumes = counts[0]
    if len(slices) < 2:
        raise CaseError(f"{where}: series has a single slice position"
                        + (f" repeated {n_volumes} times (a 2D time series)" if n_volumes > 1 else "")
                        + "; a 3D volume needs at least two")
    for members in slices:
        spread = np.ptp(positions[members], axis=0) if len(members) > 1 else np.zeros(3)
        if np.max(spread) > 0.1:
            raise CaseError(f"{where}: frames at the same slice position have different origins "
                            f"({np.max(spread):.2f} mm apart): mixed stacks in one series")
    grid = [[frames[i] for i in sorted(members, key=lambda i: frames[i].order)] for members in slices]
    stack_positions = np.array([row[0].ipp for row in grid])
    slice_distance = stack_positions @ normal
    height = slice_distance[-1] - slice_distance[0]
    drift = stack_positions[-1] - stack_positions[0] - height * normal
    # Judged on geometry: a GantryDetectorTilt tag with slices stacked along their normal is a
    # consistent volume (already corrected); sheared positions are not, tag or no tag.
    if np.linalg.norm(drift) > TILT_TOLERANCE * height:
        angle = math.degrees(math.atan2(np.linalg.norm(drift), height))
        raise CaseError(f"{where}: gantry tilt: slices are sheared by {angle:.2f} degrees "
                        f"(GantryDetectorTilt {gantry_tilt:g}); refused rather than resampled")
    gaps = np.diff(slice_distance)
    step = height / (len(slices) - 1)
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - median)) > SLICE_GAP_TOLERANCE * median:
        missing = int(round(height / median)) + 1 - len(slices)
        hint = f"; {missing} missing slice(s)?" if missing > 0 else ""
        raise CaseError(f"{where}: non-uniform slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, "
                        f"typical {median:.3f}){hint}")
    for row in grid:
        for frame in row:
            if (np.max(np.abs(frame.iop - first.iop)) > ORIENTATION_TOLERANCE
                    or abs(frame.pixel_spacing[0] - first.pixel_spacing[0]) > 1e-4
                    or abs(frame.pixel_spacing[1] - first.pixel_spacing[1]) > 1e-4):
                raise CaseError(f"{where}: slices have different orientation or pixel spacing")
    row_spacing, col_spacing = first.pixel_spacing
    origin = grid[0][0]
    affine = np.eye(4)
    affine[:3, 0] = origin.iop[:3] * col_spacing
    affine[:3, 1] = origin.iop[3:] * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = origin.ipp
    return Layout(grid, affine)


# ----------------------------------------------------------------------------- pixels


def _decode_with_tfio(ds, path: str, cause: Exception) -> np.ndarray:
    """(F, R, C) stored values via tensorflow-io's DCMTK decoder, for pixel data pydicom cannot
    decode. DCMTK renders through the modality LUT, so that is stripped first; its output is
    then offset so the smallest storable value is 0, which we undo for signed data."""
    try:
        import tensorflow as tf
        import tensorflow_io as tfio
    except Exception as exc:  # pragma: no cover - tfio is a dependency
        raise CaseError(f"{path}: pixel data cannot be decoded ({type(cause).__name__}: {cause}); "
                        f"tensorflow-io unavailable ({exc})") from cause
    if str(ds.get("PhotometricInterpretation", "")) != "MONOCHROME2" or _int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CaseError(f"{path}: pixel data cannot be decoded ({type(cause).__name__}: {cause})") from cause
    clean = ds.copy()
    for tag in ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
                "WindowWidth", "VOILUTSequence", "VOILUTFunction", "PresentationLUTShape"):
        if tag in clean:
            delattr(clean, tag)
    buffer = io.BytesIO()
    try:
        clean.save_as(buffer, enforce_file_format=False)
        decoded = tfio.image.decode_dicom_image(tf.constant(buffer.getvalue()), dtype=tf.uint32,
                                                on_error="strict").numpy()
    except Exception as exc:
        raise CaseError(f"{path}: pixel data cannot be decoded by pydicom ({type(cause).__name__}: "
                        f"{cause}) nor DCMTK ({type(exc).__name__})") from cause
    values = decoded[..., 0].astype(np.int64)
    if _int(ds.get("PixelRepresentation", 0)) == 1:
        values -= 1 << (_int(ds.get("BitsStored", 16), 16) - 1)
    return values.astype(np.int32 if values.min() < 0 or values.max() > 65535 else np.uint16)


def decode_pixels(ds, path: str) -> np.ndarray:
    """(F, R, C) stored pixel values of a dataset: pydicom (with pylibjpeg, pyjpegls plugins),
    else tensorflow-io (DCMTK)."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        pixels = _decode_with_tfio(ds, path, exc)
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels


def _raw_pixels(info: FileInfo, count: int) -> Optional[np.ndarray]:
    """Pixels read straight from an uncompressed file, or None when that is not possible."""
    if info.pixel_offset is None or not info.pixel_dtype:
        return None
    dtype = np.dtype(info.pixel_dtype)
    try:
        with open(info.path, "rb") as fh:
            fh.seek(info.pixel_offset)
            raw = fh.read(count * dtype.itemsize)
    except OSError:
        return None
    if len(raw) < count * dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype=dtype)


def _file_pixels(info: FileInfo) -> np.ndarray:
    """(F, R, C) stored values of every frame of a file (mosaics: (tiles, tile rows, tile cols))."""
    frame = info.frames[0]
    if info.pixel_offset is not None and frame.tile < 0:
        flat = _raw_pixels(info, frame.rows * frame.cols * info.n_frames)
        if flat is not None:
            return flat.reshape(info.n_frames, frame.rows, frame.cols)
    data, _ = _read_bytes(info.path)
    ds = _dcmread(data, info.path, header_only=False)
    try:
        pixels = decode_pixels(ds, info.path)
    except CaseError:
        raise
    except Exception as exc:
        raise CaseError(f"{info.path}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if frame.tile >= 0:
        return _cut_mosaic(pixels[0], len(info.frames), frame.rows, frame.cols, info.path)
    return pixels


def _cut_mosaic(mosaic: np.ndarray, n_tiles: int, rows: int, cols: int, path: str) -> np.ndarray:
    grid = int(math.ceil(math.sqrt(n_tiles)))
    if mosaic.shape[0] < grid * rows or mosaic.shape[1] < grid * cols:
        raise CaseError(f"{path}: mosaic {mosaic.shape} too small for {n_tiles} tiles of {rows}x{cols}")
    tiles = mosaic[:grid * rows, :grid * cols].reshape(grid, rows, grid, cols).transpose(0, 2, 1, 3)
    return tiles.reshape(grid * grid, rows, cols)[:n_tiles]


def _output_dtype(frames: List[Frame], raw_dtypes: set) -> np.dtype:
    """Lossless output type: native integers when no rescale, int32 for integer rescale (narrowed
    later), float32 when slope or intercept is fractional."""
    if all(f.slope == 1.0 and f.intercept == 0.0 for f in frames) and len(raw_dtypes) == 1:
        return np.dtype(next(iter(raw_dtypes))).newbyteorder("=")
    if all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def _narrow(array: np.ndarray) -> np.ndarray:
    """Integer voxels in the smallest of int16/uint16/int32 that holds them (dcm2niix does too)."""
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == np.uint8 or array.size == 0:
        return array
    lo, hi = int(array.min()), int(array.max())
    for dtype in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if lo >= info.min and hi <= info.max:
            return array.astype(dtype, copy=False)
    return array.astype(np.float64)


def _fill_pixels(layout: Layout, infos: Dict[str, FileInfo]) -> np.ndarray:
    """(X, Y, Z, T) modality values of a laid-out stack; each file is read once."""
    n_x, n_y, n_z, n_t = layout.shape
    wanted: Dict[str, List[Tuple[int, int, Frame]]] = collections.defaultdict(list)
    for z, row in enumerate(layout.grid):
        for t, frame in enumerate(row):
            wanted[frame.path].append((z, t, frame))
    pixels = {}
    for path in wanted:
        pixels[path] = _file_pixels(infos[path])
    frames = [f for row in layout.grid for f in row]
    dtype = _output_dtype(frames, {p.dtype.str for p in pixels.values()})
    out = np.empty((n_t, n_z, n_y, n_x), dtype=dtype)
    for path, items in wanted.items():
        stored = pixels[path]
        for z, t, frame in items:
            index = frame.tile if frame.tile >= 0 else frame.index
            if index >= stored.shape[0] or stored.shape[1:] != (n_y, n_x):
                raise CaseError(f"{path}: pixel data has shape {stored.shape}, expected frame {index + 1} "
                                f"of {n_y}x{n_x}")
            plane = stored[index]
            if frame.slope != 1.0 or frame.intercept != 0.0:
                if dtype == np.int32:
                    plane = plane.astype(np.int32) * int(frame.slope) + int(frame.intercept)
                else:
                    plane = plane.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
            out[t, z] = plane
    # (T, Z, rows, cols) -> (cols, rows, Z, T) = (X, Y, Z, T)
    return _narrow(out.transpose(3, 2, 1, 0))


# ----------------------------------------------------------------------------- public reading


def scrub(text: str, identifiers: Iterable[str]) -> str:
    """`text` with every patient identifier replaced by '<redacted>'."""
    for value in sorted(set(identifiers), key=len, reverse=True):
        if value:
            text = text.replace(value, "<redacted>")
    return text


def read_stack(paths: List[str], key: Optional[tuple] = None,
               allow_4d: bool = True) -> Tuple[Volume, Layout]:
    """Reads one stack of DICOM files into a canonical Volume.

    Args:
      paths: files holding the stack (one file per slice, enhanced multi-frame files, mosaics).
      key: the SeriesKey from scan_tree when the files hold several stacks (e.g. two echoes);
        None when they hold exactly one.
      allow_4d: when False, a multi-volume series raises CaseError before any pixel is decoded.
    Returns:
      (Volume, Layout). Volume: array (X, Y, Z) or, for a multi-volume series, (X, Y, Z, T);
      modality values (HU for CT); affine voxel -> RAS mm. meta holds 'volumes', 'stack'
      (description), 'site', 'series_uid', 'study_uid'. Layout: the stack as acquired (the
      frame at each slice, the native grid's LPS affine), before canonical reorientation.
    Raises CaseError for: single slices, gantry tilt, non-uniform spacing or missing slices,
    incomplete 4D series, mixed stacks without a key, undecodable pixels, non-image files.
    Messages never contain patient names, IDs or birth dates.
    """
    where = os.path.dirname(paths[0]) if paths else "?"
    stacks, rejected, infos = scan_files(list(paths))
    identifiers = {v for info in infos.values() for v in info.identifiers}
    try:
        if rejected:
            raise CaseError(rejected[0][1])
        if key is not None:
            key = SeriesKey(*key)
            if key not in stacks:
                raise CaseError(f"{where}: the files hold no stack {describe(key)}")
            chosen = key
        elif len(stacks) == 1:
            chosen = next(iter(stacks))
        else:
            raise CaseError(f"{where}: the files hold {len(stacks)} image stacks ("
                            + "; ".join(describe(k) for k in stacks) + "); pick one")
        frames = stacks[chosen]
        first_info = infos[frames[0].path]
        layout = stack_layout(frames, where, first_info.meta.get("gantry_tilt", 0.0))
        n_volumes = layout.shape[3]
        if n_volumes > 1 and not allow_4d:
            raise CaseError(f"{where}: 4D series with {n_volumes} volumes ({describe(chosen)}); "
                            "ingestion takes 3D volumes (medtfx convert writes the 4D NIfTI)")
        array = _fill_pixels(layout, infos)
    except CaseError as exc:
        raise CaseError(scrub(str(exc), identifiers)) from None
    if n_volumes == 1:
        array = array[..., 0]
    array, affine = to_canonical(array, LPS_TO_RAS @ layout.affine_lps)
    meta = first_info.meta
    return Volume(
        array=array, affine=affine, modality=meta["modality"],
        patient_id=first_info.patient_id, source=where,
        meta={"site": meta["manufacturer"] or "unknown", "series_uid": meta["series_uid"],
              "study_uid": meta["study_uid"], "volumes": n_volumes, "stack": describe(chosen)}), layout


def read_series(paths: List[str], key: Optional[tuple] = None, allow_4d: bool = True) -> Volume:
    """The Volume of :func:`read_stack` (same arguments and errors)."""
    return read_stack(paths, key, allow_4d)[0]


def list_stacks(dicom_dir: str) -> Tuple[List[Tuple[SeriesKey, List[str]]], List[Tuple[str, str]]]:
    """Image stacks under `dicom_dir` in a stable order (by first file), and the rejected files."""
    found, rejected = scan_tree(dicom_dir)
    stacks = sorted(found.items(), key=lambda kv: (kv[1][0], describe(kv[0])))
    return stacks, rejected


def convert(dicom_dir: str, output: str, series: Optional[int] = None) -> Volume:
    """`medtfx convert`: the stack under `dicom_dir` (the `series`-th, 1-based, when there are
    several) read as ingestion reads it, written to NIfTI `output`. 4D series are written 4D,
    like dcm2niix. Raises CaseError with the reason when there is nothing (or no one thing) to
    convert, or the stack is refused."""
    from modules.io.nifti_reader import write_nifti

    stacks, rejected = list_stacks(dicom_dir)
    if not stacks:
        detail = "; ".join(reason for _, reason in rejected[:5])
        raise CaseError(f"{dicom_dir} holds no DICOM image series" + (f" ({detail})" if detail else ""))
    if series is None and len(stacks) > 1:
        listing = "; ".join(f"{i}: {describe(k)} ({len(p)} files in "
                            f"{os.path.relpath(os.path.dirname(p[0]), dicom_dir)})"
                            for i, (k, p) in enumerate(stacks, 1))
        raise CaseError(f"{dicom_dir} holds {len(stacks)} image stacks; choose one with --series N: {listing}")
    index = 1 if series is None else series
    if not 1 <= index <= len(stacks):
        raise CaseError(f"--series {index}: {dicom_dir} holds {len(stacks)} image stack(s)")
    key, paths = stacks[index - 1]
    volume = read_series(paths, key)
    write_nifti(output, volume.array, volume.affine)
    return volume
