"""Pixels of a laid-out stack: stored values decoded, cut from mosaics, rescaled to modality values.

Uncompressed native pixels are read straight from the file at the offset the header reader found;
everything else is decoded by pydicom (with the pylibjpeg / pyjpegls plugins), and pixel data
pydicom cannot decode by tensorflow-io (DCMTK) as the last resort. RescaleSlope/Intercept apply
per frame (enhanced files carry them per frame), so CT comes out in HU; the output dtype is
lossless and as compact as the values allow.
"""

from __future__ import annotations

import collections
import io
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from modules.io import limits, storage
from modules.io.dicom.files import NATIVE_SYNTAXES, FileInfo, _dcmread, _read_bytes
from modules.io.dicom.frames import Frame, _int
from modules.io.dicom.geometry import Layout
from modules.io.volume import CaseError


def _decode_with_tfio(ds, path: str, cause: BaseException) -> np.ndarray:
    """(F, R, C) stored values via tensorflow-io's DCMTK decoder, for pixel data pydicom cannot
    decode. DCMTK renders through the modality LUT, so that is stripped first; its output is
    then offset so the smallest storable value is 0, which we undo for signed data.

    Only encapsulated (compressed) pixel data reaches DCMTK, and its output must have exactly the
    frames, rows and columns the header declares: DCMTK pads short data and reinterprets
    mislabelled data, which would give a volume that looks valid but is wrong.
    """
    reason = limits.describe_error(cause)
    try:
        import tensorflow as tf
        import tensorflow_io as tfio
    except Exception as exc:  # pragma: no cover - tfio is a dependency
        raise CaseError(f"{path}: pixel data cannot be decoded ({reason}); tensorflow-io unavailable ({exc})") from None
    if str(ds.get("PhotometricInterpretation", "")) != "MONOCHROME2" or _int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CaseError(f"{path}: pixel data cannot be decoded ({reason})") from None
    rows, cols = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    n_frames = max(_int(ds.get("NumberOfFrames", 1), 1), 1)
    # DCMTK's uint32 output plus the int64 copy below: 12 bytes per voxel.
    limits.check_size(f"{path}: pixel data", (n_frames, rows, cols), 12)
    clean = ds.copy()
    for tag in (
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTSequence",
        "VOILUTFunction",
        "PresentationLUTShape",
    ):
        if tag in clean:
            delattr(clean, tag)
    buffer = io.BytesIO()
    try:
        clean.save_as(buffer, enforce_file_format=False)
        decoded = tfio.image.decode_dicom_image(
            tf.constant(buffer.getvalue()), dtype=tf.uint32, on_error="strict"
        ).numpy()
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        raise CaseError(
            f"{path}: pixel data cannot be decoded by pydicom ({reason}) nor DCMTK ({type(exc).__name__})"
        ) from None
    if decoded.shape[:3] != (n_frames, rows, cols):
        raise CaseError(
            f"{path}: pixel data cannot be decoded by pydicom ({reason}); DCMTK returned "
            f"{'x'.join(map(str, decoded.shape[:3]))} values for the declared "
            f"{n_frames}x{rows}x{cols}, so its result is not used"
        )
    values = decoded[..., 0].astype(np.int64)
    if _int(ds.get("PixelRepresentation", 0)) == 1:
        values -= 1 << (_int(ds.get("BitsStored", 16), 16) - 1)
    return values.astype(np.int32 if values.min() < 0 or values.max() > 65535 else np.uint16)


def _encapsulated(ds) -> bool:
    """True when the pixel data is compressed (a sequence of fragments), not stored raw."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in NATIVE_SYNTAXES:
        return False
    try:
        data = ds.PixelData
    except Exception:
        return False
    return bool(data) and data[:4] == b"\xfe\xff\x00\xe0"


def decode_pixels(ds, path: str) -> np.ndarray:
    """(F, R, C) stored pixel values of a dataset: pydicom (with pylibjpeg, pyjpegls plugins),
    else, for compressed data only, tensorflow-io (DCMTK).

    Raises:
      CaseError: neither decoder gives exactly the declared frames (corrupt fragments, truncated
        or mislabelled data). Native panics of a decoder are caught here too.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax and syntax not in NATIVE_SYNTAXES and "PixelData" in ds and not _encapsulated(ds):
        raise CaseError(
            f"{path}: the TransferSyntaxUID {syntax} says the pixel data is compressed, but "
            "it is stored raw: the header does not describe the data"
        )
    try:
        pixels = ds.pixel_array
    except BaseException as exc:  # pydicom's Rust decoders panic (a BaseException) on corrupt data
        if limits.is_fatal(exc):
            raise
        if type(exc).__name__ == "PanicException" or not _encapsulated(ds):
            raise CaseError(f"{path}: pixel data cannot be decoded ({limits.describe_error(exc)})") from None
        pixels = _decode_with_tfio(ds, path, exc)
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels


def _raw_pixels(info: FileInfo, count: int) -> Optional[np.ndarray]:
    """Pixels read straight from an uncompressed file, or None when that is not possible.

    Raises:
      CaseError: the file holds fewer bytes than the header declared (changed since it was listed).
    """
    if info.pixel_offset is None or not info.pixel_dtype:
        return None
    dtype = np.dtype(info.pixel_dtype)
    try:
        raw = storage.read_bytes(info.path, info.pixel_offset, count * dtype.itemsize)
    except OSError:
        return None
    if len(raw) < count * dtype.itemsize:
        raise CaseError(
            f"{info.path}: pixel data is {len(raw)} bytes, the header implies "
            f"{count * dtype.itemsize}: the file is truncated"
        )
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
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        raise CaseError(f"{info.path}: pixel data cannot be decoded ({limits.describe_error(exc)})") from None
    if frame.tile >= 0:
        return _cut_mosaic(pixels[0], len(info.frames), frame.rows, frame.cols, info.path)
    return pixels


def _cut_mosaic(mosaic: np.ndarray, n_tiles: int, rows: int, cols: int, path: str) -> np.ndarray:
    grid = int(math.ceil(math.sqrt(n_tiles)))
    if mosaic.shape[0] < grid * rows or mosaic.shape[1] < grid * cols:
        raise CaseError(f"{path}: mosaic {mosaic.shape} too small for {n_tiles} tiles of {rows}x{cols}")
    tiles = mosaic[: grid * rows, : grid * cols].reshape(grid, rows, grid, cols).transpose(0, 2, 1, 3)
    return tiles.reshape(grid * grid, rows, cols)[:n_tiles]


def _output_dtype(frames: List[Frame], raw_dtypes: set) -> np.dtype:
    """Lossless output type: native integers when no rescale, int32 for integer rescale (narrowed
    later), float32 when slope or intercept is fractional."""
    if all(f.slope == 1.0 and f.intercept == 0.0 for f in frames) and len(raw_dtypes) == 1:
        return np.dtype(next(iter(raw_dtypes))).newbyteorder("=")
    if all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames):
        # int32 only when no stored value can overflow it (numpy wraps integers silently).
        stored_max = (
            max(float(np.iinfo(np.dtype(d)).max) if np.dtype(d).kind in "iu" else 2.0**32 for d in raw_dtypes)
            if raw_dtypes
            else 2.0**32
        )
        bound = max(abs(f.slope) for f in frames) * stored_max + max(abs(f.intercept) for f in frames)
        return np.dtype(np.int32 if bound < 2**31 else np.int64)
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
    limits.check_size(f"{layout.grid[0][0].path}: series", (n_t, n_z, n_y, n_x), dtype.itemsize)
    out = np.empty((n_t, n_z, n_y, n_x), dtype=dtype)
    for path, items in wanted.items():
        stored = pixels[path]
        for z, t, frame in items:
            index = frame.tile if frame.tile >= 0 else frame.index
            if index >= stored.shape[0] or stored.shape[1:] != (n_y, n_x):
                raise CaseError(
                    f"{path}: pixel data has shape {stored.shape}, expected frame {index + 1} of {n_y}x{n_x}"
                )
            plane = stored[index]
            if frame.slope != 1.0 or frame.intercept != 0.0:
                if dtype.kind == "i":
                    plane = plane.astype(dtype) * int(frame.slope) + int(frame.intercept)
                else:
                    plane = plane.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
            out[t, z] = plane
    # (T, Z, rows, cols) -> (cols, rows, Z, T) = (X, Y, Z, T)
    return _narrow(out.transpose(3, 2, 1, 0))
