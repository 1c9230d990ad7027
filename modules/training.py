"""The training loop behind modules.trainer.run_fn, free of TFX so it is unit-testable.

model choice (unet3d | unet2d | resnet3d) -> distribution strategy scope (default | mirrored |
multi_worker) and precision policy -> compile (loss by name, Adam with polynomial decay, optional
XLA) -> fit on class-balanced augmented patches with callbacks: per-label Dice on whole validation
cases (sliding window; logged to TensorBoard as val_dice_label_<k> / val_mean_dice), best-weights
checkpoint, BackupAndRestore (resumes a preempted pod), early stopping, a wall-clock limit.
Classification (resnet3d): the label is one class id per case, trained on whole cases.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras  # Keras 2 explicitly: tf.keras may already be Keras 3 in TFX's process

from modules import augment, input_pipeline, losses, resnet, sliding_window, unet



def _skip_autograph_for_tf_keras() -> None:
    """AutoGraph leaves the `keras` package alone (its DoNotConvert rules) but not `tf_keras`, the
    Keras 2 that TFX uses: every Keras internal is then re-transpiled while tracing, which costs
    10-40 s per traced function on this CPU (the first fit step, the export). tf_keras is the same
    code as keras 2 and never needed conversion, so add the rule keras had."""
    from tensorflow.python.autograph.core import config as autograph_config

    rule = autograph_config.DoNotConvert("tf_keras")
    if not any(getattr(r, "_prefix", None) == "tf_keras" for r in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (rule,) + tuple(autograph_config.CONVERSION_RULES)


_skip_autograph_for_tf_keras()

MODELS = ("unet3d", "unet2d", "resnet3d")
DISTRIBUTIONS = ("default", "mirrored", "multi_worker")

DEFAULTS = {
    "model": "unet3d",  # one of MODELS
    "num_classes": 3,  # including background
    "target_shape": [32, 32, 32],  # Transform's network grid (fixed_shape mode)
    "patch_size": None,  # training patch / sliding window (X, Y, Z); None = target_shape
    "filters": [8, 16, 32],  # per level (depth = len); ResNet: per stage
    "residual": False,  # residual units in the U-Net
    "norm": "instance",  # unet.NORMS
    "loss": "dice_ce",  # losses.LOSSES ('ce' for classification)
    "batch_size": 2,  # per replica
    "learning_rate": 3e-3,
    "lr_schedule": "poly",  # 'poly' (nnU-Net: (1 - step/steps) ** 0.9) | 'constant'
    "epochs": 1,
    "seed": 0,
    "foreground_oversample": 0.33,  # share of patches centred on foreground (nnU-Net)
    "augment": True,
    "augmentation": {},  # augment.AugmentConfig field overrides
    "mixed_precision": False,  # float16 compute on GPU (bfloat16 on CPU), float32 outputs
    "xla": False,  # jit_compile the train step
    "distribution": "default",  # one of DISTRIBUTIONS
    "early_stopping_patience": 0,  # epochs without val_mean_dice gain; 0 = off
    "checkpoint": True,  # best-by-validation weights + backup for resuming, under model_run_dir
    "sliding_window_overlap": 0.5,
    "tta_mirror_axes": [],  # serving/evaluation: mean over flips of these network axes (nnU-Net)
    "val_dice_cases": 64,  # validation cases scored with per-label Dice each epoch (0 = off)
    "time_limit_minutes": 0.0,  # stop training after this wall-clock time (0 = no limit)
    "cache": True,  # keep decoded cases in memory
}


def config(custom: Optional[dict]) -> dict:
    """DEFAULTS overridden by `custom`; unknown models / distributions raise."""
    cfg = {**DEFAULTS, **(custom or {})}
    if cfg["model"] not in MODELS:
        raise ValueError(f"model {cfg['model']!r}: choose one of {MODELS}")
    if cfg["distribution"] not in DISTRIBUTIONS:
        raise ValueError(f"distribution {cfg['distribution']!r}: choose one of {DISTRIBUTIONS}")
    if not cfg.get("patch_size"):
        cfg["patch_size"] = list(cfg["target_shape"])
    return cfg


def is_classifier(cfg: dict) -> bool:
    return cfg["model"] == "resnet3d"


def strategy_for(name: str) -> tf.distribute.Strategy:
    """'default' (one device) | 'mirrored' (all local GPUs, or the CPU) | 'multi_worker'
    (MultiWorkerMirroredStrategy; workers from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"distribution {name!r}: choose one of {DISTRIBUTIONS}")


def precision_policy_name(enabled: bool) -> str:
    """float32, or mixed_float16 with a GPU (tensor cores) / mixed_bfloat16 on CPU."""
    if not enabled:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def precision_policy(enabled: bool):
    """Sets the Keras global dtype policy while models are built, then restores it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy_name(enabled))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(cfg: dict) -> keras.Model:
    """The configured network (float32 softmax output under any precision policy)."""
    args = dict(num_classes=int(cfg["num_classes"]), filters=[int(f) for f in cfg["filters"]],
                norm=cfg["norm"])
    with precision_policy(bool(cfg["mixed_precision"])):
        if cfg["model"] == "unet3d":
            return unet.build_unet3d(cfg["patch_size"], residual=bool(cfg["residual"]), **args)
        if cfg["model"] == "unet2d":
            return unet.build_unet2d_slicewise(cfg["patch_size"], residual=bool(cfg["residual"]), **args)
        return resnet.build_resnet3d(cfg["target_shape"], **args)


def compile_model(model: keras.Model, cfg: dict, total_steps: int) -> None:
    lr = float(cfg["learning_rate"])
    if cfg["lr_schedule"] == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(lr, max(1, total_steps), lr * 1e-2, power=0.9)
    elif cfg["lr_schedule"] != "constant":
        raise ValueError(f"lr_schedule {cfg['lr_schedule']!r}: 'poly' or 'constant'")
    metrics = ["accuracy"] if is_classifier(cfg) else None
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=losses.get_loss(cfg["loss"], int(cfg["num_classes"])),
                  metrics=metrics, jit_compile=bool(cfg["xla"]))


class PerLabelDice(keras.callbacks.Callback):
    """Per-case Dice of each foreground label on whole validation cases (sliding window), averaged
    over cases (a label absent from truth and prediction of a case does not count, as in
    modules.tfma_dice). Adds val_dice_label_<k> and val_mean_dice to the epoch logs, so the
    TensorBoard callback after it logs them and EarlyStopping / ModelCheckpoint can monitor them."""

    def __init__(self, cases: tf.data.Dataset, patch_size: Sequence[int], num_classes: int,
                 overlap: float = 0.5, every: int = 1):
        super().__init__()
        self.cases = cases  # (image (X, Y, Z), label (X, Y, Z)) elements
        self.patch_size = [int(p) for p in patch_size]
        self.num_classes = int(num_classes)
        self.overlap = overlap
        self.every = max(1, int(every))
        self._predict = None

    def _predictor(self):
        if self._predict is None:
            @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
            def predict(image):
                probs = sliding_window.predict(lambda x: self.model(x, training=False), image[None, ..., None],
                                               self.patch_size, self.num_classes, self.overlap)
                return tf.argmax(probs[0], axis=-1, output_type=tf.int32)
            self._predict = predict
        return self._predict

    def scores(self) -> Dict[str, float]:
        labels = range(1, self.num_classes)
        sums, counts = np.zeros(self.num_classes), np.zeros(self.num_classes)
        predict = self._predictor()
        for image, label in self.cases:
            prediction = predict(image).numpy()
            truth = label.numpy().astype(np.int32)
            for k in labels:
                t, p = truth == k, prediction == k
                denominator = t.sum() + p.sum()
                if denominator:
                    sums[k] += 2.0 * np.logical_and(t, p).sum() / denominator
                    counts[k] += 1
        out = {f"val_dice_label_{k}": float(sums[k] / counts[k]) if counts[k] else 0.0 for k in labels}
        out["val_mean_dice"] = float(np.mean([out[f"val_dice_label_{k}"] for k in labels]))
        return out

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        start = time.time()
        logs.update(self.scores())
        logging.info("epoch %d validation Dice %s (%.1f s)", epoch + 1,
                     {k: round(v, 4) for k, v in logs.items() if "dice" in k}, time.time() - start)


class TimeLimit(keras.callbacks.Callback):
    """Stops training once `minutes` of wall-clock time have passed since training began."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.start = None
        self.stopped_at_step = None

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True
            self.stopped_at_step = batch


def make_callbacks(cfg: dict, model_run_dir: str, dice_cases: Optional[tf.data.Dataset]):
    """Callbacks in dependency order: Dice first (adds the logs the others read)."""
    callbacks = []
    monitor, mode = "val_loss", "min"
    if dice_cases is not None and not is_classifier(cfg):
        callbacks.append(PerLabelDice(dice_cases, cfg["patch_size"], cfg["num_classes"],
                                      cfg["sliding_window_overlap"]))
        monitor, mode = "val_mean_dice", "max"
    if cfg["checkpoint"]:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(model_run_dir, "checkpoints", "best"), monitor=monitor, mode=mode,
            save_best_only=True, save_weights_only=True))
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(model_run_dir, "backup")))
    if int(cfg["early_stopping_patience"]) > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=int(cfg["early_stopping_patience"]),
            restore_best_weights=True))
    if float(cfg["time_limit_minutes"]) > 0:
        callbacks.append(TimeLimit(float(cfg["time_limit_minutes"])))
    callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_run_dir, "logs"), update_freq="epoch"))
    return callbacks


def fit(cfg: dict, train: tf.data.Dataset, validation: Optional[tf.data.Dataset], model_run_dir: str,
        steps: int, validation_steps: int, dice_cases: Optional[tf.data.Dataset] = None):
    """Builds (inside the strategy scope), compiles and fits the model; returns (model, history).

    train: endless (image, label) batches of the *global* batch size; steps: total train steps
    spread over cfg['epochs'] epochs.
    """
    strategy = strategy_for(cfg["distribution"])
    with strategy.scope():
        model = build_model(cfg)
        compile_model(model, cfg, steps)
    epochs = max(1, int(cfg["epochs"]))
    callbacks = make_callbacks(cfg, model_run_dir, dice_cases)
    start = time.time()
    history = model.fit(train, epochs=epochs, steps_per_epoch=max(1, steps // epochs),
                        validation_data=validation, validation_steps=validation_steps or None,
                        callbacks=callbacks, verbose=2)
    logging.info("trained %d epochs in %.0f s", len(history.epoch), time.time() - start)
    # The last weights are returned (early stopping restores its best): the validation split is
    # also where Dice is reported, so picking the best epoch on it would flatter the report.
    # checkpoints/best keeps the best-validation weights for whoever wants them.
    return model, history


def train_from_records(cfg: dict, train_files, eval_files, feature_spec: dict, model_run_dir: str,
                       steps: int, eval_steps: int):
    """Datasets from Transform's records (see modules.input_pipeline), then `fit`."""
    strategy = strategy_for(cfg["distribution"])
    global_batch = int(cfg["batch_size"]) * strategy.num_replicas_in_sync
    decoder = input_pipeline.case_decoder(feature_spec)
    train_cases = input_pipeline.cases(input_pipeline.list_files(train_files), decoder, cfg["cache"])
    eval_cases = input_pipeline.cases(input_pipeline.list_files(eval_files), decoder, cfg["cache"])
    aug = augment.AugmentConfig.from_dict(cfg["augmentation"]) if cfg["augment"] else None
    if is_classifier(cfg):
        train = input_pipeline.classification_batches(train_cases, global_batch, True, cfg["seed"], aug)
        validation = input_pipeline.classification_batches(eval_cases, global_batch, False)
        return fit(cfg, train, validation.take(max(1, eval_steps)), model_run_dir, steps, 0)
    num_classes = int(cfg["num_classes"])
    train = input_pipeline.training_patches(
        train_cases, cfg["patch_size"], global_batch, num_classes, float(cfg["foreground_oversample"]),
        aug, int(cfg["seed"]))
    validation = input_pipeline.validation_patches(eval_cases, cfg["patch_size"], global_batch, num_classes,
                                                   float(cfg["foreground_oversample"]), int(cfg["seed"]))
    dice_cases = eval_cases.take(int(cfg["val_dice_cases"])) if int(cfg["val_dice_cases"]) > 0 else None
    # One fixed patch per evaluation case (at most eval_steps batches): the same set every epoch.
    return fit(cfg, train, validation.take(max(1, eval_steps)), model_run_dir, steps, 0, dice_cases)
