"""Spatial normalisation in pure TensorFlow: canonical orientation, resampling to a target
spacing, centre crop/pad to the network grid, and the exact inverse for serving.

The same ops run in Transform's graph and in the exported serving graph, so there is one
definition of "the network grid" (no TFX here: unit-testable, and timed by `medtfx bench resample`).

Grid convention (ITK/SimpleITK's: voxel i of an axis sits at origin + i * spacing mm):
resampling n voxels of spacing s (mm) to spacing t gives m = max(1, round(n * s / t)) voxels whose
centre is the input grid's centre, so output voxel j sits at input (continuous) index

    x(j) = (j - (m - 1) / 2) * t / s + (n - 1) / 2

(in SimpleITK terms: output origin = input origin + ((n - 1) * s - (m - 1) * t) / 2 along the
axis, same direction). The fixed-shape network grid of T voxels centre-crops/pads those m voxels:
network voxel k is resampled voxel j = k - offset with offset = trunc((T - m) / 2); voxels with j
outside [0, m - 1] are padding. Interpolation is separable (one axis at a time): 'linear'
(trilinear overall) clamps coordinates to [0, n - 1], i.e. replicates edge voxels for the at most
half a voxel the output grid can reach beyond the input's outermost voxel centres; 'nearest'
rounds half up, like ITK's nearest-neighbour interpolator.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

LINEAR = "linear"
NEAREST = "nearest"


# --- orientation ---------------------------------------------------------------------------------


def orientation(direction: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """How to bring voxel axes to canonical RAS+ order (as ingestion's volume.to_canonical does).

    Args:
      direction: (9,) float, row-major 3x3 direction cosines, column c = world direction of voxel
        axis c. All zeros means "unknown": treated as identity (already canonical).
    Returns:
      order: (3,) int32, canonical axis a is voxel axis order[a] (a transpose permutation).
      flip: (3,) bool, canonical axis a must be reversed after the transpose.
    Raises (at run time) InvalidArgumentError when two voxel axes point along the same world axis.
    """
    d = tf.reshape(tf.cast(direction, tf.float32), [3, 3])
    d = tf.where(tf.reduce_all(tf.equal(d, 0.0)), tf.eye(3), d)
    world_axis = tf.argmax(tf.abs(d), axis=0, output_type=tf.int32)  # per voxel axis
    sign = tf.gather_nd(d, tf.stack([world_axis, tf.range(3)], axis=1))
    order = tf.argsort(world_axis, stable=True)
    check = tf.debugging.assert_equal(
        tf.sort(world_axis),
        tf.range(3),
        message="volume orientation is degenerate: two voxel axes point along the same world axis",
    )
    with tf.control_dependencies([check]):
        order = tf.identity(order)
    return order, tf.less(tf.gather(sign, order), 0.0)


def _full_perm(order: tf.Tensor, rank: int) -> tf.Tensor:
    """Extends a (3,) spatial permutation with identity for trailing (channel) axes."""
    return tf.concat([order, tf.range(3, rank, dtype=order.dtype)], axis=0)


def to_canonical(volume: tf.Tensor, order: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """(X, Y, Z[, C]) in voxel order -> canonical RAS+ voxel order (transpose, then reverse)."""
    x = tf.transpose(volume, _full_perm(order, volume.shape.rank))
    return tf.reverse(x, tf.boolean_mask(tf.range(3), flip))


def from_canonical(volume: tf.Tensor, order: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Inverse of to_canonical: canonical (X', Y', Z'[, C]) -> the input's own voxel order."""
    x = tf.reverse(volume, tf.boolean_mask(tf.range(3), flip))
    return tf.transpose(x, _full_perm(tf.argsort(order), volume.shape.rank))


# --- grid geometry -------------------------------------------------------------------------------


def as_float64(x) -> tf.Tensor:
    """float64 tensor; Python/numpy values convert directly (a detour through float32 would
    move 0.8 mm to 0.800000012 mm and can flip a rounding)."""
    if isinstance(x, (tf.Tensor, tf.Variable)):
        return tf.cast(x, tf.float64)
    return tf.constant(np.asarray(x, dtype=np.float64))


def resampled_shape(shape: tf.Tensor, spacing: tf.Tensor, target_spacing: tf.Tensor) -> tf.Tensor:
    """(3,) int32 voxels m = max(1, round(n * s / t)) covering the same field of view at spacing t."""
    m = tf.round(as_float64(shape) * as_float64(spacing) / as_float64(target_spacing))
    return tf.cast(tf.maximum(m, 1.0), tf.int32)


def crop_pad_offset(m: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Network index k = resampled index j + offset; offset = trunc((size - m) / 2), int32."""
    return tf.truncatediv(tf.cast(size, tf.int32) - tf.cast(m, tf.int32), 2)


def forward_coordinates(n, s, t, m, size, offset) -> Tuple[tf.Tensor, tf.Tensor]:
    """One axis, network grid -> input grid.

    Args: n input voxels, s input spacing, t target spacing (mm), m resampled voxels, size network
      voxels along the axis, offset from crop_pad_offset (scalars).
    Returns: (coords (size,) float64 continuous input indices, valid (size,) bool: not padding).
    """
    j = tf.cast(tf.range(size), tf.float64) - as_float64(offset)
    m = as_float64(m)
    coords = (j - (m - 1.0) / 2.0) * (as_float64(t) / as_float64(s)) + (as_float64(n) - 1.0) / 2.0
    return coords, tf.logical_and(j >= 0.0, j <= m - 1.0)


def inverse_coordinates(n, s, t, m, size, offset) -> Tuple[tf.Tensor, tf.Tensor]:
    """One axis, input grid -> network grid (the exact inverse of forward_coordinates).

    Returns: (coords (n,) float64 continuous network indices, valid (n,) bool: the input voxel
      lies within the network grid (False where the crop cut it away)).
    """
    i = tf.cast(tf.range(n), tf.float64)
    m = as_float64(m)
    k = (i - (as_float64(n) - 1.0) / 2.0) * (as_float64(s) / as_float64(t)) + (m - 1.0) / 2.0 + as_float64(offset)
    size = as_float64(size)
    return k, tf.logical_and(k >= -0.5, k <= size - 0.5)


# --- interpolation -------------------------------------------------------------------------------


def resample_first_axis(x: tf.Tensor, coords: tf.Tensor, method: str = LINEAR) -> tf.Tensor:
    """Interpolates along axis 0 of x (n, ...) at continuous indices coords (k,) -> (k, ...).

    Gathers along the outermost axis copy contiguous slices, which is why the 3D resampler
    rotates axes to the front instead of gathering along inner axes.
    """
    n = tf.shape(x, out_type=tf.int64)[0]
    last = tf.cast(n - 1, tf.float64)
    c = tf.clip_by_value(coords, 0.0, last)
    if method == NEAREST:
        return tf.gather(x, tf.cast(tf.floor(c + 0.5), tf.int64))
    if method != LINEAR:
        raise ValueError(f"unknown interpolation {method!r}; use 'linear' or 'nearest'")
    i0 = tf.minimum(tf.floor(c), tf.maximum(last - 1.0, 0.0))
    w = tf.cast(c - i0, x.dtype)
    i0 = tf.cast(i0, tf.int64)
    i1 = tf.minimum(i0 + 1, n - 1)
    w = tf.reshape(w, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))
    a = tf.gather(x, i0)
    return a + (tf.gather(x, i1) - a) * w


def resample_separable(
    volume: tf.Tensor, coords: Sequence[tf.Tensor], valid: Sequence[tf.Tensor], method: str = LINEAR, fill=0.0
) -> tf.Tensor:
    """Separable 3D resampling.

    Args:
      volume: (X, Y, Z) or (X, Y, Z, C) float32.
      coords: three (k_a,) float64 continuous input indices, one per spatial axis.
      valid: three (k_a,) bool; output voxels where any axis is invalid get `fill`.
      fill: scalar, or (C,) per channel.
    Returns (k_0, k_1, k_2[, C]) float32.
    """
    x = volume
    rank = volume.shape.rank
    rotate = [1, 2, 0] + list(range(3, rank))  # brings the next spatial axis to the front
    fill = tf.cast(fill, x.dtype)
    for axis in range(3):
        x = resample_first_axis(x, coords[axis], method)
        keep = tf.reshape(valid[axis], tf.concat([[-1], tf.ones([rank - 1], tf.int32)], axis=0))
        # Padding is the exception (whole volumes, most crops): skip a full pass when there is none.
        x = tf.cond(tf.reduce_all(valid[axis]), lambda x=x: x, lambda x=x, keep=keep: tf.where(keep, x, fill))
        x = tf.transpose(x, rotate)
    return x


# --- whole pipeline steps ------------------------------------------------------------------------


def to_network_grid(
    volume: tf.Tensor,
    spacing: tf.Tensor,
    target_spacing: tf.Tensor,
    size: Optional[tf.Tensor] = None,
    method: str = LINEAR,
    fill=0.0,
):
    """Canonical (X, Y, Z[, C]) volume at `spacing` -> network grid at `target_spacing`.

    Args:
      size: (3,) network grid voxels (centre crop/pad), or None to keep the whole resampled
        volume (m voxels per axis; for sliding-window inference).
    Returns: (resampled (size or m)[, C] float32, m (3,) int32).
    """
    shape = tf.shape(volume)[:3]
    m = resampled_shape(shape, spacing, target_spacing)
    size = m if size is None else tf.cast(size, tf.int32)
    offset = crop_pad_offset(m, size)
    axes = [forward_coordinates(shape[a], spacing[a], target_spacing[a], m[a], size[a], offset[a]) for a in range(3)]
    out = resample_separable(tf.cast(volume, tf.float32), [c for c, _ in axes], [v for _, v in axes], method, fill)
    return out, m


def from_network_grid(
    values: tf.Tensor,
    shape: tf.Tensor,
    spacing: tf.Tensor,
    target_spacing: tf.Tensor,
    m: tf.Tensor,
    method: str = LINEAR,
    fill=0.0,
):
    """Inverse of to_network_grid: network (T0, T1, T2[, C]) -> canonical input grid `shape`.

    Args:
      shape, spacing: the canonical input grid (3,); m: resampled_shape() of it.
      fill: value for input voxels the crop cut away (scalar or (C,)).
    Returns (X, Y, Z[, C]) float32.
    """
    shape = tf.cast(shape, tf.int32)
    size = tf.shape(values)[:3]
    offset = crop_pad_offset(m, size)
    axes = [inverse_coordinates(shape[a], spacing[a], target_spacing[a], m[a], size[a], offset[a]) for a in range(3)]
    return resample_separable(tf.cast(values, tf.float32), [c for c, _ in axes], [v for _, v in axes], method, fill)
