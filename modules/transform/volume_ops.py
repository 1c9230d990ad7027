"""Pure TensorFlow volume operations shared by Transform, the Trainer and the serving graph.

No TFX here, so each op is unit-testable. Volumes are (X, Y, Z) tensors in array order; batches
are (B, X, Y, Z). The per-case path raw voxels -> network grid is `to_network` (image) and
`label_to_network`; its inverse for predictions is `probabilities_to_mask`. Geometry lives in
modules.transform.resample.
"""

from __future__ import annotations

import tensorflow as tf

from modules.settings import INTENSITY_MODES
from modules.transform import resample

# Intensity normalisation modes (index = position; the graph gathers per-mode parameters by index):
#   dataset: clip to the training set's foreground 0.5/99.5 percentiles, then z-score with the
#            training set's foreground mean/std (nnU-Net's CT scheme; quantitative images).
#   zscore_nonzero: per-volume z-score over non-zero voxels (MR and other qualitative images).
#   zscore: per-volume z-score over all voxels.
#   window: clip to a fixed [lo, hi] window and map it linearly to [-1, 1].
# INTENSITY_MODES (modules.settings) is the one list of these modes.
# (clip_lo, clip_hi, mean, std) when the training set has no case in 'dataset' mode: finite and
# the identity apart from clipping at float32's range.
NEUTRAL_STATS = (-3.0e38, 3.0e38, 0.0, 1.0)

DTYPE_NAMES = ("uint8", "int16", "float32")


def decode_voxels(raw: tf.Tensor, dtype_name: tf.Tensor, shape: tf.Tensor, channels: int = 1) -> tf.Tensor:
    """One volume from raw little-endian bytes.

    Args:
      raw: scalar string, the voxel bytes (channels last when channels > 1).
      dtype_name: scalar string, one of DTYPE_NAMES.
      shape: (3,) int64, (X, Y, Z).
      channels: C, known when the graph is built.
    Returns:
      (X, Y, Z) float32 volume, or (X, Y, Z, C) when channels > 1.
    """

    def as_float(out_type):
        return lambda: tf.cast(tf.io.decode_raw(raw, out_type, little_endian=True), tf.float32)

    flat = tf.case(
        [(tf.equal(dtype_name, "uint8"), as_float(tf.uint8)), (tf.equal(dtype_name, "int16"), as_float(tf.int16))],
        default=as_float(tf.float32),
        exclusive=True,
    )
    shape = tf.cast(shape, tf.int32)
    return tf.reshape(flat, shape if channels == 1 else tf.concat([shape, [channels]], axis=0))


def decode_label(raw: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """(X, Y, Z) uint8 label map from raw bytes (shape (3,) int).

    A serving request has no label: TFT then feeds a stand-in value (empty bytes) for label_raw,
    runs the whole graph and drops the outputs that depend on it; that stand-in decodes to
    zeros here instead of failing the reshape. (Ingestion guarantees real labels match the image.)
    """
    shape = tf.cast(shape, tf.int32)
    values = tf.io.decode_raw(raw, tf.uint8)
    count = tf.reduce_prod(shape)
    values = tf.cond(tf.equal(tf.size(values), count), lambda: values, lambda: tf.zeros([count], tf.uint8))
    return tf.reshape(values, shape)


def zscore(volume: tf.Tensor, mask: tf.Tensor = None, eps: float = 1e-6) -> tf.Tensor:
    """(volume - mean) / std over voxels where `mask` (all voxels when None)."""
    if mask is None:
        mask = tf.ones_like(volume, dtype=tf.bool)
    mean, std = _mean_std(volume, mask, eps)
    return (volume - mean) / std


def _mean_std(volume: tf.Tensor, mask: tf.Tensor, eps: float = 1e-6):
    """Mean and sqrt(var + eps) of `volume` over voxels where `mask` (float32 scalars)."""
    weights = tf.cast(mask, tf.float32)
    count = tf.maximum(tf.reduce_sum(weights), 1.0)
    mean = tf.reduce_sum(volume * weights) / count
    var = tf.reduce_sum(tf.square(volume - mean) * weights) / count
    return mean, tf.sqrt(var + eps)


def normalise_intensity(volume: tf.Tensor, mode: tf.Tensor, stats: tf.Tensor, window) -> tf.Tensor:
    """Intensity normalisation of one volume (float32 in, float32 out, same shape).

    Every mode is (clip(volume, lo, hi) - centre) / scale with mode-specific parameters, picked
    by a gather rather than tf.switch_case: TFT cannot fingerprint Case ops on an analyzer's
    input path, and one formula keeps the serving graph simple.

    Args:
      volume: (X, Y, Z) float32 raw intensities (HU for CT).
      mode: scalar int32 index into INTENSITY_MODES.
      stats: (4,) float32 training-set (clip_lo, clip_hi, mean, std), used by 'dataset' mode.
      window: (lo, hi) for 'window' mode.
    """
    volume = tf.cast(volume, tf.float32)
    stats = tf.cast(stats, tf.float32)
    lo, hi = float(window[0]), float(window[1])
    unbounded_lo, unbounded_hi = NEUTRAL_STATS[0], NEUTRAL_STATS[1]
    nonzero_mean, nonzero_std = _mean_std(volume, tf.not_equal(volume, 0.0))
    all_mean, all_std = _mean_std(volume, tf.ones_like(volume, dtype=tf.bool))
    params = {  # (clip_lo, clip_hi, centre, scale)
        "dataset": tf.unstack(stats),
        "zscore_nonzero": [unbounded_lo, unbounded_hi, nonzero_mean, nonzero_std],
        "zscore": [unbounded_lo, unbounded_hi, all_mean, all_std],
        "window": [lo, hi, (lo + hi) / 2.0, (hi - lo) / 2.0],
    }
    table = tf.stack([tf.stack([tf.cast(v, tf.float32) for v in params[name]]) for name in INTENSITY_MODES])
    clip_lo, clip_hi, centre, scale = tf.unstack(tf.gather(table, tf.cast(mode, tf.int32)))
    return (tf.clip_by_value(volume, clip_lo, clip_hi) - centre) / scale


def dataset_stats(quantile_lo, quantile_hi, mean, var, count) -> tf.Tensor:
    """(4,) float32 (clip_lo, clip_hi, mean, std) from analyzer outputs; NEUTRAL_STATS when the
    sample was empty (count == 0), std floored so a constant foreground cannot divide by zero."""
    std = tf.sqrt(tf.maximum(tf.cast(var, tf.float32), 0.0))
    std = tf.where(std > 1e-6, std, 1.0)
    stats = tf.stack(
        [tf.cast(quantile_lo, tf.float32), tf.cast(quantile_hi, tf.float32), tf.cast(mean, tf.float32), std]
    )
    return tf.where(tf.cast(count, tf.int64) > 0, stats, tf.constant(NEUTRAL_STATS, tf.float32))


def foreground_sample(volume: tf.Tensor, label: tf.Tensor = None, max_samples: int = 10000) -> tf.Tensor:
    """Up to `max_samples` intensities of foreground (label > 0) voxels, a regular stride over them
    (deterministic); all voxels when `label` is None. Returns (k,) float32, k <= max_samples."""
    values = tf.reshape(volume, [-1])
    if label is not None:
        values = tf.boolean_mask(values, tf.reshape(label, [-1]) > 0)
    count = tf.shape(values, out_type=tf.int64)[0]
    stride = tf.maximum((count + max_samples - 1) // max_samples, 1)
    return tf.cast(values[::stride], tf.float32)


def canonical_geometry(shape: tf.Tensor, spacing: tf.Tensor, direction: tf.Tensor):
    """(order, flip, canonical shape (3,) int32, canonical spacing (3,) float64) of one volume."""
    order, flip = resample.orientation(direction)
    return (order, flip, tf.gather(tf.cast(shape, tf.int32), order), tf.gather(resample.as_float64(spacing), order))


def to_network(
    volume: tf.Tensor,
    spacing: tf.Tensor,
    direction: tf.Tensor,
    mode: tf.Tensor,
    stats: tf.Tensor,
    window,
    grid_spacing: tf.Tensor,
    size=None,
) -> tf.Tensor:
    """One image: raw (X, Y, Z) -> canonical orientation -> intensity normalisation (on the raw
    grid, where the statistics were taken) -> trilinear resampling to `grid_spacing` (mm, (3,)) ->
    centre crop/pad to `size` (3 ints), or the whole resampled volume when size is None.
    Padding takes the volume's minimum (air/background after normalisation). Returns float32."""
    order, flip, _, canonical_spacing = canonical_geometry(tf.shape(volume), spacing, direction)
    x = normalise_intensity(resample.to_canonical(volume, order, flip), mode, stats, window)
    out, _ = resample.to_network_grid(x, canonical_spacing, grid_spacing, size, resample.LINEAR, fill=tf.reduce_min(x))
    return out


def label_to_network(
    label: tf.Tensor, spacing: tf.Tensor, direction: tf.Tensor, grid_spacing: tf.Tensor, size=None
) -> tf.Tensor:
    """One label map, as to_network but nearest-neighbour and padded with 0. Returns int64."""
    order, flip, _, canonical_spacing = canonical_geometry(tf.shape(label), spacing, direction)
    out, _ = resample.to_network_grid(
        tf.cast(resample.to_canonical(label, order, flip), tf.float32),
        canonical_spacing,
        grid_spacing,
        size,
        resample.NEAREST,
        fill=0.0,
    )
    return tf.cast(out, tf.int64)


def probabilities_to_mask(
    probabilities: tf.Tensor,
    shape: tf.Tensor,
    spacing: tf.Tensor,
    direction: tf.Tensor,
    grid_spacing: tf.Tensor,
    grid_shape: tf.Tensor,
) -> tf.Tensor:
    """Inverse of to_network for predictions.

    Args:
      probabilities: (T0, T1, T2, C) class probabilities on the network grid.
      shape, spacing, direction: the raw input's geometry ((3,), (3,) mm, (9,)).
      grid_spacing: (3,) mm of the network grid; grid_shape: (3,) resampled (pre crop/pad) voxels,
        both as Transform output them for this input.
    Returns:
      (X, Y, Z) uint8 mask on the input's own grid and voxel order: probabilities resampled
      trilinearly, then argmax; voxels the crop cut away are background (0).
    """
    order, flip, canonical_shape, canonical_spacing = canonical_geometry(shape, spacing, direction)
    num_classes = tf.shape(probabilities)[-1]
    values = resample.from_network_grid(
        probabilities,
        canonical_shape,
        canonical_spacing,
        resample.as_float64(grid_spacing),
        tf.cast(grid_shape, tf.int32),
        resample.LINEAR,
        fill=tf.one_hot(0, num_classes),
    )
    mask = tf.cast(tf.argmax(values, axis=-1), tf.uint8)
    return resample.from_canonical(mask, order, flip)
