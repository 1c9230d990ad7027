"""Gaussian-weighted sliding-window inference (pure TF; runs inside the exported serving graph).

A network trained on patches of `patch_size` is applied to windows tiling a larger volume with
`overlap` (nnU-Net: 0.5); each window's probabilities are weighted by a Gaussian centred on the
window (sigma = patch_size / 8; border voxels of a window are least reliable) and the weighted
sum is divided by the summed weights. Window starts per axis follow nnU-Net:
n = ceil((L - P) / (P * (1 - overlap))) + 1 windows, starts round(i * (L - P) / (n - 1)).
Volumes smaller than the patch are padded (pad_value) and the result cropped back.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """(P0, P1, P2) float32 Gaussian importance map, maximum 1 at the patch centre ((P-1)/2)."""
    axes = []
    for p in patch_size:
        i = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        axes.append(np.exp(-0.5 * (i / (p * sigma_scale)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).astype(np.float32)


def window_starts(length: tf.Tensor, patch: int, overlap: float) -> tf.Tensor:
    """(n,) int32 window starts along one axis of `length` >= patch voxels."""
    length = tf.cast(length, tf.int32)
    step = patch * (1.0 - overlap)
    n = tf.cast(tf.math.ceil(tf.cast(length - patch, tf.float32) / step), tf.int32) + 1
    actual = tf.cast(length - patch, tf.float32) / tf.cast(tf.maximum(n - 1, 1), tf.float32)
    return tf.cast(tf.round(actual * tf.cast(tf.range(n), tf.float32)), tf.int32)


def all_window_starts(shape: tf.Tensor, patch_size: Sequence[int], overlap: float) -> tf.Tensor:
    """(W, 3) int32 starts of every window (C order over the three axes)."""
    starts = [window_starts(shape[a], patch_size[a], overlap) for a in range(3)]
    grids = tf.meshgrid(*starts, indexing="ij")
    return tf.stack([tf.reshape(g, [-1]) for g in grids], axis=1)


def mirrored(model_fn: Callable[[tf.Tensor], tf.Tensor], axes: Sequence[int]) -> Callable[[tf.Tensor], tf.Tensor]:
    """Test-time mirroring (nnU-Net): the mean of `model_fn` over every combination of flips of
    the spatial `axes` (0, 1, 2 = P0, P1, P2), each output flipped back; 2 ** len(axes) calls.

    model_fn: (b, P0, P1, P2, Cin) -> (b, P0, P1, P2, C). Returns a function of the same shape.
    Worth it only for a network trained with mirroring (augment.AugmentConfig.mirror)."""
    axes = sorted({int(a) for a in axes})
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror axes must be spatial axes 0, 1 or 2, got {axes}")
    if not axes:
        return model_fn
    tensor_axes = [1 + a for a in axes]  # (b, P0, P1, P2, C): spatial axes start at 1
    flip_sets = [
        list(dims) for r in range(len(tensor_axes) + 1) for dims in itertools.combinations(tensor_axes, r)
    ]  # [] included: no flip

    def mean_over_flips(x):
        outputs = [tf.reverse(tf.cast(model_fn(tf.reverse(x, dims)), tf.float32), dims) for dims in flip_sets]
        return tf.add_n(outputs) / float(len(flip_sets))

    return mean_over_flips


def predict(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    volume: tf.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    windows_per_batch: int = 1,
    sigma_scale: float = 1.0 / 8,
    pad_value: float = 0.0,
) -> tf.Tensor:
    """Sliding-window probabilities.

    Args:
      model_fn: (b, P0, P1, P2, Cin) -> (b, P0, P1, P2, num_classes).
      volume: (B, X, Y, Z, Cin) float32; any X, Y, Z (static or not).
      patch_size: (P0, P1, P2) window size the network takes.
      overlap: share of a window overlapping its neighbour, in [0, 1).
      windows_per_batch: windows stacked into one network call (batch of B * windows_per_batch).
    Returns:
      (B, X, Y, Z, num_classes) float32.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    patch_size = [int(p) for p in patch_size]
    volume = tf.convert_to_tensor(volume)
    shape = tf.shape(volume)
    batch, channels = shape[0], shape[4]
    size = tf.constant(patch_size, tf.int32)
    missing = tf.maximum(size - shape[1:4], 0)
    lo = missing // 2
    paddings = tf.concat([[[0, 0]], tf.stack([lo, missing - lo], axis=1), [[0, 0]]], axis=0)
    padded = tf.pad(volume, paddings, constant_values=pad_value)
    padded_shape = tf.shape(padded)[1:4]

    starts = all_window_starts(padded_shape, patch_size, overlap)
    num_windows = tf.shape(starts)[0]
    k = int(windows_per_batch)
    gauss = tf.constant(gaussian_weights(patch_size, sigma_scale))
    gauss_flat = tf.reshape(gauss, [-1])
    offsets = tf.stack(
        [tf.reshape(g, [-1]) for g in tf.meshgrid(*[tf.range(p) for p in patch_size], indexing="ij")], axis=1
    )  # (N, 3)
    n_voxels = int(np.prod(patch_size))
    # Accumulators keep space first so scatter indices address (x, y, z) directly.
    acc_shape = tf.concat([padded_shape, [batch, num_classes]], axis=0)
    acc0 = tf.zeros(acc_shape, tf.float32)
    weight0 = tf.zeros(padded_shape, tf.float32)

    def body(i, acc, weight):
        index = i * k + tf.range(k)
        valid = tf.cast(index < num_windows, tf.float32)
        index = tf.minimum(index, num_windows - 1)
        crops = [
            tf.slice(padded, tf.concat([[0], starts[index[j]], [0]], 0), tf.concat([[batch], size, [channels]], 0))
            for j in range(k)
        ]
        probs = tf.cast(model_fn(tf.concat(crops, axis=0)), tf.float32)
        probs = tf.reshape(probs, tf.concat([[k, batch], size, [num_classes]], 0))
        for j in range(k):
            w = gauss * valid[j]
            update = tf.transpose(probs[j] * w[None, ..., None], [1, 2, 3, 0, 4])
            update = tf.reshape(update, [n_voxels, batch, num_classes])
            where = offsets + starts[index[j]]
            acc = tf.tensor_scatter_nd_add(acc, where, update)
            weight = tf.tensor_scatter_nd_add(weight, where, gauss_flat * valid[j])
        return i + 1, acc, weight

    steps = (num_windows + k - 1) // k
    _, acc, weight = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), acc0, weight0))
    out = tf.transpose(acc / weight[..., None, None], [3, 0, 1, 2, 4])
    out = tf.slice(out, tf.concat([[0], lo, [0]], 0), tf.concat([[batch], shape[1:4], [num_classes]], 0))
    if volume.shape.rank is not None:
        out.set_shape(volume.shape[:4].concatenate([num_classes]))
    return out
