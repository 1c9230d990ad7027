"""tf.data input pipelines: transformed records -> class-balanced augmented training patches,
evaluation patches and whole cases; ingested records (voxels as raw bytes in their native dtype)
-> float volumes.

Speed (see pipeline/tools/bench_io.py): files are read in parallel, records are parsed and decoded in
parallel map calls, decoded cases are cached in memory when they fit (Transform's outputs for a
dataset like Decathlon hippocampus are ~1 MB per case), and batches are prefetched. Patch
sampling and augmentation are stateless functions of (seed, element index): the same seed gives
identical batches.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import tensorflow as tf

from modules import features as es
from modules.train import augment

AUTOTUNE = tf.data.AUTOTUNE
# Unbuffered reads: a record (a volume, MBs) is read straight into its string; a read buffer
# would only add one more copy of every voxel (README: input pipeline figures).
_READ_BUFFER = 0


def list_files(file_pattern: Union[str, Sequence[str]]) -> List[str]:
    """Sorted files matching one pattern or a list of patterns (sorted: deterministic order)."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no records match {patterns}")
    return files


def records(files: Sequence[str], parallel: bool = True) -> tf.data.Dataset:
    """Serialized records of TFRecord files (GZIP when the names end in .gz), files read in parallel
    and interleaved deterministically."""
    compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
    return tf.data.TFRecordDataset(
        list(files),
        compression_type=compression,
        buffer_size=_READ_BUFFER,
        num_parallel_reads=AUTOTUNE if parallel and len(files) > 1 else None,
    )


def case_decoder(
    feature_spec: Dict[str, object],
    image_key: str = "image",
    label_key: Optional[str] = "label",
    shape_key: str = "grid_shape",
):
    """serialized transformed tf.Example -> (image (X, Y, Z, C) float32, label) of one case.

    Handles both Transform layouts: a fixed grid (FixedLenFeature of shape (X, Y, Z) for one
    channel, (X, Y, Z, C) for C) and whole volumes (flattened variable-length feature, channels
    last, reshaped by `shape_key`). Segmentation labels become
    (X, Y, Z) uint8 (8x smaller in the cache than int64); a classification label (one value per
    case) becomes a scalar int32. label_key None: image only.
    """
    keys = [image_key] + ([label_key] if label_key else [])
    spec = {k: feature_spec[k] for k in keys}
    needs_shape = any(not isinstance(spec[k], tf.io.FixedLenFeature) for k in keys)
    label_spec = spec.get(label_key) if label_key else None
    classification = (
        isinstance(label_spec, tf.io.FixedLenFeature) and int(tf.TensorShape(label_spec.shape).num_elements()) == 1
    )
    if needs_shape:
        spec[shape_key] = feature_spec[shape_key]

    def dense(value, default):
        if isinstance(value, tf.SparseTensor):
            return tf.sparse.to_dense(value, default_value=default)
        if isinstance(value, tf.RaggedTensor):
            return value.flat_values
        return value

    def decode(serialized):
        f = tf.io.parse_single_example(serialized, spec)
        image = dense(f[image_key], 0.0)
        if needs_shape:
            shape = tf.cast(tf.reshape(f[shape_key], [3]), tf.int32)
            image = tf.reshape(image, tf.concat([shape, [-1]], axis=0))
        elif image.shape.rank == 3:  # one channel: the channel axis the networks take
            image = image[..., None]
        image = tf.cast(image, tf.float32)
        if not label_key:
            return image
        label = dense(f[label_key], 0)
        if classification:
            return image, tf.cast(tf.reshape(label, []), tf.int32)
        if needs_shape:
            label = tf.reshape(label, tf.shape(image)[:3])
        return image, tf.cast(label, tf.uint8)

    return decode


def cases(files: Sequence[str], decoder, cache: bool = True) -> tf.data.Dataset:
    """Decoded cases in file order; cached in memory after the first pass when `cache`."""
    ds = records(files).map(decoder, num_parallel_calls=AUTOTUNE)
    return ds.cache() if cache else ds


def training_patches(
    case_ds: tf.data.Dataset,
    patch_size: Sequence[int],
    batch_size: int,
    num_classes: int,
    foreground_oversample: float = 0.33,
    augmentation: Optional[augment.AugmentConfig] = None,
    seed: int = 0,
    shuffle_buffer: int = 256,
) -> tf.data.Dataset:
    """Endless batches of (image (B, *patch, C) float32, label (B, *patch) int32).

    Deterministic: cases are shuffled with `seed` and patch i is drawn with seed (seed, i).
    """
    cfg = augmentation if augmentation is not None else augment.AugmentConfig.off()
    patch_size = [int(p) for p in patch_size]

    def patch(i, case):
        image, label = case
        return augment.training_patch(
            image, label, patch_size, num_classes, foreground_oversample, cfg, tf.stack([tf.cast(seed, tf.int64), i])
        )

    ds = case_ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(patch, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.map(lambda x, y: (x, tf.cast(y, tf.int32))).prefetch(AUTOTUNE)


def classification_batches(
    case_ds: tf.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    augmentation: Optional[augment.AugmentConfig] = None,
) -> tf.data.Dataset:
    """(image (B, X, Y, Z, C), class id (B,)) batches of whole cases (fixed grid), mirrored and
    intensity-augmented when `augmentation` is given; endless when shuffling."""
    cfg = augmentation

    def aug(i, case):
        image, label = case
        s = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), i]), 2)
        if cfg.mirror:
            image, _ = augment.mirror(image, image, s[0])
        return augment.intensity(image, cfg, s[1]), label

    ds = case_ds
    if shuffle:
        ds = ds.shuffle(256, seed=seed, reshuffle_each_iteration=True).repeat()
        if cfg is not None:
            ds = ds.enumerate().map(aug, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=shuffle)
    return ds.prefetch(AUTOTUNE)


def validation_patches(
    case_ds: tf.data.Dataset,
    patch_size: Sequence[int],
    batch_size: int,
    num_classes: int,
    foreground_oversample: float = 0.33,
    seed: int = 0,
):
    """A fixed set of patches (one per case, no augmentation, same every epoch) for val_loss."""
    patch_size = [int(p) for p in patch_size]
    cfg = augment.AugmentConfig.off()

    def patch(i, case):
        image, label = case
        return augment.training_patch(
            image,
            label,
            patch_size,
            num_classes,
            foreground_oversample,
            cfg,
            tf.stack([tf.cast(seed, tf.int64) + 1000003, i]),
        )

    ds = case_ds.enumerate().map(patch, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return ds.map(lambda x, y: (x, tf.cast(y, tf.int32))).prefetch(AUTOTUNE)


# --- ingested records (modules/features.py) ---------------------

_NATIVE = {"uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}


def raw_volume_decoder(shape: Sequence[int], dtype: str = "int16"):
    """Serialized ingested tf.Example -> (X, Y, Z, 1) volume in its native dtype.

    Voxels are raw little-endian bytes of `dtype` (int16 CT is half the bytes of float32): parsed
    as one bytes feature (no per-value protobuf decoding) and decode_raw'd; no float conversion
    here (see normalise). For a fixed, known `shape` and dtype: the fast path of a homogeneous
    dataset (mixed dtypes / shapes go through modules.transform.volume_ops.decode_voxels).
    """
    spec = {es.IMAGE_RAW: tf.io.FixedLenFeature([], tf.string)}
    shape = [int(s) for s in shape] + [1]

    def decode(serialized):
        raw = tf.io.parse_single_example(serialized, spec)[es.IMAGE_RAW]
        return tf.reshape(tf.io.decode_raw(raw, _NATIVE[dtype], little_endian=True), shape)

    return decode


def normalise(volumes: tf.Tensor, offset: float = 0.0, scale: float = 1.0) -> tf.Tensor:
    """(tf.cast(volumes, float32) - offset) * scale: native voxels to network input. Apply it as the
    model's first op (on the accelerator: half the host->device bytes for int16) or on the host."""
    return (tf.cast(volumes, tf.float32) - offset) * scale


def raw_volume_batches(
    files: Sequence[str],
    shape: Sequence[int],
    batch_size: int,
    dtype: str = "int16",
    cache: bool = False,
    repeat: bool = True,
    normalisation=None,
) -> tf.data.Dataset:
    """(B, X, Y, Z, 1) batches of ingested volumes.

    Streaming (cache=False): every record is parsed and decoded (parallel reads, parallel map, one
    record per call so both cores work); cache=True keeps decoded volumes in memory after the first
    pass (when the dataset fits), so later epochs skip parsing entirely. Batches stay in the native
    dtype (`normalise` in the model) unless normalisation=(offset, scale) asks for float32 on the
    host: every extra pass over the voxels (cast, affine) costs as much as reading them.
    """
    decode = raw_volume_decoder(shape, dtype)
    if normalisation is not None:
        offset, scale = normalisation
        native = decode
        decode = lambda r: normalise(native(r), offset, scale)  # noqa: E731
    ds = records(files).map(decode, num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=repeat).prefetch(AUTOTUNE)
