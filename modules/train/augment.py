"""Data augmentation for 3D patches in tf.data (pure TF, stateless random: same seed -> same output).

Spatial: small rotations about each axis and isotropic scaling are applied while the patch is
sampled (`affine_patch`: the patch grid is mapped through rotation x scale about its centre into
the case, trilinear for the image, nearest for the label), then mirroring per axis.
Intensity (image only): multiplicative scale, additive shift, Gaussian noise.
Probabilities and ranges follow nnU-Net's defaults, with smaller rotations/scales.
Volumes are (X, Y, Z); seeds are (2,) int tensors.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from modules.settings import AugmentationSettings
from modules.train import patches

# The switches and ranges: training settings (modules/settings.py), one definition.
AugmentConfig = AugmentationSettings


def _u(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi)


def rotation_matrix(angles: tf.Tensor) -> tf.Tensor:
    """(3,) radians about axes 0, 1, 2 -> (3, 3) float32 rotation R = Rz @ Ry @ Rx."""
    c, s = tf.cos(angles), tf.sin(angles)
    one, zero = tf.ones([]), tf.zeros([])
    rx = tf.stack([[one, zero, zero], [zero, c[0], -s[0]], [zero, s[0], c[0]]])
    ry = tf.stack([[c[1], zero, s[1]], [zero, one, zero], [-s[1], zero, c[1]]])
    rz = tf.stack([[c[2], -s[2], zero], [s[2], c[2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def random_affine(cfg: AugmentConfig, seed) -> tf.Tensor:
    """(3, 3) float32 rotation x scale mapping patch offsets to case offsets (identity when no
    transform is drawn)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    max_angle = cfg.max_rotation_deg * math.pi / 180.0
    rotate = _u(seeds[0], shape=(3,)) < cfg.p_rotation
    angles = tf.where(rotate, _u(seeds[1], -max_angle, max_angle, (3,)), 0.0)
    scale = tf.where(_u(seeds[2]) < cfg.p_scale, _u(seeds[3], cfg.scale_range[0], cfg.scale_range[1]), 1.0)
    return rotation_matrix(angles) * scale


def _patch_offsets(patch_size: Sequence[int]) -> tf.Tensor:
    """(N, 3) float32 voxel offsets of a patch's voxels from its centre, C order."""
    axes = [tf.range(p, dtype=tf.float32) - (p - 1) / 2.0 for p in patch_size]
    grids = tf.meshgrid(*axes, indexing="ij")
    return tf.stack([tf.reshape(g, [-1]) for g in grids], axis=1)


def sample_points(volume: tf.Tensor, coords: tf.Tensor, linear: bool, fill: float = 0.0) -> tf.Tensor:
    """Values of an (X, Y, Z) or (X, Y, Z, C) volume at (N, 3) float voxel coordinates -> (N,) or
    (N, C) (volume dtype for nearest, float32 for linear). Points outside the volume take `fill`."""
    volume = tf.convert_to_tensor(volume)
    upper = tf.shape(volume)[:3] - 1
    channels = volume.shape.rank == 4

    def inside(idx):
        flags = tf.reduce_all(tf.logical_and(idx >= 0, idx <= upper), axis=1)
        return flags[:, None] if channels else flags

    if not linear:
        idx = tf.cast(tf.round(coords), tf.int32)
        values = tf.gather_nd(volume, tf.clip_by_value(idx, 0, upper))
        return tf.where(inside(idx), values, tf.cast(fill, volume.dtype))
    volume = tf.cast(volume, tf.float32)
    base = tf.floor(coords)
    frac = coords - base
    base = tf.cast(base, tf.int32)
    out = tf.zeros(tf.concat([tf.shape(coords)[:1], tf.shape(volume)[3:]], axis=0), tf.float32)
    for corner in range(8):
        d = tf.constant([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], tf.int32)
        idx = base + d
        weight = tf.reduce_prod(tf.where(d > 0, frac, 1.0 - frac), axis=1)
        values = tf.where(inside(idx), tf.gather_nd(volume, tf.clip_by_value(idx, 0, upper)), fill)
        out += (weight[:, None] if channels else weight) * values
    return out


def affine_patch(image: tf.Tensor, label: tf.Tensor, centre: tf.Tensor, matrix: tf.Tensor, patch_size: Sequence[int]):
    """Patch of `patch_size` whose voxel offset o from the patch centre reads the case at
    centre + matrix @ o (voxels). Image (X, Y, Z[, C]) trilinear (fill 0), label nearest (fill 0)."""
    coords = _patch_offsets(patch_size) @ tf.transpose(matrix) + tf.cast(centre, tf.float32)
    image = tf.convert_to_tensor(image)
    size = list(patch_size)
    image_size = tf.concat([size, tf.shape(image)[3:]], axis=0)
    return (
        tf.reshape(sample_points(image, coords, True), image_size),
        tf.reshape(sample_points(label, coords, False), size),
    )


def _flip_if(flip: tf.Tensor, image: tf.Tensor, label: tf.Tensor, axis: int):
    """image and label reversed along `axis` when the scalar bool `flip` is true, else unchanged."""
    return tf.cond(flip, lambda: (tf.reverse(image, [axis]), tf.reverse(label, [axis])), lambda: (image, label))


def mirror(image: tf.Tensor, label: tf.Tensor, seed):
    """Flips each axis of image and label together with probability 0.5."""
    image, label = tf.convert_to_tensor(image), tf.convert_to_tensor(label)
    flips = _u(seed, shape=(3,)) < 0.5
    for axis in range(3):
        image, label = _flip_if(flips[axis], image, label, axis)
    return image, label


def intensity(image: tf.Tensor, cfg: AugmentConfig, seed) -> tf.Tensor:
    """Multiplicative scale, additive shift, Gaussian noise, each with its probability."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    image = tf.where(
        _u(seeds[0]) < cfg.p_intensity_scale,
        image * _u(seeds[1], cfg.intensity_scale_range[0], cfg.intensity_scale_range[1]),
        image,
    )
    image = tf.where(
        _u(seeds[2]) < cfg.p_intensity_shift,
        image + tf.random.stateless_normal([], seed=seeds[3]) * cfg.intensity_shift_std,
        image,
    )
    noise_std = _u(seeds[5], 0.0, cfg.max_noise_std)
    noise = tf.random.stateless_normal(tf.shape(image), seed=seeds[6]) * noise_std
    return tf.where(_u(seeds[4]) < cfg.p_noise, image + noise, image)


def training_patch(
    image: tf.Tensor,
    label: tf.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    foreground_oversample: float,
    cfg: AugmentConfig,
    seed,
):
    """One class-balanced, augmented training patch of an (X, Y, Z[, C]) case: the patch sampler of
    the input pipeline. The case is padded to the patch size, the patch placed by
    modules.train.patches (a share `foreground_oversample` centred on foreground), then read through
    the spatial transform, mirrored and intensity-augmented as `cfg` says
    (AugmentConfig.off(): the case's own voxels at the placed start).

    Returns image (P0, P1, P2[, C]) float32 and label (P0, P1, P2) with label's dtype.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    image, label = tf.convert_to_tensor(image), tf.convert_to_tensor(label)
    image_shape = list(patch_size) + image.shape.as_list()[3:]
    image, label = patches.pad_to_patch(tf.cast(image, tf.float32), label, patch_size)
    forced = tf.random.stateless_uniform([], seed=seeds[0]) < foreground_oversample
    start = patches.patch_start(tf.shape(label), patch_size, forced, label, num_classes, seeds[1])
    size = tf.constant(list(patch_size), tf.int32)

    def crop(volume):  # the patch at `start`, every channel
        extra = volume.shape.rank - 3
        return tf.slice(
            volume, tf.concat([start, tf.zeros([extra], tf.int32)], 0), tf.concat([size, tf.fill([extra], -1)], 0)
        )

    if cfg.spatial:
        matrix = random_affine(cfg, seeds[2])
        centre = tf.cast(start, tf.float32) + (tf.cast(size, tf.float32) - 1.0) / 2.0
        image, label = tf.cond(
            tf.reduce_all(tf.equal(matrix, tf.eye(3))),
            lambda: (crop(image), crop(label)),
            lambda: affine_patch(image, label, centre, matrix, patch_size),
        )
    else:
        image, label = crop(image), crop(label)
    if cfg.mirror:
        image, label = mirror(image, label, seeds[3])
    image = intensity(image, cfg, seeds[4])
    image.set_shape(image_shape)
    label.set_shape(patch_size)
    return image, label
