"""Grouping frames into stacks, and picking one stack of a folder.

A stack is what can become one volume: frames of the same SeriesInstanceUID, orientation (within
ORIENTATION_TOLERANCE), echo, image type and matrix size, because one series may mix them
(dcm2niix splits the same way). A multi-frame file can contribute to several stacks (e.g. a
Philips magnitude and field map in one file). `medtfx convert` and `medtfx predict` number the
stacks of a folder in :func:`list_stacks` order and pick one with :func:`select_stack`.
"""

from __future__ import annotations

import collections
import os
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from modules.io import limits, storage
from modules.io.dicom.files import FileInfo, header_series_uid, read_file_info
from modules.io.dicom.frames import Frame
from modules.io.dicom.geometry import ORIENTATION_TOLERANCE
from modules.io.volume import CaseError

# Files never looked at as DICOM: labels, sidecars, manifests (the case finder handles them).
SKIPPED_SUFFIXES = (".nii", ".nii.gz", ".json", ".csv", ".txt", ".md", ".bval", ".bvec")


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
        except BaseException as exc:  # one hostile file must not stop the listing of the others
            if limits.is_fatal(exc):
                raise
            rejected.append((path, f"{path}: cannot be read: {limits.describe_error(exc)}"))
    stacks = _group_frames(f for info in infos.values() for f in info.frames)
    return stacks, rejected, infos


def list_files(root: str) -> List[str]:
    """Every file below `root` that could be DICOM (sorted; labels and sidecars left out)."""
    out: List[str] = []
    for dirpath, dirnames, filenames in storage.walk(root):
        dirnames.sort()
        out.extend(storage.join(dirpath, n) for n in sorted(filenames) if not _skipped(n))
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


def list_stacks(dicom_dir: str) -> Tuple[List[Tuple[SeriesKey, List[str]]], List[Tuple[str, str]]]:
    """Image stacks under `dicom_dir` in a stable order (by first file), and the rejected files."""
    found, rejected = scan_tree(dicom_dir)
    stacks = sorted(found.items(), key=lambda kv: (kv[1][0], describe(kv[0])))
    return stacks, rejected


def select_stack(
    stacks: Sequence[Tuple[SeriesKey, List[str]]],
    series: Optional[int],
    source: str,
    rejected: Sequence[Tuple[str, str]] = (),
) -> Tuple[SeriesKey, List[str]]:
    """The one stack of a folder that `medtfx convert` / `medtfx predict --series N` read.

    Args:
      stacks: the folder's stacks as :func:`list_stacks` returns them (that order is the numbering).
      series: 1-based number of the stack to read; None when the folder must hold exactly one.
      source: the folder, named in the messages.
      rejected: the (path, reason) pairs list_stacks rejected; the first few reasons are quoted
        when there is no stack at all.
    Returns:
      (key, paths) of the chosen stack.
    Raises:
      CaseError: the folder holds no image stack; it holds several and `series` is None (the
        message lists them numbered, with their file count and sub-folder); `series` is not in
        1..len(stacks).
    """
    if not stacks:
        detail = "; ".join(reason for _, reason in rejected[:5])
        raise CaseError(f"{source} holds no DICOM image series" + (f" ({detail})" if detail else ""))
    if series is None and len(stacks) > 1:
        listing = "; ".join(
            f"{i}: {describe(k)} ({len(p)} files in {storage.relpath(os.path.dirname(p[0]), source)})"
            for i, (k, p) in enumerate(stacks, 1)
        )
        raise CaseError(f"{source} holds {len(stacks)} image stacks; choose one with --series N: {listing}")
    index = 1 if series is None else series
    if not 1 <= index <= len(stacks):
        raise CaseError(f"{source}: --series {index} is out of range: the folder holds {len(stacks)} image stack(s)")
    problem = broken_members(stacks[index - 1][0], rejected, stacks[index - 1][1])
    if problem:
        raise CaseError(problem)
    return stacks[index - 1]


# Reasons of rejected files that mean "damaged DICOM" rather than "not an image" (SR, junk, ...).
_DAMAGE_MARKS = ("corrupt gzip", "truncated", "corrupt DICOM header", "corrupt header", "cannot be read")


def broken_members(key: SeriesKey, rejected: Sequence[Tuple[str, str]], paths: Sequence[str] = ()) -> Optional[str]:
    """Why a stack is incomplete: a rejected file (truncated, corrupt) whose header still names
    the stack's SeriesInstanceUID, or a damaged file whose series cannot be told in a folder of
    the stack's `paths`; without it the rest would read as a valid, shorter volume.
    None when no rejected file can belong to the series."""
    folders = {os.path.dirname(p) for p in paths}
    if not key.series_uid:
        return None
    for path, reason in rejected:
        uid = header_series_uid(path)
        if uid == key.series_uid:
            return f"a file of this series cannot be read, so the volume would be incomplete: {reason}"
        if not uid and any(mark in reason for mark in _DAMAGE_MARKS) and (os.path.dirname(path) in folders):
            return (
                f"a damaged DICOM file in the series' folder may belong to it, so the volume could be "
                f"incomplete: {reason}"
            )
    return None
