"""Reading one DICOM file: bytes (gzip allowed), header, what it is, and where its pixels are.

Classic and enhanced uncompressed files (the bulk of any archive) are parsed by :mod:`.header`,
a small tag reader; everything else (mosaic, compressed, big endian, gzip, odd functional groups, files
without the DICM preamble) by pydicom. Non-DICOM files, DICOMDIR and DICOM objects that are not
image volumes (SR, RTSTRUCT, spectroscopy, ...) are refused with CaseError naming the reason.
Parsed headers are cached per path and file stamp, so listing a tree and then reading a stack
parses each file once.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import threading
from typing import Iterable, List, Optional, Tuple

from modules.io import limits, storage
from modules.io.dicom import header
from modules.io.dicom.frames import Frame, _classic_frames, _enhanced_frames, _int, _num, _sop_name
from modules.io.volume import CaseError

# Storage classes whose instances carry image pixels that can form a volume (CT, MR, PET, NM,
# secondary capture: the latter are refused later when they lack geometry).
_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.130",
    "1.2.840.10008.5.1.4.1.1.7",
)
_NOT_IMAGE_SOPS = ("1.2.840.10008.5.1.4.1.1.4.2",)  # MR spectroscopy (shares the MR prefix)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# Transfer syntaxes whose pixel data is stored raw, so its length follows from the header.
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
# Patient identity tags, gathered from every readable header only to scrub them from messages.
IDENTITY_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")
# Enough of a file to hold its header (pixel data comes last).
_HEADER_BYTES = 1 << 20
# What is read first of every file: the whole of small files, the header of most others.
_PREFIX_BYTES = 1 << 16
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
    """(content, was_gzipped) of a regular file within the byte limit; .dcm.gz (any gzip stream)
    is decompressed with its CRC checked. Raises CaseError otherwise (see modules.io.limits)."""
    return limits.read_file(path)


def _dcmread(data: bytes, path: str, header_only: bool):
    """pydicom dataset from file content; files without the DICM preamble are accepted only when
    they parse into something with a SOP Class UID (old ACR-NEMA style exports)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only)
    except InvalidDicomError:
        pass
    except BaseException as exc:  # parsers of hostile bytes raise anything, native panics included
        if limits.is_fatal(exc):
            raise
        raise CaseError(f"{path}: not a DICOM file or corrupt header ({limits.describe_error(exc)})") from None
    try:
        # Judge the first MB only: a forced parse of a large non-DICOM file (zeros parse as
        # endless empty elements) would take minutes.
        probe = pydicom.dcmread(
            io.BytesIO(data[:_HEADER_BYTES]), stop_before_pixels=True, force=True, specific_tags=["SOPClassUID"]
        )
        sop = str(probe.get("SOPClassUID", "") or "")
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        sop = ""
    if not sop or not all(ch.isdigit() or ch == "." for ch in sop):
        raise CaseError(f"{path}: not a DICOM file")
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only, force=True)
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        raise CaseError(f"{path}: corrupt DICOM header ({limits.describe_error(exc)})") from None


def read_header(path: str):
    """The DICOM header of `path` (gzip allowed) without pixel data; CaseError if not DICOM."""
    data, _ = _read_bytes(path)
    return _dcmread(data, path, header_only=True)


def _identifiers(ds) -> Tuple[str, ...]:
    out = []
    for tag in IDENTITY_TAGS:
        try:
            value = str(ds.get(tag, "") or "").strip()
        except Exception:  # a damaged value must not stop the scrubbing of the others
            continue
        if len(value) >= 3:
            out.append(value)
            out.extend(v for v in value.replace("^", " ").replace("\\", " ").split() if len(v) >= 3)
    return tuple(dict.fromkeys(out))


def header_identifiers(path: str) -> Tuple[str, ...]:
    """Patient names, IDs and birth dates in the header of any DICOM object at `path` (images,
    SR, truncated files, anything whose header parses), for scrubbing; () when none can be read.
    Never raises except for Ctrl-C / exit."""
    hit = _cache_get(path)
    if hit is not None:
        return hit.identifiers
    ds = _tolerant_header(path, list(IDENTITY_TAGS))
    return _identifiers(ds) if ds is not None else ()


def header_series_uid(path: str) -> str:
    """SeriesInstanceUID in the header of any DICOM object at `path` (truncated, corrupt pixels,
    ...), '' when none can be read. Never raises except for Ctrl-C / exit."""
    ds = _tolerant_header(path, ["SeriesInstanceUID"])
    try:
        return str(ds.get("SeriesInstanceUID", "") or "") if ds is not None else ""
    except Exception:
        return ""


def _tolerant_header(path: str, tags: List[str]):
    """The header (fast reader or pydicom, `tags` at least) of the first MB of `path`, or None."""
    try:
        limits.check_regular_file(path)
        data = storage.read_bytes(path, 0, _HEADER_BYTES)
        if data[:2] == b"\x1f\x8b":
            data = _gunzip_head(data, path)
        fast = header.parse(data)
        if fast is not None:
            return fast
        import pydicom

        try:
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=tags)
        except BaseException as exc:
            if limits.is_fatal(exc):
                raise
        raw = _RawHeader({name: _raw_tag(data, *tag) for name, tag in _RAW_TAGS.items()})
        return raw if any(raw.values()) else None
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        return None


def _gunzip_head(data: bytes, path: str) -> bytes:
    """Up to _HEADER_BYTES decompressed bytes of a gzip file (for its header only): as much as
    inflates before any damage, so a corrupt .dcm.gz still shows whose and which series it is."""
    import zlib

    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = []
    total = 0
    for start in range(0, len(data), 4096):
        try:
            piece = inflater.decompress(data[start : start + 4096], _HEADER_BYTES - total)
        except zlib.error:
            break
        out.append(piece)
        total += len(piece)
        if total >= _HEADER_BYTES or inflater.eof:
            break
    return b"".join(out)


def _raw_tag(data: bytes, group: int, element: int) -> str:
    """The text value of a top-level tag found by its bytes (explicit or implicit little endian),
    '' when absent: the last resort for headers too damaged to parse."""
    import struct

    key = struct.pack("<HH", group, element)
    pos = data.find(key, 132 if data[128:132] == b"DICM" else 0)
    while pos >= 0 and pos + 8 <= len(data):
        vr = data[pos + 4 : pos + 6]
        if vr.isalpha() and vr.isupper():
            length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        else:
            length, start = struct.unpack_from("<I", data, pos + 4)[0], pos + 8
        if 0 < length <= 256 and start + length <= len(data):
            try:
                return data[start : start + length].rstrip(b"\x00 ").decode("ascii")
            except UnicodeDecodeError:
                pass
        pos = data.find(key, pos + 1)
    return ""


class _RawHeader(dict):
    """The few tags :func:`_raw_tag` recovers, readable like a Dataset (``get``)."""


_RAW_TAGS = {
    "PatientName": (0x0010, 0x0010),
    "PatientID": (0x0010, 0x0020),
    "PatientBirthDate": (0x0010, 0x0030),
    "OtherPatientIDs": (0x0010, 0x1000),
    "SeriesInstanceUID": (0x0020, 0x000E),
}


def identifiers_in(paths: Iterable[str]) -> set:
    """Every patient identifier in the readable DICOM headers among `paths` (see header_identifiers)."""
    found: set = set()
    for path in paths:
        found.update(header_identifiers(path))
    return found


def non_image_reason(ds, path: str) -> Optional[str]:
    """Why a DICOM object cannot be part of an image volume (DICOMDIR, SR, RTSTRUCT, ...), or None."""
    sop = str(
        ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPClassUID", "") or ""
    )
    if os.path.basename(path).upper() == "DICOMDIR" or sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        return "DICOMDIR index file, not an image"
    if sop.startswith(_NOT_IMAGE_SOPS) or (sop and not sop.startswith(_IMAGE_SOP_PREFIXES)):
        return f"DICOM object is not an image volume: {_sop_name(sop)}"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if sop.startswith(_IMAGE_SOP_PREFIXES):
            return (
                f"{_sop_name(sop)} header without pixel data: the file is truncated or its "
                "pixel data element is missing"
            )
        return f"DICOM object without pixel data: {_sop_name(sop)}"
    return None


def _meta(ds) -> dict:
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "sop_class": str(ds.get("SOPClassUID", "") or ""),
        "sop_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "gantry_tilt": _num(ds.get("GantryDetectorTilt", 0), 0.0),
    }


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
    return FileInfo(
        path=path,
        frames=frames,
        meta=_meta(ds),
        identifiers=_identifiers(ds),
        patient_id=str(ds.get("PatientID", "") or ""),
        n_frames=n_frames,
    )


# Header cache: scan_tree's parse is reused by read_series (convert reads every file once).
_CACHE_LIMIT = 50000
_cache: "collections.OrderedDict[str, Tuple[tuple, FileInfo]]" = collections.OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget cached headers (benchmarks measure cold reads)."""
    with _cache_lock:
        _cache.clear()


def _stat_key(path: str) -> tuple:
    return storage.version_key(path)


def _cache_get(path: str) -> Optional[FileInfo]:
    try:
        stamp = _stat_key(path)
    except OSError:
        return None
    with _cache_lock:
        hit = _cache.get(path)
    return hit[1] if hit is not None and hit[0] == stamp else None


def read_file_info(path: str) -> FileInfo:
    """Frames and pixel location of one file; CaseError for non-DICOM and non-image files.

    Classic and enhanced uncompressed files are parsed by the fast reader; anything it does not
    handle (mosaic, compressed, big endian, gzip, odd layouts) by pydicom.
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
    size = limits.check_regular_file(path)
    try:
        head = storage.read_bytes(path, 0, _PREFIX_BYTES)
    except OSError as exc:
        raise CaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    fast = None
    if len(head) < size and head[:2] != _GZIP_MAGIC:
        # The header from the file's start: for classic uncompressed files that is all that is
        # read here (the pixels go straight into the volume later); a header that reaches the
        # pixel data is the same as one parsed from the whole file.
        candidate = header.parse(head, size)
        if candidate is not None and candidate.reached_pixel_data:
            fast = candidate
    data, gzipped = head, False
    if fast is None or fast.needs_pydicom:
        if len(head) < size or head[:2] == _GZIP_MAGIC:
            data, gzipped = _read_bytes(path)
        if fast is None and not gzipped:
            fast = header.parse(data)
    if fast is not None and not fast.needs_pydicom:
        ds = fast
        info = file_info_from_dataset(fast, path)
        syntax = fast.transfer_syntax
        pixel_length: Optional[int] = fast.pixel_length
    else:
        ds = _dcmread(data, path, header_only=False)
        info = file_info_from_dataset(ds, path)
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        pixel_length = len(ds.PixelData) if "PixelData" in ds and ds.PixelData is not None else None
    _check_pixel_size(ds, info, syntax, pixel_length, path)
    if fast is not None and fast.pixel_dtype and info.frames and info.frames[0].tile < 0:
        # Uncompressed native pixels: read them straight from the file later.
        info.pixel_offset, info.pixel_dtype = fast.pixel_offset, fast.pixel_dtype
    return info


def expected_pixel_bytes(ds) -> Optional[int]:
    """Bytes of raw (native) pixel data that Rows x Columns x frames x samples x BitsAllocated
    imply, or None when the header does not say."""
    rows, cols = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    frames = max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    samples = max(_int(ds.get("SamplesPerPixel", 1), 1), 1)
    bits = _int(ds.get("BitsAllocated", 0))
    if rows <= 0 or cols <= 0 or bits <= 0:
        return None
    total_bits = rows * cols * frames * samples * bits
    return (total_bits + 7) // 8


def _zero_padding(ds, path: str, expected: int, length: int) -> bool:
    """True when native pixel data longer than the header implies only carries trailing zero
    bytes shorter than one frame (writers pad that way; pydicom drops them too). Longer or
    non-zero excess means the header misdescribes the data (wrong BitsAllocated, Rows, ...)."""
    frame_bytes = expected // max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    if not expected < length < expected + frame_bytes:
        return False
    if isinstance(ds, header.Header):
        tail = storage.read_bytes(path, (ds.pixel_offset or 0) + expected, length - expected)
    else:
        tail = bytes(ds.PixelData[expected:])
    return not tail.strip(b"\x00")


def _check_pixel_size(ds, info: FileInfo, syntax: str, pixel_length: Optional[int], path: str) -> None:
    """Refuses, before any pixel is decoded, files whose declared size is absurd and native pixel
    data whose length differs from what the header implies (truncated files, wrong
    BitsAllocated/Rows/Columns): such data would otherwise be padded or misread silently."""
    if not info.frames or any(f.problem for f in info.frames):
        return  # refused later with the frame's own reason
    rows, cols = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    frames = max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    bits = _int(ds.get("BitsAllocated", 16), 16)
    limits.check_size(f"{path}: pixel data", (frames, rows, cols), max(bits // 8, 1))
    if syntax not in NATIVE_SYNTAXES or pixel_length is None or "PixelData" not in ds:
        return
    expected = expected_pixel_bytes(ds)
    if expected is None:
        return
    if pixel_length != expected and not _zero_padding(ds, info.path, expected, pixel_length):
        problem = "the file is truncated" if pixel_length < expected else "BitsAllocated, Rows or Columns is wrong"
        raise CaseError(
            f"{path}: pixel data is {pixel_length} bytes but Rows x Columns x frames x "
            f"BitsAllocated ({rows} x {cols} x {frames} x {bits} bits) implies {expected}: "
            f"{problem}"
        )
