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
import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

# Voxels of window outputs gathered before one scatter into the accumulator (see predict): 2^22
# voxels hold 48 MB of 3-class probabilities per volume, plus their indices.
SCATTER_CHUNK_VOXELS = 2**22


def gaussian_axes(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> list:
    """Per axis, (P,) float32 1D Gaussian centred at (P-1)/2 with sigma P * sigma_scale, maximum 1:
    gaussian_weights is their outer product."""
    axes = []
    for p in patch_size:
        i = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        g = np.exp(-0.5 * (i / (p * sigma_scale)) ** 2)
        axes.append((g / g.max()).astype(np.float32))
    return axes


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """(P0, P1, P2) float32 Gaussian importance map, maximum 1 at the patch centre ((P-1)/2)."""
    axes = [a.astype(np.float64) for a in gaussian_axes(patch_size, sigma_scale)]
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


# Flipped copies of a window go through the network together (one call on a batch of flips: larger
# convolutions, a fraction of the per-op overhead) while the stacked batch stays within this many
# voxels (per volume of the batch); larger windows take their flips in chunks, bounding memory.
MIRROR_BATCH_VOXELS = 2**20


def mirrored(
    model_fn: Callable[[tf.Tensor], tf.Tensor], axes: Sequence[int], batch_voxels: int = MIRROR_BATCH_VOXELS
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Test-time mirroring (nnU-Net): the mean of `model_fn` over every combination of flips of
    the spatial `axes` (0, 1, 2 = P0, P1, P2), each output flipped back; 2 ** len(axes) passes,
    stacked along the batch axis into as few calls as `batch_voxels` allows (the window's spatial
    size must be static for stacking; otherwise one call per flip). The network must treat batch
    elements independently (instance / group norm, or batch norm in inference).

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

    def flip(v, dims):
        return tf.reverse(v, dims) if dims else v

    def mean_over_flips(x):
        spatial = x.shape[1:4]
        per_call = 1
        if spatial.is_fully_defined():
            per_call = max(1, int(batch_voxels) // max(1, math.prod(int(d) for d in spatial)))
        outputs = []
        for first in range(0, len(flip_sets), per_call):
            chunk = flip_sets[first : first + per_call]
            stacked = tf.concat([flip(x, dims) for dims in chunk], axis=0) if len(chunk) > 1 else flip(x, chunk[0])
            probs = tf.cast(model_fn(stacked), tf.float32)
            parts = tf.split(probs, len(chunk), axis=0) if len(chunk) > 1 else [probs]
            outputs += [flip(part, dims) for part, dims in zip(parts, chunk)]
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
    offsets = tf.stack(
        [tf.reshape(g, [-1]) for g in tf.meshgrid(*[tf.range(p) for p in patch_size], indexing="ij")], axis=1
    )  # (N, 3)
    n_voxels = int(np.prod(patch_size))
    # Accumulators keep space first so scatter indices address (x, y, z) directly.
    acc_shape = tf.concat([padded_shape, [batch, num_classes]], axis=0)
    steps = (num_windows + k - 1) // k
    # Window outputs are gathered over a chunk of network calls and added to the accumulator in one
    # scatter: a scatter per window cost a copy of the whole accumulator each time (measured 40 ms
    # per window on a 232x232x200 grid, more than the network); a chunk bounds the memory held.
    chunk = max(1, SCATTER_CHUNK_VOXELS // (n_voxels * k))

    def window_updates(i):
        """Network call i: ((k * N, 3) voxel indices, (k * N, B, C) Gaussian-weighted probabilities)."""
        index = i * k + tf.range(k)
        valid = tf.cast(index < num_windows, tf.float32)
        index = tf.minimum(index, num_windows - 1)
        crops = [
            tf.slice(padded, tf.concat([[0], starts[index[j]], [0]], 0), tf.concat([[batch], size, [channels]], 0))
            for j in range(k)
        ]
        probs = tf.cast(model_fn(tf.concat(crops, axis=0)), tf.float32)
        probs = tf.reshape(probs, tf.concat([[k, batch], size, [num_classes]], 0))
        # (k, P0, P1, P2, B, C) weighted; padding windows of the last call weigh 0.
        weights = gauss[None] * valid[:, None, None, None]
        update = tf.transpose(probs * weights[:, None, ..., None], [0, 2, 3, 4, 1, 5])
        where = offsets[None] + tf.gather(starts, index)[:, None, :]  # (k, N, 3)
        return tf.reshape(where, [k * n_voxels, 3]), tf.reshape(update, [k * n_voxels, batch, num_classes])

    def chunk_body(c, acc):
        first = c * chunk
        count = tf.minimum(chunk, steps - first)
        where_ta = tf.TensorArray(tf.int32, size=count, element_shape=[k * n_voxels, 3])
        update_ta = tf.TensorArray(tf.float32, size=count)

        def call_body(t, where_ta, update_ta):
            where, update = window_updates(first + t)
            return t + 1, where_ta.write(t, where), update_ta.write(t, update)

        _, where_ta, update_ta = tf.while_loop(
            lambda t, *_: t < count, call_body, (tf.constant(0), where_ta, update_ta)
        )
        updates = tf.reshape(update_ta.stack(), tf.stack([-1, batch, num_classes]))
        return c + 1, tf.tensor_scatter_nd_add(acc, tf.reshape(where_ta.stack(), [-1, 3]), updates)

    chunks = (steps + chunk - 1) // chunk
    _, acc = tf.while_loop(lambda c, *_: c < chunks, chunk_body, (tf.constant(0), tf.zeros(acc_shape, tf.float32)))
    # The summed weights are separable (a Gaussian per axis, windows on a grid of starts per axis):
    # an outer product of three 1D sums instead of a scatter per window.
    axes = gaussian_axes(patch_size, sigma_scale)
    sums = []
    for a in range(3):
        axis_starts = window_starts(padded_shape[a], patch_size[a], overlap)
        where = tf.reshape(axis_starts[:, None] + tf.range(patch_size[a])[None, :], [-1, 1])
        values = tf.tile(tf.constant(axes[a]), tf.shape(axis_starts))
        sums.append(tf.scatter_nd(where, values, padded_shape[a : a + 1]))
    weight = sums[0][:, None, None] * sums[1][None, :, None] * sums[2][None, None, :]
    out = tf.transpose(acc / weight[..., None, None], [3, 0, 1, 2, 4])
    out = tf.slice(out, tf.concat([[0], lo, [0]], 0), tf.concat([[batch], shape[1:4], [num_classes]], 0))
    if volume.shape.rank is not None:
        out.set_shape(volume.shape[:4].concatenate([num_classes]))
    return out
