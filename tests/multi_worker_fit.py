"""One training worker for tests/test_multi_worker.py: the Trainer's fit path
(modules/train/training.py) on tiny MR phantoms, then per-label Dice of the trained model on
held-out phantoms (sliding window, as validation scores it).

    TF_CONFIG='{"cluster": ..., "task": ...}' python -m tests.multi_worker_fit OUT_DIR DISTRIBUTION STEPS

Writes OUT_DIR/result-<task type>-<task index>.json: {"dice": {label: Dice}, "mean_dice",
"replicas", "chief"}. Every worker writes one; the model run directory is OUT_DIR/run (shared,
as a cluster's workers share the pipeline root).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

GRID = (24, 24, 16)  # voxels per canonical axis after downsampling each phantom
PATCH = (16, 16, 16)
TRAIN_CASES, EVAL_CASES = 8, 3
# The same global batch however many workers (batch_size is per replica): one worker and two
# then take the same optimisation steps, so their models should score alike.
GLOBAL_BATCH = 4


def workers() -> int:
    """Workers in TF_CONFIG's cluster (1 without TF_CONFIG): one CPU replica each."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return max(1, sum(len(tasks) for tasks in cluster.values()))


def phantom_case(index: int, seed: int):
    """An MR phantom resampled (nearest voxel) onto GRID, z-scored: (image float32, label uint8)."""
    from modules.io.volume import to_canonical
    from pipeline.tools.phantoms import make_phantom

    phantom = make_phantom(index, seed, modality="MR")
    image, _ = to_canonical(phantom.image, phantom.affine)
    label, _ = to_canonical(phantom.label, phantom.affine)
    at = np.ix_(*[np.linspace(0, n - 1, g).round().astype(int) for n, g in zip(image.shape, GRID)])
    image = image[at].astype(np.float32)
    return (image - image.mean()) / image.std(), label[at].astype(np.uint8)


def cases(indices, seed: int = 5):
    import tensorflow as tf

    images, labels = zip(*(phantom_case(i, seed) for i in indices))
    # (image (X, Y, Z, 1): one channel, label (X, Y, Z)) per case, as Transform's records decode.
    return tf.data.Dataset.from_tensor_slices((np.stack(images)[..., None], np.stack(labels)))


def main(out_dir: str, distribution: str, steps: int) -> None:
    from modules.train import input_pipeline, training

    cfg = training.config(
        {
            "patch_size": list(PATCH),
            "filters": [8, 16],
            "epochs": 1,
            "train_steps": steps,
            "learning_rate": 1e-2,
            "batch_size": GLOBAL_BATCH // workers(),
            "distribution": distribution,
            "seed": 0,
            "foreground_oversample": 0.5,
            "augment": False,
        }
    )
    # Same seed everywhere: identical initial weights on every worker, as run_fn does.
    import tf_keras as keras

    keras.utils.set_random_seed(cfg.seed)
    strategy = training.strategy_for(distribution)
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync  # as train_from_records
    assert global_batch == GLOBAL_BATCH, (global_batch, strategy.num_replicas_in_sync)
    train = input_pipeline.training_patches(cases(range(TRAIN_CASES)), PATCH, global_batch, 3, 0.5, None, cfg.seed)
    model, _ = training.fit(cfg, train, None, os.path.join(out_dir, "run"))
    scorer = training.PerLabelDice(cases(range(100, 100 + EVAL_CASES)), PATCH, 3)
    scorer.set_model(model)
    scores = scorer.scores()
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {"type": "single", "index": 0})
    result = {
        "dice": {k: v for k, v in scores.items() if k.startswith("val_dice_label_")},
        "mean_dice": scores["val_mean_dice"],
        "replicas": strategy.num_replicas_in_sync,
        "chief": training.is_chief(strategy),
    }
    with open(os.path.join(out_dir, f"result-{task['type']}-{task['index']}.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
