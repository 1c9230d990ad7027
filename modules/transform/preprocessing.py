"""TFX Transform module: `preprocessing_fn` turns raw ingested cases into network inputs.

Per case (modules.transform.volume_ops.to_network): decode raw voxels, bring them to canonical RAS+ voxel
order (a no-op for ingested cases, which ingestion already canonicalised; serving requests may
come in any orientation), normalise intensity by modality, resample to the target spacing
(trilinear image, nearest label), then centre crop/pad to the network grid ('fixed_shape') or
keep the whole resampled volume ('whole_volume', for patch training / sliding windows).

A case of C channels (settings.channels) carries one modality per channel ('MR,MR'): each
channel is normalised by its own modality's mode (and, in 'dataset' mode, its own statistics),
then all are resampled on one grid and stacked channels last.

Dataset-level statistics are TFT analyzers over the analysed (train) split, so they become
constants of the transform graph that the exported serving model embeds: training and serving
cannot drift.
  * intensity ('dataset' mode, CT by default): 0.5/99.5 percentiles (tft.quantiles), mean
    (tft.mean) and variance (tft.var) of a strided sample of at most `foreground_samples` foreground
    voxels per case, over the cases in 'dataset' mode only. With no such case the analyzers see
    an empty sample and the statistics fall back to finite neutral values (volume_ops.NEUTRAL_STATS).
  * target spacing (when not configured): per-axis median of the canonical spacing
    (tft.quantiles with two buckets).

custom_config: modules.settings.TransformSettings as a dict (each field documented there).
"""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf
import tensorflow_transform as tft

from modules import features as es
from modules.settings import TransformSettings
from modules.transform import resample, volume_ops

# Outputs.
# fixed_shape: (B, X, Y, Z) float32 on the network grid, (B, X, Y, Z, C) for C > 1 channels;
# whole_volume: (B, None) flattened, channels last.
IMAGE = "image"
LABEL = "label"  # as IMAGE, int64
MODALITY = "modality"  # (B,) string, passed through (slicing, per-modality handling downstream)
GRID_SPACING = "grid_spacing"  # (B, 3) float32 mm of the network grid (canonical axis order)
GRID_SHAPE = "grid_shape"  # (B, 3) int64 voxels of the resampled volume before crop/pad

WHOLE_VOLUME = "whole_volume"

# Quantile sketch: 200 buckets put boundaries on every 0.5 %; epsilon is the rank error.
_QUANTILE_BUCKETS = 200
_QUANTILE_EPSILON = 0.0005


def intensity_mode_index(modality: tf.Tensor, intensity_mode: Mapping[str, str]) -> tf.Tensor:
    """(B,) modality strings -> (B,) int32 index into volume_ops.INTENSITY_MODES."""
    default = volume_ops.INTENSITY_MODES.index(intensity_mode.get("*", "zscore_nonzero"))
    index = tf.fill(tf.shape(modality), default)
    for name, mode in sorted(intensity_mode.items()):
        if name != "*":
            index = tf.where(tf.equal(modality, name), volume_ops.INTENSITY_MODES.index(mode), index)
    return index


def channel_mode_indices(modality: tf.Tensor, channels: int, intensity_mode: Mapping[str, str]) -> tf.Tensor:
    """(B,) modality strings, one name per channel joined by ',' (a single name for every channel)
    -> (B, channels) int32 index into volume_ops.INTENSITY_MODES (modules.features.channel_modalities)."""
    parts = tf.strings.split(modality, es.CHANNEL_SEPARATOR)
    names = parts.to_tensor(default_value="", shape=[None, channels])
    single = tf.equal(parts.row_lengths(), 1)
    return tf.stack(
        [intensity_mode_index(tf.where(single, names[:, 0], names[:, c]), intensity_mode) for c in range(channels)],
        axis=1,
    )


def _scalar(x: tf.Tensor) -> tf.Tensor:
    """(B,) or (B, 1) -> (B,)."""
    return tf.reshape(x, [-1])


def _intensity_stats(inputs, mode: tf.Tensor, settings: TransformSettings, channel: int = 0) -> tf.Tensor:
    """(4,) training-set (clip_lo, clip_hi, mean, std) of image channel `channel` over foreground
    voxels of the cases whose `mode` (B,) for it is 'dataset' (all their voxels when the dataset
    has no labels)."""
    dataset_mode = volume_ops.INTENSITY_MODES.index("dataset")
    has_label = es.LABEL_RAW in inputs
    elems = [
        _scalar(inputs[es.IMAGE_RAW]),
        _scalar(inputs[es.IMAGE_DTYPE]),
        tf.reshape(inputs[es.IMAGE_SHAPE], [-1, 3]),
        mode,
    ]
    if has_label:
        elems.append(_scalar(inputs[es.LABEL_RAW]))

    def sample(args):
        raw, dtype_name, shape, case_mode = args[:4]

        def take():
            volume = volume_ops.decode_voxels(raw, dtype_name, shape, settings.channels)
            if settings.channels > 1:
                volume = volume[..., channel]
            label = volume_ops.decode_label(args[4], shape) if has_label else None
            return volume_ops.foreground_sample(volume, label, settings.foreground_samples)

        return tf.cond(tf.equal(case_mode, dataset_mode), take, lambda: tf.zeros([0], tf.float32))

    samples = tf.map_fn(
        sample, tuple(elems), fn_output_signature=tf.RaggedTensorSpec([None], tf.float32, ragged_rank=0)
    )
    values = samples.flat_values
    suffix = f"_{channel}" if channel else ""
    bounds = tft.quantiles(values, _QUANTILE_BUCKETS, _QUANTILE_EPSILON, name="intensity_quantiles" + suffix)
    return volume_ops.dataset_stats(
        bounds[0, 0],
        bounds[0, -1],
        tft.mean(values, name="intensity_mean" + suffix),
        tft.var(values, name="intensity_var" + suffix),
        tft.size(values, name="intensity_count" + suffix),
    )


def _grid_spacing(canonical_spacing: tf.Tensor, settings: TransformSettings) -> tf.Tensor:
    """(3,) float32 mm: configured, or the per-axis median spacing of the training set."""
    if settings.target_spacing is not None:
        return tf.constant(settings.target_spacing, tf.float32)
    median = tft.quantiles(canonical_spacing, 2, _QUANTILE_EPSILON, reduce_instance_dims=False, name="median_spacing")
    median = tf.reshape(median, [3])
    return tf.where(tf.logical_and(tf.math.is_finite(median), median > 0.0), median, 1.0)


def preprocessing_fn(inputs: dict, custom_config: Optional[dict] = None) -> dict:
    """Raw features (batch) -> {'image', 'label' (when labelled), 'modality', 'grid_spacing',
    'grid_shape'}; see the module docstring for shapes and custom_config."""
    settings = TransformSettings.model_validate(custom_config or {})
    modality = _scalar(inputs[es.MODALITY])
    shapes = tf.reshape(inputs[es.IMAGE_SHAPE], [-1, 3])
    spacings = tf.reshape(tf.cast(inputs[es.SPACING], tf.float32), [-1, 3])
    directions = tf.reshape(tf.cast(inputs[es.DIRECTION], tf.float32), [-1, 9])
    channels = int(settings.channels)
    modes = channel_mode_indices(modality, channels, settings.intensity_mode)  # (B, C)

    orders = tf.map_fn(
        lambda d: resample.orientation(d)[0], directions, fn_output_signature=tf.TensorSpec([3], tf.int32)
    )
    canonical_spacing = tf.gather(spacings, orders, batch_dims=1)
    canonical_shape = tf.gather(shapes, orders, batch_dims=1)
    grid_spacing = _grid_spacing(canonical_spacing, settings)
    stats = [_intensity_stats(inputs, modes[:, c], settings, c) for c in range(channels)]
    grid_shape = resample.resampled_shape(canonical_shape, canonical_spacing, grid_spacing)

    whole = settings.spatial_mode == WHOLE_VOLUME
    size = None if whole else list(settings.target_shape)

    def finish(x):
        return tf.reshape(x, [-1]) if whole else x

    def output_spec(dtype, channel_axis: bool = False):
        if whole:
            return tf.RaggedTensorSpec([None], dtype, ragged_rank=0)
        return tf.TensorSpec(list(settings.target_shape) + ([channels] if channel_axis else []), dtype)

    def image_fn(args):
        raw, dtype_name, shape, spacing, direction, case_modes = args
        volume = volume_ops.decode_voxels(raw, dtype_name, shape, channels)
        per_channel = [
            volume_ops.to_network(
                volume if channels == 1 else volume[..., c],
                spacing,
                direction,
                case_modes[c],
                stats[c],
                settings.intensity_window,
                grid_spacing,
                size,
            )
            for c in range(channels)
        ]
        return finish(per_channel[0] if channels == 1 else tf.stack(per_channel, axis=-1))

    batch = tf.shape(modality)[0]
    outputs = {
        IMAGE: tf.map_fn(
            image_fn,
            (_scalar(inputs[es.IMAGE_RAW]), _scalar(inputs[es.IMAGE_DTYPE]), shapes, spacings, directions, modes),
            fn_output_signature=output_spec(tf.float32, channel_axis=channels > 1),
        ),
        MODALITY: modality,
        GRID_SPACING: tf.tile(tf.reshape(grid_spacing, [1, 3]), [batch, 1]),
        GRID_SHAPE: tf.cast(grid_shape, tf.int64),
    }
    if es.LABEL_RAW in inputs:

        def label_fn(args):
            raw, shape, spacing, direction = args
            label = volume_ops.decode_label(raw, shape)
            return finish(volume_ops.label_to_network(label, spacing, direction, grid_spacing, size))

        outputs[LABEL] = tf.map_fn(
            label_fn,
            (_scalar(inputs[es.LABEL_RAW]), shapes, spacings, directions),
            fn_output_signature=output_spec(tf.int64),
        )
    return outputs
