"""Where the frames of one stack go: slice order, volumes of a 4D series, and the voxel -> LPS affine.

Geometry follows the DICOM standard (C.7.6.2.1.1): voxel (c, r, s) lies at
    IPP_0 + c * PixelSpacing[1] * IOP_row + r * PixelSpacing[0] * IOP_col + s * slice_step
in LPS patient coordinates; LPS_TO_RAS flips x and y to get RAS+, as NIfTI and dcm2niix do.
Slices are sorted by the projection of ImagePositionPatient on the slice normal; frames repeating
a position are the volumes of a 4D series. Gantry tilt, non-uniform spacing (missing slices),
incomplete 4D series and mixed orientation or pixel spacing are refused, never resampled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, List, Tuple

import numpy as np

from modules.io import limits
from modules.io.dicom.frames import Frame
from modules.io.volume import CaseError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Relative deviation of slice gaps above which a series counts as non-uniform (missing slices).
SLICE_GAP_TOLERANCE = 0.01
# Frames closer than this along the normal (mm) are at the same slice position.
POSITION_TOLERANCE_MM = 0.01
# Largest in-plane drift of the slice origins per mm of stack height before we call it gantry
# tilt (~0.06 degrees); scanners' rounding stays well below.
TILT_TOLERANCE = 1e-3
# Orientation cosines that differ by less than this belong to the same stack.
ORIENTATION_TOLERANCE = 1e-3


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
    # Frames without a problem (all of them, from here on) have all of their geometry.
    assert first.iop is not None and first.pixel_spacing is not None
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
        raise CaseError(
            f"{where}: incomplete multi-volume series: {len(slices)} slice positions hold "
            f"between {counts[0]} and {counts[-1]} frames (missing or extra slices)"
        )
    n_volumes = counts[0]
    if len(slices) < 2:
        raise CaseError(
            f"{where}: series has a single slice position"
            + (f" repeated {n_volumes} times (a 2D time series)" if n_volumes > 1 else "")
            + "; a 3D volume needs at least two"
        )
    for members in slices:
        spread = np.ptp(positions[members], axis=0) if len(members) > 1 else np.zeros(3)
        if np.max(spread) > 0.1:
            raise CaseError(
                f"{where}: frames at the same slice position have different origins "
                f"({np.max(spread):.2f} mm apart): mixed stacks in one series"
            )
    grid = [[frames[i] for i in sorted(members, key=lambda i: frames[i].order)] for members in slices]
    stack_positions = np.array([row[0].ipp for row in grid])
    slice_distance = stack_positions @ normal
    height = slice_distance[-1] - slice_distance[0]
    drift = stack_positions[-1] - stack_positions[0] - height * normal
    # Judged on geometry: a GantryDetectorTilt tag with slices stacked along their normal is a
    # consistent volume (already corrected); sheared positions are not, tag or no tag.
    if np.linalg.norm(drift) > TILT_TOLERANCE * height:
        angle = math.degrees(math.atan2(np.linalg.norm(drift), height))
        raise CaseError(
            f"{where}: gantry tilt: slices are sheared by {angle:.2f} degrees "
            f"(GantryDetectorTilt {gantry_tilt:g}); refused rather than resampled"
        )
    # Every slice, not just the ends: one slice shifted in-plane leaves first and last aligned.
    along = slice_distance - slice_distance[0]
    line = stack_positions[0] + np.outer(along, normal) + np.outer(along / height, drift)
    offsets = np.linalg.norm(stack_positions - line, axis=1)
    worst = int(np.argmax(offsets))
    off_line_tolerance = max(POSITION_TOLERANCE_MM, 0.1 * min(first.pixel_spacing))
    if offsets[worst] > off_line_tolerance:
        raise CaseError(
            f"{where}: slice {worst + 1} of {len(slices)} ({grid[worst][0].path}) is "
            f"{offsets[worst]:.2f} mm off the line of the other slice positions "
            "(ImagePositionPatient not collinear)"
        )
    gaps = np.diff(slice_distance)
    step = height / (len(slices) - 1)
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - median)) > SLICE_GAP_TOLERANCE * median:
        missing = int(round(height / median)) + 1 - len(slices)
        hint = f"; {missing} missing slice(s)?" if missing > 0 else ""
        raise CaseError(
            f"{where}: non-uniform slice spacing (gaps {gaps.min():.3f}-{gaps.max():.3f} mm, "
            f"typical {median:.3f}){hint}"
        )
    for row in grid:
        for frame in row:
            assert frame.iop is not None and frame.pixel_spacing is not None
            if (
                np.max(np.abs(frame.iop - first.iop)) > ORIENTATION_TOLERANCE
                or abs(frame.pixel_spacing[0] - first.pixel_spacing[0]) > 1e-4
                or abs(frame.pixel_spacing[1] - first.pixel_spacing[1]) > 1e-4
            ):
                raise CaseError(f"{where}: slices have different orientation or pixel spacing")
    limits.check_size(f"{where}: series", (first.cols, first.rows, len(slices), n_volumes), 4)
    row_spacing, col_spacing = first.pixel_spacing
    origin = grid[0][0]
    assert origin.iop is not None
    affine = np.eye(4)
    affine[:3, 0] = origin.iop[:3] * col_spacing
    affine[:3, 1] = origin.iop[3:] * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = origin.ipp
    return Layout(grid, affine)
