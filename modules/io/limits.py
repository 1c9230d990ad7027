"""Safe reading of untrusted files: regular files only, bounded sizes, gzip with its CRC checked.

Every reader goes through :func:`read_file` (whole small files) or :func:`check_regular_file`
(files read in place), and checks a header's declared sizes with :func:`check_size` before it
allocates anything, so a file of a few KB can never make the process allocate gigabytes.

Limits default to sizes that fit real CT (a 1024 x 1024 x 2048 volume, 4 GB of stored bytes)
and can be changed per process with the environment variables MEDTFX_MAX_VOXELS and
MEDTFX_MAX_BYTES, or per call by passing a :class:`Limits`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import zlib
from typing import Optional, Tuple

from modules.io import storage
from modules.io.volume import CaseError

DEFAULT_MAX_VOXELS = 1024 * 1024 * 2048
DEFAULT_MAX_BYTES = 4 * 1024**3
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """max_voxels: largest number of voxels of one volume (all frames, all volumes of a series);
    max_bytes: largest number of bytes one file may hold or decompress to, and one decoded
    volume may occupy."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


def current() -> Limits:
    """The limits in force: MEDTFX_MAX_VOXELS / MEDTFX_MAX_BYTES when set, else the defaults."""
    return Limits(_env_int("MEDTFX_MAX_VOXELS", DEFAULT_MAX_VOXELS), _env_int("MEDTFX_MAX_BYTES", DEFAULT_MAX_BYTES))


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def check_regular_file(path: str, limits: Optional[Limits] = None) -> int:
    """Size in bytes of `path` after checking that it is a regular file (a symlink is followed:
    a link to a device is refused) no larger than limits.max_bytes.

    Raises:
      CaseError: not a regular file (FIFO, device, socket, directory), missing, or too large.
    """
    limits = limits or current()
    if storage.is_remote(path):  # an object store has objects only: no pipes, devices or links
        return _check_object(path, limits)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a named pipe (FIFO)"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        raise CaseError(f"{path}: is {kind}, not a regular file; only regular files are read")
    if st.st_size > limits.max_bytes:
        raise CaseError(
            f"{path}: file is {_human(st.st_size)}, above the {_human(limits.max_bytes)} limit (MEDTFX_MAX_BYTES)"
        )
    return st.st_size


def _check_object(path: str, limits: Limits) -> int:
    """check_regular_file for an s3:// or gs:// object: its size, else CaseError."""
    try:
        size = storage.size(path)
    except FileNotFoundError:
        if storage.isdir(path):
            raise CaseError(f"{path}: is a directory, not a regular file; only regular files are read") from None
        raise CaseError(f"{path}: cannot be read (no such object)") from None
    except OSError as exc:
        raise CaseError(str(exc)) from None
    if size > limits.max_bytes:
        raise CaseError(
            f"{path}: file is {_human(size)}, above the {_human(limits.max_bytes)} limit (MEDTFX_MAX_BYTES)"
        )
    return size


def gunzip(data: bytes, path: str, limits: Optional[Limits] = None) -> bytes:
    """The decompressed content of a gzip stream (concatenated members allowed), checking each
    member's CRC-32 and length and stopping as soon as the output would pass limits.max_bytes.

    Raises:
      CaseError: corrupt stream, CRC or length mismatch, truncated, or too large once decompressed.
    """
    limits = limits or current()
    out: list = []  # chunks joined once at the end: a growing bytearray would copy (peak 2x)
    total = 0
    rest = data
    try:
        while rest:
            if rest[:2] != _GZIP_MAGIC:
                if rest.strip(b"\x00"):
                    raise CaseError(f"{path}: corrupt gzip file (trailing garbage after the compressed data)")
                break
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: zlib checks CRC and size
            chunk = rest
            while not inflater.eof:
                room = limits.max_bytes - total
                piece = inflater.decompress(chunk, max(1, min(_CHUNK, room + 1)))
                out.append(piece)
                total += len(piece)
                if total > limits.max_bytes:
                    raise CaseError(
                        f"{path}: gzip content is larger than the {_human(limits.max_bytes)} limit (MEDTFX_MAX_BYTES)"
                    )
                chunk = inflater.unconsumed_tail
                if not chunk and not piece:
                    break  # input used up without the end-of-stream marker
            if not inflater.eof:
                raise CaseError(f"{path}: corrupt gzip file (truncated: the compressed stream ends early)")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise CaseError(f"{path}: corrupt gzip file ({_zlib_reason(exc)})") from None
    return b"".join(out)


def _zlib_reason(exc: Exception) -> str:
    text = str(exc)
    if "incorrect data check" in text or "crc" in text.lower():
        return "checksum (CRC) mismatch: the content is damaged"
    if "incorrect length check" in text:
        return "length check mismatch: the content is damaged"
    return f"damaged compressed data: {text}"


def read_file(path: str, limits: Optional[Limits] = None) -> Tuple[bytes, bool]:
    """(content, was_gzipped) of a regular file; gzip content is decompressed with its CRC checked.

    Raises:
      CaseError: see :func:`check_regular_file` and :func:`gunzip`; unreadable files.
    """
    limits = limits or current()
    size = check_regular_file(path, limits)
    try:
        data = storage.read_bytes(path, 0, size + 1)
    except OSError as exc:
        raise CaseError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data[:2] == _GZIP_MAGIC:
        return gunzip(data, path, limits), True
    return data, False


def check_size(what: str, shape, itemsize: int, limits: Optional[Limits] = None) -> None:
    """Refuses a declared array of `shape` and `itemsize` bytes per value before it is allocated.

    Raises:
      CaseError: a dimension is not positive, or voxels / bytes exceed the limits.
    """
    limits = limits or current()
    dims = [int(n) for n in shape]
    if any(n <= 0 for n in dims):
        raise CaseError(f"{what}: declared size {'x'.join(map(str, dims))} has an empty dimension")
    voxels = 1
    for n in dims:
        voxels *= n
    if voxels > limits.max_voxels:
        raise CaseError(
            f"{what}: declared size {'x'.join(map(str, dims))} is {voxels} voxels, above the "
            f"{limits.max_voxels} limit (MEDTFX_MAX_VOXELS)"
        )
    if voxels * int(itemsize) > limits.max_bytes:
        raise CaseError(
            f"{what}: declared size {'x'.join(map(str, dims))} needs "
            f"{_human(voxels * int(itemsize))}, above the {_human(limits.max_bytes)} limit "
            "(MEDTFX_MAX_BYTES)"
        )


def is_fatal(exc: BaseException) -> bool:
    """True for the exceptions an error boundary must let through (Ctrl-C, sys.exit)."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def describe_error(exc: BaseException) -> str:
    """Plain words for an exception a decoder or parser raised (native panics included)."""
    name = type(exc).__name__
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, OverflowError):
        return f"a value is out of range ({text or name})"
    if name == "PanicException":
        return f"the decoder rejected the data as corrupt ({text or 'panic'})"
    if isinstance(exc, RecursionError):
        return "the data is nested too deeply to parse"
    return f"{text} ({name})" if text else name
