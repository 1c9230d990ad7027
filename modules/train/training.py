"""The training loop behind modules.train.trainer.run_fn, free of TFX so it is unit-testable.

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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras  # Keras 2 explicitly: tf.keras may already be Keras 3 in TFX's process

from modules import progress
from modules.inference import sliding_window
from modules.metrics.dice import dice_per_label
from modules.networks import resnet, unet
from modules.settings import TrainingSettings
from modules.train import input_pipeline, losses


def _skip_autograph_for_tf_keras() -> None:
    """AutoGraph leaves the `keras` package alone (its DoNotConvert rules) but not `tf_keras`, the
    Keras 2 that TFX uses: every Keras internal is then re-transpiled while tracing, which costs
    tens of seconds per traced function on a CPU (the first fit step, the export). tf_keras is the same
    code as keras 2 and never needed conversion, so add the rule keras had."""
    from tensorflow.python.autograph.core import config as autograph_config

    rule = autograph_config.DoNotConvert("tf_keras")
    if not any(getattr(r, "_prefix", None) == "tf_keras" for r in autograph_config.CONVERSION_RULES):
        autograph_config.CONVERSION_RULES = (rule,) + tuple(autograph_config.CONVERSION_RULES)


_skip_autograph_for_tf_keras()


def config(custom: Optional[dict]) -> TrainingSettings:
    """The Trainer's custom_config (TrainingSettings as a dict), validated."""
    return TrainingSettings.model_validate(custom or {})


def is_classifier(cfg: TrainingSettings) -> bool:
    return cfg.model == "resnet3d"


# One MultiWorkerMirroredStrategy per process: it starts this worker's gRPC server (the port in
# TF_CONFIG) and joins the cluster, which can happen only once.
_MULTI_WORKER: List[tf.distribute.Strategy] = []


def strategy_for(name: str) -> tf.distribute.Strategy:
    """'default' (one device) | 'mirrored' (all local GPUs, or the CPU) | 'multi_worker'
    (MultiWorkerMirroredStrategy; the cluster and this worker's role from TF_CONFIG, the same
    instance on every call).

    Raises:
        ValueError: an unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not _MULTI_WORKER:
            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _MULTI_WORKER[0]
    raise ValueError(f"distribution {name!r}: default, mirrored or multi_worker")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True where files meant once per training run (history, the exported model) are written:
    always on one machine; under MultiWorkerMirroredStrategy only on the chief (worker 0 when
    TF_CONFIG names no chief)."""
    return bool(strategy.extended.should_checkpoint)


def sharded_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with multi-worker auto-sharding by element: the training and validation
    patches are sampled from cases, not read file by file, so sharding by file (tf.data's
    default policy) would find no files to split; by element, each worker keeps its share of
    every global batch (same seed everywhere: the workers see disjoint parts of the same
    batches, as one worker with the global batch would)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


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


def build_model(cfg: TrainingSettings) -> keras.Model:
    """The configured network (float32 softmax output under any precision policy). cfg.patch_size
    must be resolved (see `resolve_patch_size`)."""
    assert cfg.patch_size is not None, "patch_size is not resolved (see resolve_patch_size)"
    args: Dict[str, Any] = dict(
        num_classes=int(cfg.num_classes),
        filters=[int(f) for f in cfg.filters],
        norm=cfg.norm,
        in_channels=int(cfg.in_channels),
    )
    topology: Dict[str, Any] = dict(pool_sizes=cfg.pool_sizes, kernel_sizes=cfg.kernel_sizes)
    with precision_policy(bool(cfg.mixed_precision)):
        if cfg.model == "unet3d":
            return unet.build_unet3d(cfg.patch_size, residual=bool(cfg.residual), **args, **topology)
        if cfg.model == "unet2d":
            return unet.build_unet2d_slicewise(
                cfg.patch_size, residual=bool(cfg.residual), slice_axis=cfg.slice_axis, **args, **topology
            )
        return resnet.build_resnet3d(cfg.patch_size, **args)


def resolve_patch_size(cfg: TrainingSettings, grid_shape) -> TrainingSettings:
    """cfg with patch_size set: as configured, else the network grid (Transform's target_shape)."""
    if cfg.patch_size is not None:
        return cfg
    return cfg.model_copy(update={"patch_size": tuple(int(v) for v in grid_shape)})


class PolyLearningRate(keras.callbacks.Callback):
    """nnU-Net's poly schedule lr0 * (1 - progress) ** 0.9, floored at 1 % of lr0, where progress
    is the further of steps done / total steps and elapsed / time limit: a budgeted run whose
    steps are slower than planned still anneals before its time limit stops it."""

    def __init__(self, initial: float, total_steps: int, time_limit_minutes: float = 0.0):
        super().__init__()
        self.initial = float(initial)
        self.total_steps = max(1, int(total_steps))
        self.seconds = float(time_limit_minutes) * 60.0
        self.start: Optional[float] = None  # set by on_train_begin

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def progress(self, step: int) -> float:
        by_time = 0.0
        if self.seconds > 0:
            assert self.start is not None, "progress by time needs on_train_begin first"
            by_time = (time.time() - self.start) / self.seconds
        return min(1.0, max(step / self.total_steps, by_time))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.backend.get_value(self.model.optimizer.iterations))
        lr = max(self.initial * (1.0 - self.progress(step)) ** 0.9, self.initial * 1e-2)
        keras.backend.set_value(self.model.optimizer.learning_rate, lr)


def compile_model(model: keras.Model, cfg: TrainingSettings) -> None:
    """Adam at cfg.learning_rate (the poly schedule is a callback, see PolyLearningRate)."""
    metrics = ["accuracy"] if is_classifier(cfg) else None
    model.compile(
        optimizer=keras.optimizers.Adam(float(cfg.learning_rate)),
        loss=losses.get_loss(cfg.loss, int(cfg.num_classes)),
        metrics=metrics,
        jit_compile=bool(cfg.xla),
    )


class PerLabelDice(keras.callbacks.Callback):
    """Per-case Dice of each foreground label on whole validation cases (sliding window), averaged
    over cases (modules.metrics.dice.dice_per_label: a label absent from truth and prediction of a case
    does not count). Adds val_dice_label_<k> and val_mean_dice to the epoch logs, so the
    TensorBoard callback after it logs them and EarlyStopping / ModelCheckpoint can monitor them."""

    def __init__(
        self, cases: tf.data.Dataset, patch_size: Sequence[int], num_classes: int, overlap: float = 0.5, every: int = 1
    ):
        super().__init__()
        self.cases = cases  # (image (X, Y, Z, C), label (X, Y, Z)) elements
        self.patch_size = [int(p) for p in patch_size]
        self.num_classes = int(num_classes)
        self.overlap = overlap
        self.every = max(1, int(every))
        self._predict = None

    def _predictor(self):
        if self._predict is None:

            @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
            def predict(image):
                probs = sliding_window.predict(
                    lambda x: self.model(x, training=False),
                    image[None],
                    self.patch_size,
                    self.num_classes,
                    self.overlap,
                )
                return tf.argmax(probs[0], axis=-1, output_type=tf.int32)

            self._predict = predict
        return self._predict

    def scores(self) -> Dict[str, float]:
        labels = list(range(1, self.num_classes))
        per_case: Dict[int, List[float]] = {k: [] for k in labels}
        predict = self._predictor()
        for image, label in self.cases:
            if image.shape.rank == 3:  # a single-channel case without its channel axis
                image = image[..., None]
            scores = dice_per_label(label.numpy().astype(np.int32), predict(image).numpy(), labels)
            for k, value in scores.items():
                if not np.isnan(value):
                    per_case[k].append(value)
        out = {f"val_dice_label_{k}": float(np.mean(v)) if v else 0.0 for k, v in per_case.items()}
        out["val_mean_dice"] = float(np.mean([out[f"val_dice_label_{k}"] for k in labels]))
        return out

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        start = time.time()
        logs.update(self.scores())
        logging.info(
            "epoch %d validation Dice %s (%.1f s)",
            epoch + 1,
            {k: round(v, 4) for k, v in logs.items() if "dice" in k},
            time.time() - start,
        )


class LearningRateLog(keras.callbacks.Callback):
    """Adds 'lr', the optimizer's learning rate at the end of the epoch, to the epoch logs, so the
    History (history.json) and TensorBoard (epoch_lr) callbacks after it record it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        lr = self.model.optimizer.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(self.model.optimizer.iterations)
        logs["lr"] = float(keras.backend.get_value(lr))


# Per-epoch training history (Keras History plus 'epoch'), written into the model run directory;
# the Trainer copies it beside the exported model for the Evaluator's training curves.
HISTORY_FILE = "history.json"


def history_record(history: keras.callbacks.History) -> Dict[str, list]:
    """{'epoch': [0-based epoch numbers], metric: [one float per epoch], ...} of a Keras History
    (loss, val_loss, val_dice_label_<k>, val_mean_dice, lr, ... as logged)."""
    record: Dict[str, list] = {"epoch": [int(e) for e in history.epoch]}
    for key, values in history.history.items():
        record[key] = [float(v) for v in values]
    return record


def write_history(history: keras.callbacks.History, path: str) -> None:
    """history_record(history) as JSON at `path` (any tf.io.gfile path)."""
    import json

    with tf.io.gfile.GFile(path, "w") as fh:
        fh.write(json.dumps(history_record(history), indent=1))


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


class TrainingProgress(keras.callbacks.Callback):
    """Progress over the planned `total_steps` (modules/progress.py: a bar with rate and ETA on a
    terminal, plain lines every half minute otherwise) with the last loss, the last validation
    mean Dice and, under a time limit, the time left of it (the run stops at whichever comes
    first). Replaces Keras's own line per epoch."""

    def __init__(self, total_steps: int, time_limit_minutes: float = 0.0, label: str = "Trainer: steps"):
        super().__init__()
        self.total_steps = max(1, int(total_steps))
        self.seconds = float(time_limit_minutes) * 60.0
        self.label = label
        self.progress: Optional[progress.Progress] = None
        self.start = 0.0
        self.val_dice: Optional[float] = None
        self.loss: Optional[float] = None
        self._postfix_at = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.time()
        self.progress = progress.Progress(self.total_steps, self.label, unit="step")

    def postfix(self, logs: Optional[dict]) -> str:
        """'loss 0.412, val Dice 0.83, time limit in 01:12' from what is known so far."""
        parts = []
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.val_dice is not None:
            parts.append(f"val Dice {self.val_dice:.3f}")
        if self.seconds > 0:
            left = max(0, int(self.seconds - (time.time() - self.start)))
            parts.append(f"time limit in {left // 60:02d}:{left % 60:02d}")
        return ", ".join(parts)

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is None:
            return
        now = time.time()
        if now - self._postfix_at >= 1.0:  # the text once a second: Keras times every batch hook
            self._postfix_at = now
            self.progress.update(1, self.postfix(logs))
        else:
            self.progress.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_mean_dice" in logs:
            self.val_dice = float(logs["val_mean_dice"])

    def on_train_end(self, logs=None):
        if self.progress is not None:
            self.progress.update(0, self.postfix(logs))  # the last epoch's Dice in the final line
            self.progress.close()


def make_callbacks(cfg: TrainingSettings, model_run_dir: str, dice_cases: Optional[tf.data.Dataset]):
    """Callbacks in dependency order: Dice first (adds the logs the others read)."""
    callbacks = []
    if cfg.lr_schedule == "poly":
        callbacks.append(PolyLearningRate(cfg.learning_rate, cfg.train_steps, cfg.time_limit_minutes))
    monitor, mode = "val_loss", "min"
    if dice_cases is not None and not is_classifier(cfg):
        assert cfg.patch_size is not None, "patch_size is not resolved (see resolve_patch_size)"
        callbacks.append(PerLabelDice(dice_cases, cfg.patch_size, cfg.num_classes, cfg.sliding_window_overlap))
        monitor, mode = "val_mean_dice", "max"
    if cfg.checkpoint:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                os.path.join(model_run_dir, "checkpoints", "best"),
                monitor=monitor,
                mode=mode,
                save_best_only=True,
                save_weights_only=True,
            )
        )
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(model_run_dir, "backup")))
    if int(cfg.early_stopping_patience) > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, mode=mode, patience=int(cfg.early_stopping_patience), restore_best_weights=True
            )
        )
    if float(cfg.time_limit_minutes) > 0:
        callbacks.append(TimeLimit(float(cfg.time_limit_minutes)))
    callbacks.append(LearningRateLog())
    callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_run_dir, "logs"), update_freq="epoch"))
    epochs = max(1, int(cfg.epochs))  # fit runs steps // epochs per epoch: count what will run
    callbacks.append(TrainingProgress(max(1, int(cfg.train_steps) // epochs) * epochs, float(cfg.time_limit_minutes)))
    return callbacks


def fit(
    cfg: TrainingSettings,
    train: tf.data.Dataset,
    validation: Optional[tf.data.Dataset],
    model_run_dir: str,
    validation_steps: int = 0,
    dice_cases: Optional[tf.data.Dataset] = None,
):
    """Builds (inside the strategy scope), compiles and fits the model; returns (model, history).

    train: endless (image, label) batches of the *global* batch size; cfg.train_steps steps in
    all, spread over cfg.epochs epochs. cfg.patch_size must be resolved.
    distribution 'multi_worker': every worker (TF_CONFIG) calls this with the same datasets and
    model_run_dir; each trains on its share of every global batch (`sharded_by_data`) and only
    the chief writes history.json (`is_chief`).
    """
    steps = int(cfg.train_steps)
    strategy = strategy_for(cfg.distribution)
    with strategy.scope():
        model = build_model(cfg)
        compile_model(model, cfg)
    if cfg.distribution == "multi_worker":
        train = sharded_by_data(train)
        validation = sharded_by_data(validation) if validation is not None else None
    epochs = max(1, int(cfg.epochs))
    # Keras's checkpoint, backup and TensorBoard callbacks write from the chief only themselves
    # (other workers into temporary directories they delete).
    callbacks = make_callbacks(cfg, model_run_dir, dice_cases)
    start = time.time()
    history = model.fit(
        train,
        epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        validation_data=validation,
        validation_steps=validation_steps or None,
        callbacks=callbacks,
        verbose=0,  # TrainingProgress shows steps, loss and Dice instead of a line per epoch
    )
    logging.info("trained %d epochs in %.0f s", len(history.epoch), time.time() - start)
    if is_chief(strategy):
        tf.io.gfile.makedirs(model_run_dir)
        write_history(history, os.path.join(model_run_dir, HISTORY_FILE))
    # The last weights are returned (early stopping restores its best): the validation split is
    # also where Dice is reported, so picking the best epoch on it would flatter the report.
    # checkpoints/best keeps the best-validation weights for whoever wants them.
    return model, history


def train_from_records(cfg: TrainingSettings, train_files, eval_files, feature_spec: dict, model_run_dir: str):
    """Datasets from Transform's records (see modules.train.input_pipeline), then `fit`.
    Returns (model, history, cfg with the patch size resolved)."""
    grid = getattr(feature_spec["image"], "shape", None)  # None: whole-volume Transform output
    if cfg.patch_size is None and not grid:
        raise ValueError("Transform wrote whole volumes (variable size): set training.patch_size")
    cfg = resolve_patch_size(cfg, grid[:3] if grid else grid)
    channels = int(grid[3]) if grid and len(grid) == 4 else 1
    if channels != int(cfg.in_channels):
        raise ValueError(
            f"Transform wrote {channels} image channel(s) but training.in_channels is {cfg.in_channels}: "
            "set both from the plan (or transform.channels and training.in_channels alike)"
        )
    eval_steps = int(cfg.eval_steps)
    strategy = strategy_for(cfg.distribution)
    global_batch = int(cfg.batch_size) * strategy.num_replicas_in_sync
    decoder = input_pipeline.case_decoder(feature_spec)
    train_cases = input_pipeline.cases(input_pipeline.list_files(train_files), decoder, cfg.cache)
    eval_cases = input_pipeline.cases(input_pipeline.list_files(eval_files), decoder, cfg.cache)
    aug = cfg.augmentation if cfg.augment else None
    if is_classifier(cfg):
        train = input_pipeline.classification_batches(train_cases, global_batch, True, cfg.seed, aug)
        validation = input_pipeline.classification_batches(eval_cases, global_batch, False)
        return fit(cfg, train, validation.take(max(1, eval_steps)), model_run_dir) + (cfg,)
    num_classes = int(cfg.num_classes)
    assert cfg.patch_size is not None  # resolve_patch_size set it (or raised above)
    train = input_pipeline.training_patches(
        train_cases, cfg.patch_size, global_batch, num_classes, float(cfg.foreground_oversample), aug, int(cfg.seed)
    )
    validation = input_pipeline.validation_patches(
        eval_cases, cfg.patch_size, global_batch, num_classes, float(cfg.foreground_oversample), int(cfg.seed)
    )
    dice_cases = eval_cases.take(int(cfg.val_dice_cases)) if int(cfg.val_dice_cases) > 0 else None
    # One fixed patch per evaluation case (at most eval_steps batches): the same set every epoch.
    return fit(cfg, train, validation.take(max(1, eval_steps)), model_run_dir, 0, dice_cases) + (cfg,)
