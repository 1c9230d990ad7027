"""Pixels of a laid-out stack: stored values decoded, cut from mosaics, rescaled to modality values.

Uncompressed native pixels are read straight from the file at the offset the header reader found;
everything else is decoded by pydicom (with the pylibjpeg / pyjpegls plugins), and pixel data
pydicom cannot decode by tensorflow-io (DCMTK) as the last resort. RescaleSlope/Intercept apply
per frame (enhanced files carry them per frame), so CT comes out in HU; the output dtype is
lossless and as compact as the values allow, chosen from each frame's extremes before the
volume is allocated, and the volume is filled once, straight in canonical orientation.
Compressed series of PARALLEL_MIN_FILES files or more are decoded by helper processes too.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import io
import math
import multiprocessing
import os
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

from modules.io import limits, storage
from modules.io.dicom.files import NATIVE_SYNTAXES, FileInfo, _dcmread, _read_bytes
from modules.io.dicom.frames import Frame, _int
from modules.io.dicom.geometry import Layout
from modules.io.volume import CaseError, canonical_grid, from_canonical


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


# Helper processes decode compressed pixels beside this one: pydicom's decoders (openjpeg,
# libjpeg, ...) hold the GIL, so threads would not run them in parallel. A series with fewer
# compressed files than this decodes in-process (a helper's start-up is ~0.5 s).
PARALLEL_MIN_FILES = 16
# Decode requests kept queued per helper, so it never waits for this process (which holds the
# GIL while it decodes files of its own) to hand it the next file.
_IN_FLIGHT = 2
# The environment a helper needs to apply the same limits as this process.
_LIMIT_VARIABLES = ("MEDTFX_MAX_VOXELS", "MEDTFX_MAX_BYTES")
_pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
_pool_size = 0
_pool_lock = threading.Lock()


def decode_helpers() -> int:
    """Helper processes that decode compressed pixels: MEDTFX_DECODE_HELPERS when set (0 turns
    them off), else one per CPU core beyond the first this process may run on."""
    value = os.environ.get("MEDTFX_DECODE_HELPERS", "")
    if value.strip().isdigit():
        return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(cores - 1, 0)


def _helper_pool(helpers: int) -> concurrent.futures.ProcessPoolExecutor:
    """The helpers, started once per process ('spawn': safe beside TensorFlow's and Beam's threads)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != helpers:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            _pool = concurrent.futures.ProcessPoolExecutor(helpers, mp_context=multiprocessing.get_context("spawn"))
            _pool_size = helpers
        return _pool


@atexit.register
def _stop_helpers() -> None:
    """Stops the helpers before the interpreter tears modules down (else the pool's clean-up
    runs after them and prints an error)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _drop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Forgets a pool whose helper died, so the next series starts a fresh one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _decode_in_helper(info: FileInfo, environment: Dict[str, str]) -> Tuple[Optional[np.ndarray], str]:
    """Runs in a helper process: (stored pixels (F, R, C), '') or (None, why they cannot be read).
    Every error becomes a message here, so nothing unpicklable (native panics) crosses back."""
    for name in _LIMIT_VARIABLES:
        if name in environment:
            os.environ[name] = environment[name]
        else:
            os.environ.pop(name, None)
    try:
        return _file_pixels(info), ""
    except CaseError as exc:
        return None, str(exc)
    except BaseException as exc:
        if limits.is_fatal(exc):
            raise
        return None, f"{info.path}: pixel data cannot be decoded ({limits.describe_error(exc)})"


def _needs_decoder(info: FileInfo) -> bool:
    """True when the file's pixels go through pydicom (compressed, mosaic, big endian, ...)."""
    return info.pixel_offset is None or not info.frames or info.frames[0].tile >= 0


def stored_pixels(files: List[FileInfo]) -> Dict[str, np.ndarray]:
    """Stored values (F, R, C) of each file, by path (mosaics: (tiles, tile rows, tile cols)).

    Raw uncompressed pixels are read here; compressed ones are decoded here and, for a series of
    PARALLEL_MIN_FILES or more, by the helper processes at the same time (this process takes
    files from the front, the helpers from the back, until none is left).

    Raises:
      CaseError: for the first file (in `files` order) whose pixels cannot be read or decoded.
    """
    out: Dict[str, np.ndarray] = {}
    errors: Dict[str, str] = {}
    compressed = [info for info in files if _needs_decoder(info)]
    helpers = decode_helpers() if len(compressed) >= PARALLEL_MIN_FILES else 0
    if helpers:
        todo = collections.deque(compressed)
        environment = {name: os.environ[name] for name in _LIMIT_VARIABLES if name in os.environ}
        pool = _helper_pool(helpers)
        feeders = [
            threading.Thread(target=_feed_helper, args=(pool, todo, environment, out, errors), daemon=True)
            for _ in range(helpers)
        ]
        for feeder in feeders:
            feeder.start()
        try:
            while not errors:
                try:
                    info = todo.popleft()
                except IndexError:
                    break
                _read_one(info, out, errors)
        finally:
            todo.clear()  # on an error or Ctrl-C the helpers stop after their current file
            for feeder in feeders:
                feeder.join()
    for info in files:
        if info.path not in out and info.path not in errors and not errors:
            _read_one(info, out, errors)
    for info in files:
        if info.path in errors:
            raise CaseError(errors[info.path])
    return out


def _read_one(info: FileInfo, out: Dict[str, np.ndarray], errors: Dict[str, str]) -> None:
    try:
        out[info.path] = _file_pixels(info)
    except CaseError as exc:
        errors[info.path] = str(exc)


def _feed_helper(
    pool: concurrent.futures.ProcessPoolExecutor,
    todo: "collections.deque[FileInfo]",
    environment: Dict[str, str],
    out: Dict[str, np.ndarray],
    errors: Dict[str, str],
) -> None:
    """Hands files from the back of `todo` to one helper, _IN_FLIGHT at a time, and stores what
    comes back. When the helper dies (it could not start, e.g. from an unguarded __main__, or a
    decoder crashed) its files are left to this process, which decodes them as it would without
    helpers, and the pool is replaced for the next series."""
    in_flight: "collections.deque[Tuple[FileInfo, concurrent.futures.Future]]" = collections.deque()
    broken = False
    while True:
        while not broken and len(in_flight) < _IN_FLIGHT and not errors:
            try:
                info = todo.pop()
            except IndexError:
                break
            try:
                in_flight.append((info, pool.submit(_decode_in_helper, info, environment)))
            except RuntimeError:  # the pool broke (or was shut down) meanwhile
                todo.append(info)
                broken = True
        if not in_flight:
            if broken:
                _drop_pool(pool)
            return
        info, future = in_flight.popleft()
        try:
            pixels, problem = future.result()
        except concurrent.futures.process.BrokenProcessPool:
            broken = True
            continue  # not in `out` nor `errors`: stored_pixels reads it itself
        if pixels is not None:
            out[info.path] = pixels
        else:
            errors[info.path] = problem


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


def _streamable(info: FileInfo) -> bool:
    """True for files whose stored pixels are raw native integers at a known offset."""
    return info.pixel_offset is not None and bool(info.pixel_dtype) and bool(info.frames) and info.frames[0].tile < 0


class _RawReader:
    """Reads the raw pixels of one file after another into the same buffer (see _fill_canonical)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)

    def read(self, info: FileInfo) -> np.ndarray:
        """(F, R, C) stored values of `info`'s file: a view of the buffer, valid until the next read.

        Raises:
          CaseError: the file cannot be read or holds fewer bytes than its header declared.
        """
        assert info.pixel_offset is not None and info.pixel_dtype
        frame = info.frames[0]
        dtype = np.dtype(info.pixel_dtype)
        needed = frame.rows * frame.cols * info.n_frames * dtype.itemsize
        if self._buffer.size < needed:
            self._buffer = np.empty(needed, np.uint8)
        view = self._buffer.data[:needed]
        try:
            got = storage.read_into(info.path, info.pixel_offset, view)
        except OSError as exc:
            raise CaseError(f"{info.path}: cannot be read ({exc.strerror or exc})") from None
        if got < needed:
            raise CaseError(
                f"{info.path}: pixel data is {got} bytes, the header implies {needed}: the file is truncated"
            )
        return self._buffer[:needed].view(dtype).reshape(info.n_frames, frame.rows, frame.cols)


def _narrow_dtype(compute: np.dtype, lo: int, hi: int) -> np.dtype:
    """The dtype integer voxels in [lo, hi] computed in `compute` are stored in: the smallest of
    int16/uint16/int32 that holds them (dcm2niix does too), float64 beyond; uint8 and non-integer
    types stay as they are."""
    if compute.kind not in "iu" or compute == np.uint8:
        return compute
    for dtype in (np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if lo >= info.min and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _modality_range(plane: np.ndarray, frame: Frame) -> Tuple[int, int]:
    """(lowest, highest) modality value of one integer-computed frame: its stored extremes
    through the integer rescale (a negative slope swaps them)."""
    lo, hi = int(plane.min()), int(plane.max())
    if frame.slope != 1.0 or frame.intercept != 0.0:
        lo, hi = lo * int(frame.slope) + int(frame.intercept), hi * int(frame.slope) + int(frame.intercept)
    return min(lo, hi), max(lo, hi)


def _put_plane(plane: np.ndarray, frame: Frame, compute: np.dtype, out: np.ndarray) -> None:
    """out[...] = modality values of one frame's stored `plane` (rows, cols).

    The values are those a whole-volume array of type `compute` would hold (integer rescale in
    int32/int64, fractional in float32), stored into `out`, whose dtype holds every value of the
    volume (see _narrow_dtype), so the result is exact. Integer values are computed directly in
    `out`'s integer type: numpy's integer arithmetic wraps modulo 2**bits, so stored value,
    slope and intercept taken modulo 2**bits give the exact result whenever it fits, without a
    wider temporary (half the memory traffic for CT).
    """
    if frame.slope == 1.0 and frame.intercept == 0.0:
        np.copyto(out, plane, casting="unsafe")
    elif compute.kind == "i" and plane.dtype.kind in "iu" and out.dtype.kind in "iu":
        wrap = out.dtype
        if frame.slope == 1.0:
            np.add(plane, np.array(int(frame.intercept)).astype(wrap), out=out, dtype=wrap, casting="unsafe")
        else:
            np.multiply(plane, np.array(int(frame.slope)).astype(wrap), out=out, dtype=wrap, casting="unsafe")
            out += np.array(int(frame.intercept)).astype(wrap)
    elif compute.kind == "i":
        values = plane.astype(compute)
        values *= int(frame.slope)
        values += int(frame.intercept)
        np.copyto(out, values, casting="unsafe")
    else:
        values = plane.astype(np.float32)
        values *= np.float32(frame.slope)
        values += np.float32(frame.intercept)
        np.copyto(out, values, casting="unsafe")


def _fill_canonical(
    layout: Layout, infos: Dict[str, FileInfo], affine_ras: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Modality values of a laid-out stack, written once straight into canonical (RAS+) order.

    Args:
      layout: the stack's frames (grid[z][t]); its columns, rows and slices are the native axes.
      infos: FileInfo of every file of the stack.
      affine_ras: (4, 4) voxel (column, row, slice) -> RAS mm of the native grid.
    Returns:
      (array, affine): array (X, Y, Z), or (X, Y, Z, T) for several volumes, equal voxel for voxel
      and in dtype to volume.to_canonical of the native (columns, rows, slices[, volumes]) array
      (int16/uint16/int32 for integer values, float32 for fractional rescale, ...); affine is
      to_canonical's. The array is Fortran-ordered: NIfTI's own layout, so writing it copies
      nothing; np.ascontiguousarray gives a C-ordered copy where one is needed.
    Raises:
      CaseError: the series is above the size limits (checked before allocation); a file's
        pixel data has fewer frames or another size than its header declared; undecodable pixels.
    """
    n_x, n_y, n_z, n_t = layout.shape
    wanted: Dict[str, List[Tuple[int, int, Frame]]] = collections.defaultdict(list)
    for z, row in enumerate(layout.grid):
        for t, frame in enumerate(row):
            wanted[frame.path].append((z, t, frame))
    # Raw uncompressed files are read twice into one small reused buffer (extremes first, then
    # the voxels) rather than held whole: page-cache reads into a cache-hot buffer cost less
    # than allocating and touching the whole series' bytes once more.
    streamed = {path for path in wanted if _streamable(infos[path])}
    pixels = stored_pixels([infos[path] for path in wanted if path not in streamed])
    raw = _RawReader()
    frames = [f for row in layout.grid for f in row]
    stored_types = {p.dtype.str for p in pixels.values()} | {np.dtype(infos[p].pixel_dtype).str for p in streamed}
    compute = _output_dtype(frames, stored_types)
    limits.check_size(f"{layout.grid[0][0].path}: series", (n_t, n_z, n_y, n_x), compute.itemsize)
    ranges: List[Tuple[int, int]] = []
    for path, items in wanted.items():
        stored = raw.read(infos[path]) if path in streamed else pixels[path]
        for _, _, frame in items:
            index = frame.tile if frame.tile >= 0 else frame.index
            if index >= stored.shape[0] or stored.shape[1:] != (n_y, n_x):
                raise CaseError(
                    f"{path}: pixel data has shape {stored.shape}, expected frame {index + 1} of {n_y}x{n_x}"
                )
            if compute.kind in "iu":
                ranges.append(_modality_range(stored[index], frame))
    lo, hi = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (0, 0)
    dtype = _narrow_dtype(compute, lo, hi) if ranges else compute
    canonical_shape, canonical_affine = canonical_grid(affine_ras, (n_x, n_y, n_z))
    full_shape = canonical_shape + ((n_t,) if n_t > 1 else ())
    # C order over the reversed axes is Fortran order over (X, Y, Z[, T]); the native view
    # (columns, rows, slices[, volumes]) of the same memory takes each frame where it belongs,
    # so the reorientation costs no copy of its own.
    canonical = np.empty(full_shape[::-1], dtype=dtype).T
    native = from_canonical(canonical, affine_ras)
    for path, items in wanted.items():
        stored = raw.read(infos[path]) if path in streamed else pixels[path]
        for z, t, frame in items:
            plane = stored[frame.tile if frame.tile >= 0 else frame.index]
            if path in streamed and compute.kind in "iu":
                frame_lo, frame_hi = _modality_range(plane, frame)
                if frame_lo < lo or frame_hi > hi:  # the cast below would wrap silently
                    raise CaseError(f"{path}: the file changed while it was being read")
            target = native[:, :, z, t] if n_t > 1 else native[:, :, z]
            _put_plane(plane, frame, compute, target.T)
    return canonical, canonical_affine
