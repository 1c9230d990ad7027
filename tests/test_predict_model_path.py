"""`predict --model` takes an exported model folder, a TF Serving model base path (newest integer
version, as TF Serving picks it) or a Trainer Model artifact folder (Format-Serving/)."""

import os
import shutil

import numpy as np
import pytest

from pipeline.client import predict


def _layout(root, folders):
    """Makes each folder under `root`; a name ending in '*' gets an (empty) saved_model.pb."""
    for name in folders:
        folder = os.path.join(root, name.rstrip("*"))
        os.makedirs(folder, exist_ok=True)
        if name.endswith("*"):
            open(os.path.join(folder, "saved_model.pb"), "wb").close()


@pytest.mark.parametrize(
    "folders, model, expected",
    [
        (["m*"], "m", "m"),  # a SavedModel folder as it is
        (["m/1*", "m/2*", "m/10*"], "m", "m/10"),  # versions compare as numbers, not text
        (["m/3*", "m/7", "m/tmp-8*"], "m", "m/3"),  # an empty or non-integer folder is no version
        (["m/1700000000*", "m/99*"], "m", "m/1700000000"),  # Pusher's timestamp versions
        (["m/Format-Serving*"], "m", "m/Format-Serving"),  # a Trainer Model artifact
        (["m*", "m/5*"], "m", "m"),  # saved_model.pb at the top wins
    ],
)
def test_resolve_model_dir_picks_the_newest_version(tmp_path, folders, model, expected):
    _layout(str(tmp_path), folders)
    assert predict.resolve_model_dir(str(tmp_path / model)) == str(tmp_path / expected)


@pytest.mark.parametrize(
    "folders, model, message",
    [
        ([], "absent", "no such directory"),
        (["m/1", "m/x*"], "m", "no saved_model.pb there nor in an integer version subfolder"),
    ],
)
def test_resolve_model_dir_names_the_folder_and_the_problem(tmp_path, folders, model, message):
    _layout(str(tmp_path), folders)
    with pytest.raises(predict.PredictError, match=message) as caught:
        predict.resolve_model_dir(str(tmp_path / model))
    assert str(caught.value).startswith(f"--model {tmp_path / model}: ")


def test_resolve_model_dir_refuses_a_file(tmp_path):
    (tmp_path / "model.pb").write_bytes(b"")
    with pytest.raises(predict.PredictError, match="not a directory"):
        predict.resolve_model_dir(str(tmp_path / "model.pb"))


def test_in_process_model_loads_the_newest_version_of_a_base_path(tmp_path):
    """A real (tiny) SavedModel copied as versions 3 and 12 of a base path: version 12 is loaded,
    and a model without the medtfx signature is refused with a one-line reason."""
    from tests.tiny_saved_model import save_affine_model

    model_dir = save_affine_model(str(tmp_path))
    base = tmp_path / "serving"
    for version in ("3", "12"):
        shutil.copytree(model_dir, base / version)
    model = predict.InProcessModel(str(base), signature="serving_default")
    assert model.model_dir == str(base / "12")
    out = model.predict({"x": np.ones((1, 3), np.float32)})
    assert out["y"].shape == (1, 2)
    with pytest.raises(predict.PredictError, match="no 'evaluate' signature"):
        predict.InProcessModel(str(base), signature="evaluate")
