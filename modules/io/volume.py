"""A 3D volume with its world geometry, and the pure geometry helpers the readers share.

Convention (nibabel's): ``array[i, j, k]`` is voxel (i, j, k); ``affine`` (4x4, mm) maps
voxel indices to RAS+ world coordinates. After :func:`to_canonical` the voxel axes point
as close as possible to +R, +A, +S.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence, Tuple

import numpy as np


class CaseError(Exception):
    """A case cannot be ingested; the message says why, in words a person understands."""


@dataclasses.dataclass
class Volume:
    """Voxels plus geometry.

    Attributes:
      array: (X, Y, Z) voxel values, native dtype (int16 for CT in HU, uint8/int16/float32 MR);
        (X, Y, Z, T) for a multi-volume DICOM series (fMRI, DWI), which only `medtfx convert`
        writes: ingestion quarantines 4D.
      affine: (4, 4) float64 voxel-to-RAS+ world transform in mm.
      modality: DICOM-style modality code, 'CT', 'MR', ... ('' when unknown).
      patient_id: the patient identifier as found in the source (never stored; only hashed).
      source: human-readable description of where it came from (paths), for reports.
      meta: extra non-identifying metadata (manufacturer, site, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    patient_id: str = ""
    source: str = ""
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in mm along each array axis."""
        return spacing_from_affine(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """(3,) RAS+ world position (mm) of voxel (0, 0, 0)."""
        return np.asarray(self.affine[:3, 3], dtype=np.float64)

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors: world direction of each array axis."""
        return self.affine[:3, :3] / self.spacing[np.newaxis, :]


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """(3,) voxel size in mm: the norms of the affine's first three columns."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def axis_codes(affine: np.ndarray) -> tuple:
    """For each array axis, the index (0=R, 1=A, 2=S) of the world axis it is closest to,
    and the sign (+1/-1) of that direction. Returns (world_axis[3], sign[3])."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    world_axis = np.argmax(np.abs(direction), axis=0)
    if len(set(world_axis.tolist())) != 3:
        raise CaseError("volume orientation is degenerate: two voxel axes point the same way")
    sign = np.sign(direction[world_axis, np.arange(3)])
    return world_axis, sign


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple:
    """Reorder and flip voxel axes so they point along +R, +A, +S (closest), keeping geometry.

    Args:
      array: (X, Y, Z[, ...]) voxels.
      affine: (4, 4) voxel-to-RAS mm.
    Returns:
      (array', affine') describing the same world content.
    Pure index arithmetic (nibabel.orientations), no resampling: voxel values are exactly
    preserved. The axis choice is `axis_codes` (largest direction component), the rule the
    serving graph applies too (modules/transform/resample.orientation); nibabel's own
    `io_orientation` can choose differently for strongly oblique scans.

    Raises:
      CaseError: two voxel axes point along the same world axis.
    """
    from nibabel import orientations

    affine = np.asarray(affine, dtype=np.float64)
    transform = orientations.ornt_transform(_orientation(affine), orientations.axcodes2ornt("RAS"))
    canonical = orientations.apply_orientation(array, transform)
    return np.ascontiguousarray(canonical), canonical_grid(affine, array.shape[:3])[1]


def canonical_grid(affine: np.ndarray, shape) -> tuple:
    """The grid `to_canonical` turns a (X, Y, Z) grid with `affine` (4, 4) into, without voxels:
    (shape' (3,) tuple, affine' (4, 4)). Lets a reader allocate the canonical array and fill it
    once (see from_canonical for the matching native view) instead of copying a native one.

    Raises:
      CaseError: two voxel axes point along the same world axis.
    """
    from nibabel import orientations

    affine = np.asarray(affine, dtype=np.float64)
    transform = orientations.ornt_transform(_orientation(affine), orientations.axcodes2ornt("RAS"))
    new_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
    return new_shape, affine @ orientations.inv_ornt_aff(transform, tuple(shape[:3]))


def from_canonical(array: np.ndarray, native_affine: np.ndarray) -> np.ndarray:
    """Inverse of `to_canonical`: (X', Y', Z'[, ...]) canonical voxels -> the voxel order of a grid
    with `native_affine` (4, 4). Pure axis permutation/flips (nibabel.orientations), exact; the
    result is a view of `array` (writing into it writes the canonical array).

    Raises:
      CaseError: two voxel axes of native_affine point along the same world axis.
    """
    from nibabel import orientations

    transform = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), _orientation(native_affine))
    return orientations.apply_orientation(array, transform)


def _orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel's orientation array of `affine` by the `axis_codes` rule: per array axis, (world
    axis, +1/-1)."""
    world_axis, sign = axis_codes(affine)
    return np.stack([world_axis, sign], axis=1).astype(np.float64)


def split_channel_suffix(stem: str) -> Tuple[str, Optional[int]]:
    """nnU-Net's channel naming of image files: '<case>_0001' -> ('<case>', 1); a stem without a
    '_' + 4-digit suffix -> (stem, None)."""
    if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
        return stem[:-5], int(stem[-4:])
    return stem, None


def stack_channels(channels: Sequence[Volume], names: Sequence[str], tolerance_mm: float) -> np.ndarray:
    """(X, Y, Z, C) voxels of one case from its C single-channel volumes, in order (one common
    dtype). names: what to call each channel in a message (its file).

    Raises:
      CaseError naming the channel: its shape differs from channel 0's, or its affine maps a
        corner more than `tolerance_mm` away: a case's channels must share one grid.
    """
    first = channels[0]
    for name, channel in zip(names[1:], channels[1:]):
        if channel.array.shape != first.array.shape:
            raise CaseError(
                f"{name}: shape {channel.array.shape} differs from {names[0]}'s {first.array.shape}: "
                "a case's channels must share one grid"
            )
        if not affines_match(channel.affine, first.affine, tolerance_mm, first.array.shape):
            raise CaseError(
                f"{name}: geometry (affine) differs from {names[0]}'s by more than {tolerance_mm:g} mm: "
                "a case's channels must share one grid"
            )
    dtype = np.result_type(*[c.array.dtype for c in channels])
    return np.stack([c.array.astype(dtype, copy=False) for c in channels], axis=-1)


def salted_hash(value: str, salt: str, length: int = 16) -> str:
    """Irreversible pseudonym for a patient identifier: hex SHA-256 of salt + value."""
    return hashlib.sha256((salt + "\x00" + value).encode("utf-8")).hexdigest()[:length]


def affines_match(a: np.ndarray, b: np.ndarray, tol_mm: float = 1e-3, shape=None) -> bool:
    """True when two affines place every corner of a grid of `shape` within tol_mm of each other."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if shape is None:
        return bool(np.allclose(a, b, atol=tol_mm))
    corners = np.array(
        [[x, y, z, 1.0] for x in (0, shape[0] - 1) for y in (0, shape[1] - 1) for z in (0, shape[2] - 1)]
    )
    return bool(np.max(np.abs(corners @ a.T - corners @ b.T)) <= tol_mm)


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """Store voxels in the smallest lossless dtype of {uint8, int16, float32}.

    Integer-valued float volumes (common in NIfTI exports) become int16 so raw bytes are halved.
    Raises CaseError on NaN/Inf, non-real voxels (complex, structured) and values beyond float32.
    """
    if array.dtype == np.uint8 or array.dtype == np.int16:
        return array
    if not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_
    ):
        raise CaseError(f"image voxels are of type {array.dtype}, not real numbers")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise CaseError("image contains NaN or Inf voxels")
    if array.size == 0:
        raise CaseError("image is empty")
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize > 4:
        largest = float(np.max(np.abs(array)))
        if largest > float(np.finfo(np.float32).max):
            raise CaseError(
                f"image values up to {largest:.3g} do not fit 32-bit floats (largest "
                f"{float(np.finfo(np.float32).max):.3g}); they would become infinite"
            )
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
    if integral and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16)
    return array.astype(np.float32)


def label_values_ok(label: np.ndarray, allowed: Optional[set]) -> Optional[str]:
    """None if the label map is integer-valued and within `allowed`, else the problem in words."""
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)):
            return "label contains NaN or Inf"
        if not np.all(np.mod(label, 1) == 0):
            return "label has non-integer values"
    values = set(np.unique(label).astype(np.int64).tolist())
    if allowed is not None and not values <= allowed:
        return f"label values {sorted(values - allowed)} are not in the declared label set {sorted(allowed)}"
    return None
