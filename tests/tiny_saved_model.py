"""A tiny real SavedModel and a byte-level view of a directory, shared by the object-store push
tests (tests/test_pusher_s3.py, tests/test_pusher_gcs.py)."""

import os


def save_affine_model(root: str) -> str:
    """Saves y = x @ w + b (w (3, 2), b (2,), x (N, 3) float32) under `root`/model with a
    `serving_default` signature (input `x`, output `y`), variables/ and an asset: the file
    layout of an exported model, in about a second. Returns the model directory."""
    import numpy as np
    import tensorflow as tf

    labels = os.path.join(root, "labels.txt")
    with open(labels, "w") as fh:
        fh.write("background\nlesion\n")

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2) / 7.0)
            self.b = tf.Variable([0.5, -1.25])
            self.labels = tf.saved_model.Asset(labels)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

    module = Affine()
    model_dir = os.path.join(root, "model")
    tf.saved_model.save(module, model_dir, signatures={"serving_default": module.serve})
    return model_dir


def files_under(root: str) -> dict:
    """{relative posix path: bytes} of every file under the local directory `root`."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, root).replace(os.sep, "/")] = fh.read()
    return files
