"""Reading one DICOM file: bytes (gzip allowed), header, what it is, and where its pixels are.

Classic uncompressed files (the bulk of any archive) are parsed by :mod:`.header`, a small
top-level tag reader; everything else (enhanced, mosaic, compressed, big endian, gzip, files
without the DICM preamble) by pydicom. Non-DICOM files, DICOMDIR and DICOM objects that are not
image volumes (SR, RTSTRUCT, spectroscopy, ...) are refused with CaseError naming the reason.
Parsed headers are cached per path and file stamp, so listing a tree and then reading a stack
parses each file once.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import os
import threading
from typing import List, Optional, Tuple

from modules.io.dicom import header
from modules.io.dicom.frames import Frame, _classic_frames, _enhanced_frames, _int, _num, _sop_name
from modules.io.volume import CaseError

# Storage classes whose instances carry image pixels that can form a volume (CT, MR, PET, NM,
# secondary capture: the latter are refused later when they lack geometry).
_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                       "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
                       "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.7")
_NOT_IMAGE_SOPS = ("1.2.840.10008.5.1.4.1.1.4.2",)  # MR spectroscopy (shares the MR prefix)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_GZIP_MAGIC = b"\x1f\x8b"


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


def _identifiers(ds) -> Tuple[str, ...]:
    out = []
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = str(ds.get(tag, "") or "").strip()
        if len(value) >= 3:
            out.append(value)
            out.extend(v for v in value.replace("^", " ").split() if len(v) >= 3)
    return tuple(dict.fromkeys(out))


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
    fast = None if gzipped else header.parse(data)
    if fast is not None and not fast.needs_pydicom:
        info = file_info_from_dataset(fast, path)
    else:
        info = file_info_from_dataset(_dcmread(data, path, header_only=False), path)
    if fast is not None and fast.pixel_dtype and info.frames and info.frames[0].tile < 0:
        # Uncompressed native pixels: read them straight from the file later.
        info.pixel_offset, info.pixel_dtype = fast.pixel_offset, fast.pixel_dtype
    return info
