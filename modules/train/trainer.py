"""TFX Trainer module: `run_fn` trains the U-Net and exports a SavedModel whose signatures
apply Transform's graph, so serving sees exactly the training preprocessing.

Signatures of the exported model:
  serving_default(image_raw, image_dtype, image_shape, spacing, direction, modality)
      raw voxels of a batch of volumes -> mask (B, Xmax, Ymax, Zmax) uint8 on each input's own
      grid (zero-padded to the largest in the batch) and mask_shape (B, 3).
      Inputs, one entry per volume: image_raw string (voxel bytes, C order over (X, Y, Z), or
      (X, Y, Z, C) channels last for a model of C > 1 channels (model_inputs.json), little
      endian), image_dtype string 'uint8' | 'int16' | 'float32' (send int16 for integral data,
      e.g. CT in HU: half the bytes of float32), image_shape int64 (3,) voxels, spacing float32
      (3,) mm per array axis, direction float32 (9,) row-major 3x3 direction cosines (columns =
      array axes, RAS+), modality string ('CT', 'MR', ...; one per channel joined by ',', or ''
      for the model's own). Client: pipeline/client/predict.py.
  serving_examples(examples): the same from serialized tf.Examples (as ingested).
  evaluate(examples): probabilities on the network grid, for TFMA.
  transform_features(examples): Transform's outputs, for TFMA's labels.
  transform_raw(the serving_default inputs): Transform's outputs for raw voxels, i.e. exactly
      the network input serving_default computes internally (for skew checks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_transform as tft

from modules import features as es
from modules.inference import sliding_window
from modules.settings import TrainingSettings
from modules.train import training
from modules.transform import volume_ops
from modules.transform.preprocessing import GRID_SHAPE, GRID_SPACING, IMAGE

_log = logging.getLogger(__name__)

# Written beside the SavedModel (TF Serving ignores assets.extra): what the model was trained on.
MODEL_INPUTS_FILE = "model_inputs.json"
PLAN_FILE = "plan.json"


def trainer_config(custom_config: Optional[dict]) -> Tuple[TrainingSettings, Dict[str, Any], Dict[str, Any]]:
    """The Trainer's custom_config: {'training': TrainingSettings, 'inputs': {'modalities': [...]},
    'plan': the plan it came from ({} without planning)} -> (settings, inputs, plan)."""
    custom = dict(custom_config or {})
    unknown = set(custom) - {"training", "inputs", "plan"}
    if unknown:
        raise ValueError(f"Trainer custom_config: unknown keys {sorted(unknown)}")
    inputs = dict(custom.get("inputs") or {})
    inputs.setdefault("modalities", [])
    return training.config(custom.get("training")), inputs, dict(custom.get("plan") or {})


def _raw_features(image_raw, image_dtype, image_shape, spacing, direction, modality) -> Dict[str, tf.Tensor]:
    """serving_default's inputs keyed as the ingested tf.Example's features (modules/features.py)."""
    return {
        es.IMAGE_RAW: image_raw,
        es.IMAGE_DTYPE: image_dtype,
        es.IMAGE_SHAPE: image_shape,
        es.SPACING: spacing,
        es.DIRECTION: direction,
        es.MODALITY: modality,
    }


def _with_channel_axis(image: tf.Tensor) -> tf.Tensor:
    """Transform's (B, X, Y, Z) single-channel image gets the channel axis the network takes;
    (B, X, Y, Z, C) is already channels last."""
    return tf.expand_dims(image, -1) if image.shape.rank == 4 else image


class _ExportModule(tf.Module):
    """Holds the trained model and the Transform layer; defines the serving signatures."""

    def __init__(
        self,
        model,
        tf_transform_output: tft.TFTransformOutput,
        mirror_axes: Sequence[int] = (),
        overlap: float = 0.5,
        modalities: Sequence[str] = (),
    ):
        super().__init__()
        self.model = model
        self._mirror_axes = tuple(int(a) for a in mirror_axes)
        self._overlap = float(overlap)
        self._modalities = tuple(str(m) for m in modalities)
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._raw_spec = tf_transform_output.raw_feature_spec()
        self._serving_spec = {k: v for k, v in self._raw_spec.items() if k in es.SERVING_FEATURES}

    def _predict(self, image):
        """(B, X, Y, Z[, Cin]) transformed image -> (B, X, Y, Z, C) float32 probabilities: the network
        over Gaussian-weighted sliding windows of its input (patch) size, so grids larger than the
        training patch work (one window when they are equal)."""
        patch_size = self.model.input_shape[1:4]
        num_classes = self.model.output_shape[-1]
        network = sliding_window.mirrored(lambda x: self.model(x, training=False), self._mirror_axes)
        return sliding_window.predict(network, _with_channel_axis(image), patch_size, num_classes, self._overlap)

    def _checked_modality(self, modality):
        """The request's modality strings, '' filled with the model's own when it was trained on
        one; a modality the model was not trained on is refused (InvalidArgumentError): its
        normalisation would be another one's, a silently wrong mask."""
        if not self._modalities:
            return modality
        default = self._modalities[0] if len(self._modalities) == 1 else ""
        filled = tf.where(tf.equal(modality, ""), default, modality)
        known = tf.reduce_any(tf.equal(filled[:, None], tf.constant(self._modalities)[None, :]), axis=1)
        check = tf.debugging.Assert(
            tf.reduce_all(known),
            [
                f"modality refused: this model was trained on {' and '.join(self._modalities)}; the request says",
                filled,
                "(send an empty modality to use the model's own one)",
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(filled)

    def _with_modality(self, raw_features):
        return {**raw_features, es.MODALITY: self._checked_modality(raw_features[es.MODALITY])}

    def _segment(self, raw_features):
        """Raw features -> {'mask' (B, Xmax, Ymax, Zmax) uint8 on each input's grid, 'mask_shape'}."""
        raw_features = self._with_modality(raw_features)
        transformed = self.tft_layer(raw_features)
        probabilities = self._predict(transformed[IMAGE])
        shapes = tf.cast(raw_features[es.IMAGE_SHAPE], tf.int32)
        max_shape = tf.reduce_max(shapes, axis=0)

        def one(args):
            # Inverse of Transform's spatial path: un-crop/pad, resample to the raw grid, undo
            # the canonical reorientation (modules.transform.volume_ops.probabilities_to_mask).
            probs, shape, spacing, direction, grid_spacing, grid_shape = args
            mask = volume_ops.probabilities_to_mask(probs, shape, spacing, direction, grid_spacing, grid_shape)
            return tf.pad(mask, tf.stack([tf.zeros(3, tf.int32), max_shape - shape], axis=1))

        masks = tf.map_fn(
            one,
            (
                probabilities,
                shapes,
                raw_features[es.SPACING],
                raw_features[es.DIRECTION],
                transformed[GRID_SPACING],
                transformed[GRID_SHAPE],
            ),
            fn_output_signature=tf.uint8,
        )
        return {"mask": masks, "mask_shape": tf.cast(shapes, tf.int64)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=es.IMAGE_RAW),
            tf.TensorSpec([None], tf.string, name=es.IMAGE_DTYPE),
            tf.TensorSpec([None, 3], tf.int64, name=es.IMAGE_SHAPE),
            tf.TensorSpec([None, 3], tf.float32, name=es.SPACING),
            tf.TensorSpec([None, 9], tf.float32, name=es.DIRECTION),
            tf.TensorSpec([None], tf.string, name=es.MODALITY),
        ]
    )
    def serve_raw(self, image_raw, image_dtype, image_shape, spacing, direction, modality):
        return self._segment(_raw_features(image_raw, image_dtype, image_shape, spacing, direction, modality))

    @tf.function(input_signature=serve_raw.input_signature)
    def transform_raw(self, image_raw, image_dtype, image_shape, spacing, direction, modality):
        raw = _raw_features(image_raw, image_dtype, image_shape, spacing, direction, modality)
        return self.tft_layer(self._with_modality(raw))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return self._segment(tf.io.parse_example(examples, self._serving_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def evaluate(self, examples):
        transformed = self.tft_layer(self._with_modality(tf.io.parse_example(examples, self._serving_spec)))
        return {"probabilities": self._predict(transformed[IMAGE])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(self, examples):
        return self.tft_layer(tf.io.parse_example(examples, self._raw_spec))


class _ClassifierExportModule(_ExportModule):
    """Same signatures for a classifier (modules.networks.resnet): serving_default / serving_examples return
    probabilities (B, C) and class_id (B,); evaluate returns probabilities (B, C) for TFMA."""

    def _predict(self, image):
        return self.model(_with_channel_axis(image), training=False)

    def _segment(self, raw_features):
        probabilities = self._predict(self.tft_layer(self._with_modality(raw_features))[IMAGE])
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1)}


def export(
    model,
    tf_transform_output: tft.TFTransformOutput,
    export_dir: str,
    mirror_axes: Sequence[int] = (),
    overlap: float = 0.5,
    modalities: Sequence[str] = (),
    plan: Optional[dict] = None,
) -> None:
    """Saves the model with the signatures described in the module docstring. mirror_axes:
    segmentation only, test-time mirroring over these network axes inside every signature
    (sliding_window.mirrored), so serving and evaluation see the same predictions. modalities:
    what the model was trained on (requests naming another are refused; '' means the model's).
    `assets.extra/` gets model_inputs.json and the plan, for clients and people (run_fn adds the
    training history.json)."""
    classifier = len(model.output_shape) == 2  # (B, C): one class per case
    module = (
        _ClassifierExportModule(model, tf_transform_output, modalities=modalities)
        if classifier
        else _ExportModule(model, tf_transform_output, mirror_axes, overlap, modalities)
    )
    signatures = {
        "serving_default": module.serve_raw.get_concrete_function(),
        "serving_examples": module.serve_examples.get_concrete_function(),
        "evaluate": module.evaluate.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function(),
        "transform_raw": module.transform_raw.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    inputs = {
        "channels": int(model.input_shape[-1]),
        "modalities": list(modalities),
        "patch_size": list(model.input_shape[1:4]),
        "num_classes": int(model.output_shape[-1]),
        "tta_mirror_axes": list(mirror_axes),
        "sliding_window_overlap": overlap,
    }
    with tf.io.gfile.GFile(os.path.join(extra, MODEL_INPUTS_FILE), "w") as fh:
        fh.write(json.dumps(inputs, indent=2))
    if plan:
        with tf.io.gfile.GFile(os.path.join(extra, PLAN_FILE), "w") as fh:
            fh.write(json.dumps(plan, indent=2))


def read_model_inputs(export_dir: str) -> Dict[str, Any]:
    """model_inputs.json of an exported model ({} for models exported without it)."""
    path = os.path.join(export_dir, "assets.extra", MODEL_INPUTS_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as fh:
        return json.loads(fh.read())


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor). custom_config: see `trainer_config`; the
    training settings' train_steps / eval_steps are authoritative (the plan sets them)."""
    cfg, inputs, plan = trainer_config(fn_args.custom_config)
    tf.keras.utils.set_random_seed(cfg.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    # The serving signatures take the fixed grid: fail before training, not at export.
    if not isinstance(tf_transform_output.transformed_feature_spec()[IMAGE], tf.io.FixedLenFeature):
        raise ValueError(
            "Transform ran with spatial_mode='whole_volume' (variable-size volumes): the "
            "exported signatures need spatial_mode='fixed_shape' (train on patches of it "
            "with patch_size; serving uses sliding windows over the grid)"
        )
    model_run_dir = fn_args.model_run_dir or os.path.dirname(fn_args.serving_model_dir)
    model, _, cfg = training.train_from_records(
        cfg, fn_args.train_files, fn_args.eval_files, tf_transform_output.transformed_feature_spec(), model_run_dir
    )
    chief = training.is_chief(training.strategy_for(cfg.distribution))
    # Under MultiWorkerMirroredStrategy every worker takes part in saving (its variables are
    # read collectively), but only the chief's copy is the model; the others save to a scratch
    # folder and drop it, as TensorFlow's multi-worker guide does.
    export_dir = fn_args.serving_model_dir if chief else tempfile.mkdtemp(prefix="medtfx-worker-export-")
    export(
        model,
        tf_transform_output,
        export_dir,
        cfg.tta_mirror_axes,
        cfg.sliding_window_overlap,
        inputs["modalities"],
        plan,
    )
    if not chief:
        shutil.rmtree(export_dir, ignore_errors=True)
        return
    history = os.path.join(model_run_dir, training.HISTORY_FILE)
    if tf.io.gfile.exists(history):  # beside the model: the Evaluator draws the training curves from it
        extra = os.path.join(fn_args.serving_model_dir, "assets.extra", training.HISTORY_FILE)
        tf.io.gfile.copy(history, extra, overwrite=True)
    _log.info("exported model to %s", fn_args.serving_model_dir)
