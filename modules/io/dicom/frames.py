"""One DICOM header -> its frames: the 2D images it holds, each with its own geometry and rescale.

A classic file is one frame; a Siemens mosaic is cut into its tiles, each placed on its own slice;
an enhanced multi-frame file has one frame per item of its per-frame functional groups (falling
back to the shared groups). A frame that cannot be part of a volume (colour, no geometry, ...)
carries the reason in ``Frame.problem`` instead of raising, so the whole tree can still be listed.
Also the tolerant parsers of tag values (numbers, strings, ImageType) the other modules share.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np


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


def _sop_name(sop: str) -> str:
    from pydicom.uid import UID

    name = UID(sop).name
    return f"{name} ({sop})" if name and name != sop else f"SOP class {sop or 'missing'}"


# Direction cosines must have unit length and be orthogonal within this (scanners write ~6 decimals).
UNIT_TOLERANCE = 1e-3
# Rescale values beyond this are not physical (HU, SUV, MR signal): refused, not overflowed.
RESCALE_LIMIT = 1e9


def _common_problem(ds) -> Optional[str]:
    if _int(ds.get("SamplesPerPixel", 1), 1) != 1:
        return (
            f"colour image ({ds.get('PhotometricInterpretation', '')}, "
            f"{ds.get('SamplesPerPixel')} samples per pixel): not a grayscale cross-sectional slice"
        )
    if "Rows" not in ds or "Columns" not in ds:
        return "image without Rows/Columns"
    rows, cols = _int(ds.get("Rows", 0)), _int(ds.get("Columns", 0))
    if rows <= 0 or cols <= 0:
        return f"image has Rows={ds.get('Rows')} and Columns={ds.get('Columns')}: both must be positive"
    for name in ("RescaleSlope", "RescaleIntercept"):
        try:
            value = float(ds.get(name, 0) or 0)
        except (TypeError, ValueError):
            continue  # unreadable: the default applies, as for a missing tag
        if not math.isfinite(value) or abs(value) > RESCALE_LIMIT:
            return f"{name} {ds.get(name)} is not a plausible rescale value (limit {RESCALE_LIMIT:g})"
    return None


def geometry_problem(iop: Optional[np.ndarray], spacing: Optional[np.ndarray]) -> Optional[str]:
    """Why an ImageOrientationPatient (6,) / PixelSpacing (2,) pair cannot place a slice, or None:
    spacing must be positive, direction cosines unit length and orthogonal (else the affine would
    be scaled, sheared or mirrored silently)."""
    if spacing is not None and not np.all(spacing > 0):
        shown = "\\".join(f"{v:g}" for v in spacing)
        return f"PixelSpacing {shown} is not positive: the voxel size must be greater than 0 mm"
    if iop is not None:
        row, col = iop[:3], iop[3:]
        norms = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
        if max(abs(n - 1.0) for n in norms) > UNIT_TOLERANCE:
            return f"ImageOrientationPatient direction cosines have lengths {norms[0]:.4f} and {norms[1]:.4f}, not 1"
        dot = float(np.dot(row, col))
        if abs(dot) > UNIT_TOLERANCE:
            return (
                f"ImageOrientationPatient row and column directions are not orthogonal "
                f"(angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f} degrees)"
            )
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
        missing = [
            n
            for n, v in (("ImageOrientationPatient", iop), ("ImagePositionPatient", ipp), ("PixelSpacing", spacing))
            if v is None
        ]
        problem = (
            f"{_sop_name(str(ds.get('SOPClassUID', '')))} has no patient geometry "
            f"({', '.join(missing)}): not a slice of a volume"
        )
    if problem is None:
        problem = geometry_problem(iop, spacing)
    n_frames = _int(ds.get("NumberOfFrames", 1), 1)
    if problem is None and n_frames > 1:
        problem = f"multi-frame image ({n_frames} frames) without per-frame geometry"
    order = (
        _int(ds.get("TemporalPositionIdentifier", 0)),
        _int(ds.get("AcquisitionNumber", 0)),
        _int(ds.get("InstanceNumber", 0)),
        path,
    )
    base = Frame(
        path=path,
        index=0,
        rows=_int(ds.get("Rows", 0)),
        cols=_int(ds.get("Columns", 0)),
        iop=iop,
        ipp=ipp,
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        slope=_num(ds.get("RescaleSlope", 1), 1.0) or 1.0,
        intercept=_num(ds.get("RescaleIntercept", 0), 0.0),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        echo=_text(ds.get("EchoNumbers")),
        image_type=_image_type(ds.get("ImageType")),
        order=order,
        problem=problem,
    )
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
        base.problem = (
            f"Siemens mosaic of {base.cols}x{base.rows} pixels is not a {grid}x{grid} grid of "
            f"whole tiles for {n_tiles} images"
        )
        return [base]
    # Only frames without a problem get here, and those have all of their geometry.
    assert base.iop is not None and base.ipp is not None and base.pixel_spacing is not None
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
    origin = (
        base.ipp + row_dir * col_spacing * (base.cols - cols) / 2.0 + col_dir * row_spacing * (base.rows - rows) / 2.0
    )
    return [
        dataclasses.replace(base, rows=rows, cols=cols, tile=k, ipp=origin + k * step * normal) for k in range(n_tiles)
    ]


def _item(groups, name: str):
    """First item of functional group `name` from a per-frame item, else the shared one."""
    for group in groups:
        # .get: a pydicom Dataset and header.parse's items (dicts by keyword) alike.
        seq = group.get(name) if group is not None else None
        if seq:
            return seq[0]
    return None


def _enhanced_frames(ds, path: str) -> List[Frame]:
    """Frames of an enhanced multi-frame image from its Shared/PerFrame functional groups.

    `ds` is a pydicom Dataset or a header.Header (whose functional group items are dicts holding
    only what is read here); both give the same frames.
    """
    problem = _common_problem(ds)
    shared_items = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
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
        ftype = (
            _item(groups, "MRImageFrameTypeSequence")
            or _item(groups, "CTImageFrameTypeSequence")
            or _item(groups, "PETFrameTypeSequence")
        )
        ipp = _floats(position.get("ImagePositionPatient") if position else None, 3)
        iop = _floats(
            orientation.get("ImageOrientationPatient") if orientation else ds.get("ImageOrientationPatient"), 6
        )
        spacing = _floats(measures.get("PixelSpacing") if measures else ds.get("PixelSpacing"), 2)
        frame_problem = problem
        if frame_problem is None and (ipp is None or iop is None or spacing is None):
            frame_problem = f"enhanced image frame {i + 1} has no plane position, orientation or pixel spacing"
        if frame_problem is None:
            frame_problem = geometry_problem(iop, spacing)
            if frame_problem:
                frame_problem = f"enhanced image frame {i + 1}: {frame_problem}"
        source = transform if transform is not None else ds
        echo_label = ""
        if echo is not None and "EffectiveEchoTime" in echo:
            echo_label = f"TE={_num(echo.get('EffectiveEchoTime'), 0.0):g}"
        frame_type = ftype.get("FrameType") if ftype is not None else ds.get("ImageType")
        component = str(ftype.get("ComplexImageComponent", "") or "") if ftype is not None else ""
        image_type = _image_type(frame_type)
        if component and component not in image_type.split("\\"):
            image_type = "\\".join(p for p in (image_type, component) if p)
        order = (
            _int(content.get("TemporalPositionIndex", 0)) if content else 0,
            _int(content.get("FrameAcquisitionNumber", 0)) if content else 0,
            instance,
            path,
            i,
        )
        frames.append(
            Frame(
                path=path,
                index=i,
                rows=rows,
                cols=cols,
                iop=iop,
                ipp=ipp,
                pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
                slope=_num(source.get("RescaleSlope", 1), 1.0) or 1.0,
                intercept=_num(source.get("RescaleIntercept", 0), 0.0),
                series_uid=series_uid,
                echo=echo_label,
                image_type=image_type,
                order=order,
                problem=frame_problem,
            )
        )
    return frames
