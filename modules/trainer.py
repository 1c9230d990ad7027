"""TFX Trainer module: `run_fn` trains the U-Net and exports a SavedModel whose signatures
apply Transform's graph, so serving sees exactly the training preprocessing.

Signatures of the exported model:
  serving_default(image_raw, image_dtype, image_shape, spacing, direction, modality)
      raw voxels of a batch of volumes -> mask (B, Xmax, Ymax, Zmax) uint8 on each input's own
      grid (zero-padded to the largest in the batch) and mask_shape (B, 3).
      Inputs, one entry per volume: image_raw string (voxel bytes, C order over (X, Y, Z), little
      endian), image_dtype string 'uint8' | 'int16' | 'float32' (send int16 for integral data,
      e.g. CT in HU: half the bytes of float32), image_shape int64 (3,) voxels, spacing float32
      (3,) mm per array axis, direction float32 (9,) row-major 3x3 direction cosines (columns =
      array axes, RAS+), modality string ('CT', 'MR', ...). Client: pipeline/predict.py.
  serving_examples(examples): the same from serialized tf.Examples (as ingested).
  evaluate(examples): probabilities on the network grid, for TFMA.
  transform_features(examples): Transform's outputs, for TFMA's labels.
  transform_raw(the serving_default inputs): Transform's outputs for raw voxels, i.e. exactly
      the network input serving_default computes internally (for skew checks).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import tensorflow as tf
import tensorflow_transform as tft

from modules import features as es
from modules import sliding_window, training, volume_ops
from modules.preprocessing import GRID_SHAPE, GRID_SPACING, IMAGE, LABEL

_log = logging.getLogger(__name__)

DEFAULTS = training.DEFAULTS  # every training knob, documented in modules/training.py
SLIDING_WINDOW_OVERLAP = 0.5


def training_config(custom_config) -> dict:
    return training.config(custom_config)


class _ExportModule(tf.Module):
    """Holds the trained model and the Transform layer; defines the serving signatures."""

    def __init__(self, model, tf_transform_output: tft.TFTransformOutput, mirror_axes: Sequence[int] = ()):
        super().__init__()
        self.model = model
        self._mirror_axes = tuple(int(a) for a in mirror_axes)
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._raw_spec = tf_transform_output.raw_feature_spec()
        self._serving_spec = {k: v for k, v in self._raw_spec.items() if k in es.SERVING_FEATURES}

    def _predict(self, image):
        """(B, X, Y, Z) transformed image -> (B, X, Y, Z, C) float32 probabilities: the network
        over Gaussian-weighted sliding windows of its input (patch) size, so grids larger than the
        training patch work (one window when they are equal)."""
        patch_size = self.model.input_shape[1:4]
        num_classes = self.model.output_shape[-1]
        network = sliding_window.mirrored(lambda x: self.model(x, training=False), self._mirror_axes)
        return sliding_window.predict(network, tf.expand_dims(image, -1),
                                      patch_size, num_classes, SLIDING_WINDOW_OVERLAP)

    def _masks(self, raw_features):
        transformed = self.tft_layer(raw_features)
        probabilities = self._predict(transformed[IMAGE])
        shapes = tf.cast(raw_features[es.IMAGE_SHAPE], tf.int32)
        max_shape = tf.reduce_max(shapes, axis=0)

        def one(args):
            # Inverse of Transform's spatial path: un-crop/pad, resample to the raw grid, undo
            # the canonical reorientation (modules.volume_ops.probabilities_to_mask).
            probs, shape, spacing, direction, grid_spacing, grid_shape = args
            mask = volume_ops.probabilities_to_mask(probs, shape, spacing, direction, grid_spacing,
                                                    grid_shape)
            return tf.pad(mask, tf.stack([tf.zeros(3, tf.int32), max_shape - shape], axis=1))

        masks = tf.map_fn(one, (probabilities, shapes, raw_features[es.SPACING],
                                raw_features[es.DIRECTION], transformed[GRID_SPACING],
                                transformed[GRID_SHAPE]), fn_output_signature=tf.uint8)
        return {"mask": masks, "mask_shape": tf.cast(shapes, tf.int64)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=es.IMAGE_RAW),
        tf.TensorSpec([None], tf.string, name=es.IMAGE_DTYPE),
        tf.TensorSpec([None, 3], tf.int64, name=es.IMAGE_SHAPE),
        tf.TensorSpec([None, 3], tf.float32, name=es.SPACING),
        tf.TensorSpec([None, 9], tf.float32, name=es.DIRECTION),
        tf.TensorSpec([None], tf.string, name=es.MODALITY),
    ])
    def serve_raw(self, image_raw, image_dtype, image_shape, spacing, direction, modality):
        return self._masks({es.IMAGE_RAW: image_raw, es.IMAGE_DTYPE: image_dtype,
                            es.IMAGE_SHAPE: image_shape, es.SPACING: spacing,
                            es.DIRECTION: direction, es.MODALITY: modality})

    @tf.function(input_signature=serve_raw.input_signature)
    def transform_raw(self, image_raw, image_dtype, image_shape, spacing, direction, modality):
        return self.tft_layer({es.IMAGE_RAW: image_raw, es.IMAGE_DTYPE: image_dtype,
                               es.IMAGE_SHAPE: image_shape, es.SPACING: spacing,
                               es.DIRECTION: direction, es.MODALITY: modality})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return self._masks(tf.io.parse_example(examples, self._serving_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def evaluate(self, examples):
        transformed = self.tft_layer(tf.io.parse_example(examples, self._serving_spec))
        return {"probabilities": self._predict(transformed[IMAGE])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(self, examples):
        return self.tft_layer(tf.io.parse_example(examples, self._raw_spec))


class _ClassifierExportModule(_ExportModule):
    """Same signatures for a classifier (modules.resnet): serving_default / serving_examples return
    probabilities (B, C) and class_id (B,); evaluate returns probabilities (B, C) for TFMA."""

    def _predict(self, image):
        return self.model(tf.expand_dims(image, -1), training=False)

    def _masks(self, raw_features):
        probabilities = self._predict(self.tft_layer(raw_features)[IMAGE])
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1)}


def export(model, tf_transform_output: tft.TFTransformOutput, export_dir: str,
           mirror_axes: Sequence[int] = ()) -> None:
    """Saves the model with the signatures described in the module docstring. mirror_axes:
    segmentation only, test-time mirroring over these network axes inside every signature
    (sliding_window.mirrored), so serving and evaluation see the same predictions."""
    classifier = len(model.output_shape) == 2  # (B, C): one class per case
    module = (_ClassifierExportModule(model, tf_transform_output) if classifier
              else _ExportModule(model, tf_transform_output, mirror_axes))
    signatures = {
        "serving_default": module.serve_raw.get_concrete_function(),
        "serving_examples": module.serve_examples.get_concrete_function(),
        "evaluate": module.evaluate.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function(),
        "transform_raw": module.transform_raw.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor)."""
    cfg = training_config(fn_args.custom_config)
    tf.keras.utils.set_random_seed(cfg["seed"])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    # Patches, augmentation, callbacks (per-label Dice, checkpoints, early stopping), strategy:
    # modules/training.py. Its input pipeline reads whole-volume Transform outputs too, but the
    # serving signatures above take the fixed grid: fail before training, not at export.
    if not isinstance(tf_transform_output.transformed_feature_spec()[IMAGE], tf.io.FixedLenFeature):
        raise ValueError("Transform ran with spatial_mode='whole_volume' (variable-size volumes): the "
                         "exported signatures need spatial_mode='fixed_shape' (train on patches of it "
                         "with patch_size; serving uses sliding windows over the grid)")
    model_run_dir = fn_args.model_run_dir or os.path.dirname(fn_args.serving_model_dir)
    model, _ = training.train_from_records(
        cfg, fn_args.train_files, fn_args.eval_files, tf_transform_output.transformed_feature_spec(),
        model_run_dir, int(fn_args.train_steps), int(fn_args.eval_steps))
    export(model, tf_transform_output, fn_args.serving_model_dir, cfg["tta_mirror_axes"])
    _log.info("exported model to %s", fn_args.serving_model_dir)
