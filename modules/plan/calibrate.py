"""Step time of a planned network, measured on this machine: the planner's cost model.

Builds the network exactly as the Trainer will (modules.train.training.build_model / compile_model),
then times a few training steps on random patches of the planned size. The first two steps
trace and compile the graph and are not counted.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict

import numpy as np

_log = logging.getLogger(__name__)


# Timing stops once this much time went into timed steps: a network far too slow for the budget
# is known to be so after one step, and the planner will shrink it anyway.
MAX_TIMED_SECONDS = 15.0


def measure_step_seconds(training: Dict, steps: int = 4, seed: int = 0) -> float:
    """Seconds per training step of the network `training` describes (TrainingSettings fields;
    patch_size required) on random inputs: the fastest of `steps` timed steps (fewer when they
    add up to MAX_TIMED_SECONDS), since other work on a shared machine only ever adds time (the
    minimum is the repeatable figure).

    Raises:
      ValueError: training has no patch_size.
    """
    import tensorflow as tf

    from modules.settings import TrainingSettings
    from modules.train import training as training_lib

    cfg = TrainingSettings.model_validate(training)
    if cfg.patch_size is None:
        raise ValueError("calibration needs a patch_size")
    tf.keras.backend.clear_session()
    model = training_lib.build_model(cfg)
    training_lib.compile_model(model, cfg)
    rng = np.random.default_rng(seed)
    batch = int(cfg.batch_size)
    image = rng.standard_normal((batch, *cfg.patch_size, int(cfg.in_channels)), dtype=np.float32)
    label = rng.integers(0, cfg.num_classes, (batch, *cfg.patch_size)).astype(np.int32)
    for _ in range(2):  # trace + compile, then oneDNN's first-call primitive creation
        model.train_on_batch(image, label)
    times = []
    for _ in range(max(1, int(steps))):
        start = time.perf_counter()
        model.train_on_batch(image, label)
        times.append(time.perf_counter() - start)
        if sum(times) > MAX_TIMED_SECONDS:
            break
    seconds = float(np.min(times))
    _log.info(
        "calibration: %s patch %s batch %d filters %s %s: %.3f s/step",
        cfg.model,
        list(cfg.patch_size),
        batch,
        list(cfg.filters),
        "mixed precision" if cfg.mixed_precision else "float32",
        seconds,
    )
    del model
    tf.keras.backend.clear_session()
    return seconds


def step_timer(base_training: Dict, steps: int = 4) -> Callable[[Dict], float]:
    """A planner `step_seconds` callable: the planner's network fields over `base_training`."""

    def step_seconds(network: Dict) -> float:
        return measure_step_seconds({**base_training, **network}, steps)

    return step_seconds
