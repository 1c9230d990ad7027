"""Class-balanced patch placement (pure TF, stateless random: same seed -> same patches).

nnU-Net's scheme: a share `foreground_oversample` (0.33) of patches is centred on a foreground
voxel (a random foreground class present in the case, then a random voxel of that class); the
others are placed uniformly at random. The training patch itself (placement, then the spatial
augmentation that reads around it) is cut by modules.train.augment.training_patch, which uses these
building blocks. Volumes are (X, Y, Z) tensors; seeds are (2,) int tensors (see
tf.random.stateless_uniform).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def pad_to_patch(image: tf.Tensor, label: tf.Tensor, patch_size: Sequence[int], image_fill: float = 0.0):
    """Pads (X, Y, Z[, C]) image and (X, Y, Z) label symmetrically so every spatial axis is >=
    the patch size.

    image_fill: value of padded image voxels (0 = the mean after z-scoring); labels pad with 0.
    """
    image, label = tf.convert_to_tensor(image), tf.convert_to_tensor(label)
    shape = tf.shape(label)
    missing = tf.maximum(tf.constant(list(patch_size), tf.int32) - shape, 0)
    paddings = tf.stack([missing // 2, missing - missing // 2], axis=1)
    image_paddings = paddings if image.shape.rank == 3 else tf.concat([paddings, [[0, 0]]], axis=0)
    return (
        tf.pad(image, image_paddings, constant_values=image_fill),
        tf.pad(label, paddings, constant_values=tf.cast(0, label.dtype)),
    )


def _uniform_int(seed, upper_exclusive):
    """Scalar int32 uniform in [0, upper_exclusive) (upper_exclusive >= 1)."""
    u = tf.random.stateless_uniform([], seed=seed)
    return tf.minimum(tf.cast(u * tf.cast(upper_exclusive, tf.float32), tf.int32), upper_exclusive - 1)


def foreground_voxel(label: tf.Tensor, num_classes: int, seed):
    """(found, voxel): a random foreground class present in `label`, then one of its voxels.

    Returns found (bool scalar: the case has foreground) and voxel ((3,) int32; zeros if not found).
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    classes = tf.range(1, num_classes, dtype=tf.int32)
    flat = tf.reshape(tf.cast(label, tf.int32), [-1])
    counts = tf.math.bincount(flat, minlength=num_classes, maxlength=num_classes)[1:]
    present = tf.boolean_mask(classes, counts > 0)
    found = tf.size(present) > 0

    def pick():
        k = tf.gather(present, _uniform_int(seeds[0], tf.size(present)))
        voxels = tf.where(tf.equal(tf.cast(label, tf.int32), k))
        return tf.cast(tf.gather(voxels, _uniform_int(seeds[1], tf.shape(voxels)[0])), tf.int32)

    return found, tf.cond(found, pick, lambda: tf.zeros([3], tf.int32))


def patch_start(
    shape: tf.Tensor, patch_size: Sequence[int], force_foreground: tf.Tensor, label: tf.Tensor, num_classes: int, seed
) -> tf.Tensor:
    """(3,) int32 start of a patch inside a volume of `shape` (each axis >= patch size).

    force_foreground: centre the patch on a foreground voxel (if the case has any), shifted to stay
    inside the volume; otherwise the start is uniform over all valid starts.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    size = tf.constant(list(patch_size), tf.int32)
    room = shape - size + 1  # number of valid starts per axis
    random_start = tf.minimum(
        tf.cast(tf.random.stateless_uniform([3], seed=seeds[0]) * tf.cast(room, tf.float32), tf.int32), room - 1
    )
    found, voxel = foreground_voxel(label, num_classes, seeds[1])
    centred = tf.clip_by_value(voxel - size // 2, 0, room - 1)
    return tf.where(tf.logical_and(force_foreground, found), centred, random_start)
