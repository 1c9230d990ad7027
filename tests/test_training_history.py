"""The Trainer's per-epoch history (modules/train/training.py): the learning rate joins the epoch
logs and history.json holds every series the training curves draw."""

import json

import numpy as np
import pytest


@pytest.mark.parametrize("epochs", [1, 3])
def test_history_json_has_loss_and_learning_rate_per_epoch(tmp_path, epochs):
    import tf_keras as keras

    from modules.train import training

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    initial, total_steps = 0.01, 2 * epochs
    callbacks = [training.PolyLearningRate(initial, total_steps), training.LearningRateLog()]
    history = model.fit(x, y, epochs=epochs, batch_size=4, validation_data=(x, y), callbacks=callbacks, verbose=0)
    path = tmp_path / training.HISTORY_FILE
    training.write_history(history, str(path))
    record = json.loads(path.read_text())
    assert record["epoch"] == list(range(epochs))
    for key in ("loss", "val_loss", "lr"):
        assert len(record[key]) == epochs and all(np.isfinite(record[key]))
    # The poly schedule set before the last step of each epoch: steps 1, 3, ... of total_steps.
    expected = [max(initial * (1 - (2 * e + 1) / total_steps) ** 0.9, initial * 1e-2) for e in range(epochs)]
    assert record["lr"] == pytest.approx(expected, rel=1e-5)
