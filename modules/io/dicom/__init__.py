"""DICOM files to canonical :class:`Volume` s: classic and enhanced multi-frame, Siemens mosaic, 3D and 4D.

How a tree of files becomes volumes, one module per step:
  file  -> frames (:mod:`.files`, :mod:`.frames`): one 2D image each, with its own geometry (a
           classic file is one frame, an enhanced multi-frame file has one per item of its
           per-frame functional groups, a Siemens mosaic is cut into its tiles);
  frames -> stacks (:mod:`.stacks`): grouped by SeriesInstanceUID, then split by orientation,
           echo, image type and matrix size, because one series may mix them (dcm2niix splits the
           same way);
  stack -> layout (:mod:`.geometry`): slice positions sorted along the slice normal by projection
           of ImagePositionPatient; frames repeating the positions are the volumes of a 4D series
           (fMRI, DWI), ordered by temporal position / acquisition / instance number; voxel -> LPS
           affine per the DICOM standard (C.7.6.2.1.1), flipped to RAS+ as NIfTI and dcm2niix do;
  layout -> voxels (:mod:`.pixels`): stored values become modality values with
           RescaleSlope/Intercept (per frame for enhanced files), so CT is in HU.
This module reads one stack end to end (:func:`read_stack`) and re-exports the public names of
the others. Defects are refused with a reason, never converted silently wrong: single slices,
gantry tilt, missing slices / non-uniform spacing, incomplete 4D series, colour or geometry-less
images, non-image objects, DICOMDIR, non-DICOM files. Messages never contain patient identifiers.

Speed: classic uncompressed files (the bulk of any archive) are parsed by :mod:`.header` (a small
top-level tag reader, checked against pydicom in the tests) from their first 64 KB, uncompressed
enhanced multi-frame files by the same reader (with the functional groups frames need), and their
pixels read straight from the file into the volume; everything else goes through pydicom, with
pylibjpeg / pyjpegls decoders and tensorflow-io (DCMTK) as the last resort for pixel data
pydicom cannot decode. Every voxel is written once, already rescaled, in its final dtype and in
canonical orientation (Fortran order, NIfTI's layout: `medtfx convert` writes it without a
copy). Compressed series are decoded by this process and a helper process per further core
at once (the decoders hold the GIL); `MEDTFX_DECODE_HELPERS=0` keeps decoding in-process.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, List, Optional, Tuple

from modules.io import limits, storage
from modules.io.dicom.files import (
    FileInfo,
    clear_cache,
    file_info_from_dataset,
    header_identifiers,
    identifiers_in,
    non_image_reason,
    read_file_info,
    read_header,
)
from modules.io.dicom.frames import Frame
from modules.io.dicom.geometry import (
    LPS_TO_RAS,
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_MM,
    SLICE_GAP_TOLERANCE,
    TILT_TOLERANCE,
    Layout,
    slice_normal,
    stack_layout,
)
from modules.io.dicom.pixels import _fill_canonical, decode_helpers, decode_pixels, stored_pixels
from modules.io.dicom.stacks import (
    SKIPPED_SUFFIXES,
    SeriesKey,
    broken_members,
    describe,
    list_files,
    list_stacks,
    scan_files,
    scan_tree,
    select_stack,
)
from modules.io.volume import CaseError, Volume

__all__ = [
    "FileInfo",
    "Frame",
    "Layout",
    "SeriesKey",
    "LPS_TO_RAS",
    "ORIENTATION_TOLERANCE",
    "POSITION_TOLERANCE_MM",
    "SLICE_GAP_TOLERANCE",
    "SKIPPED_SUFFIXES",
    "TILT_TOLERANCE",
    "broken_members",
    "check_duplicates",
    "clear_cache",
    "decode_helpers",
    "decode_pixels",
    "describe",
    "file_info_from_dataset",
    "header_identifiers",
    "identifiers_in",
    "list_files",
    "list_stacks",
    "non_image_reason",
    "read_file_info",
    "read_header",
    "read_series",
    "read_stack",
    "scan_files",
    "scan_tree",
    "scrub",
    "select_stack",
    "slice_normal",
    "stack_layout",
    "stored_pixels",
]


def scrub(text: str, identifiers: Iterable[str]) -> str:
    """`text` with every patient identifier replaced by '<redacted>'."""
    for value in sorted(set(identifiers), key=len, reverse=True):
        if value:
            text = text.replace(value, "<redacted>")
    return text


def check_duplicates(paths: List[str], infos: dict, where: str) -> None:
    """Refuses a stack holding the same image twice: files sharing a SOPInstanceUID, or
    byte-identical files (a copied series would otherwise pass as the volumes of a 4D series).

    Raises:
      CaseError: naming the first two files that are copies of each other and how many there are.
    """
    by_uid: dict = {}
    by_size: dict = {}
    for path in paths:
        uid = infos[path].meta.get("sop_uid", "")
        if uid:
            by_uid.setdefault(uid, []).append(path)
        else:
            by_size.setdefault(storage.size(path), []).append(path)
    copies = [group for group in by_uid.values() if len(group) > 1]
    if copies:
        raise CaseError(
            f"{where}: {sum(len(g) for g in copies)} files are copies of the same images "
            f"(duplicate SOPInstanceUID), e.g. {copies[0][0]} and {copies[0][1]}; "
            "remove the duplicates"
        )
    for group in by_size.values():
        if len(group) < 2:
            continue
        digests: dict = {}
        for path in group:
            digest = hashlib.sha256(storage.read_bytes(path)).hexdigest()
            if digest in digests:
                raise CaseError(
                    f"{where}: {digests[digest]} and {path} are byte-identical copies; remove the duplicates"
                )
            digests[digest] = path


def read_stack(paths: List[str], key: Optional[tuple] = None, allow_4d: bool = True) -> Tuple[Volume, Layout]:
    """Reads one stack of DICOM files into a canonical Volume.

    Args:
      paths: files holding the stack (one file per slice, enhanced multi-frame files, mosaics).
      key: the SeriesKey from scan_tree when the files hold several stacks (e.g. two echoes);
        None when they hold exactly one.
      allow_4d: when False, a multi-volume series raises CaseError before any pixel is decoded.
    Returns:
      (Volume, Layout). Volume: array (X, Y, Z) or, for a multi-volume series, (X, Y, Z, T),
      in canonical orientation (volume.to_canonical's voxels, dtype and affine) and Fortran
      order (NIfTI's layout: each voxel is written once, no reorienting copy); modality values
      (HU for CT); affine voxel -> RAS mm. meta holds 'volumes', 'stack'
      (description), 'site', 'series_uid', 'study_uid'. Layout: the stack as acquired (the
      frame at each slice, the native grid's LPS affine), before canonical reorientation.
    Raises CaseError for: single slices, gantry tilt, non-uniform spacing or missing slices,
    incomplete 4D series, mixed stacks without a key, undecodable pixels, non-image files.
    Messages never contain patient names, IDs or birth dates.
    """
    where = os.path.dirname(paths[0]) if paths else "?"
    stacks, rejected, infos = scan_files(list(paths))
    identifiers = {v for info in infos.values() for v in info.identifiers}
    identifiers |= identifiers_in(path for path, _ in rejected)
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
            raise CaseError(
                f"{where}: the files hold {len(stacks)} image stacks ("
                + "; ".join(describe(k) for k in stacks)
                + "); pick one"
            )
        frames = stacks[chosen]
        first_info = infos[frames[0].path]
        check_duplicates(sorted({f.path for f in frames}), infos, where)
        layout = stack_layout(frames, where, first_info.meta.get("gantry_tilt", 0.0))
        n_volumes = layout.shape[3]
        if n_volumes > 1 and not allow_4d:
            raise CaseError(
                f"{where}: 4D series with {n_volumes} volumes ({describe(chosen)}); "
                "ingestion takes 3D volumes (medtfx convert writes the 4D NIfTI)"
            )
        array, affine = _fill_canonical(layout, infos, LPS_TO_RAS @ layout.affine_lps)
    except CaseError as exc:
        raise CaseError(scrub(str(exc), identifiers)) from None
    except BaseException as exc:  # decoders of hostile bytes raise anything, native panics included
        if limits.is_fatal(exc):
            raise
        raise CaseError(
            scrub(f"{where}: the series cannot be read: {limits.describe_error(exc)}", identifiers)
        ) from None
    meta = first_info.meta
    return Volume(
        array=array,
        affine=affine,
        modality=meta["modality"],
        patient_id=first_info.patient_id,
        source=where,
        meta={
            "site": meta["manufacturer"] or "unknown",
            "series_uid": meta["series_uid"],
            "study_uid": meta["study_uid"],
            "volumes": n_volumes,
            "stack": describe(chosen),
        },
    ), layout


def read_series(paths: List[str], key: Optional[tuple] = None, allow_4d: bool = True) -> Volume:
    """The Volume of :func:`read_stack` (same arguments and errors)."""
    return read_stack(paths, key, allow_4d)[0]
