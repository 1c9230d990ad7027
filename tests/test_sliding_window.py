"""Sliding-window inference: single window == one forward pass; larger volumes match a
hand-written numpy reference for a position-dependent toy network."""

import math

import numpy as np
import pytest
import tensorflow as tf

from modules.inference import sliding_window

PATCH = (8, 8, 4)


def _toy_tf(x):
    """(b, P0, P1, P2, 1) -> (b, P0, P1, P2, 2): channel c = (c + 1) * x + position along axis 0
    inside the window: the output depends on where the window sits, so stitching matters."""
    ramp = tf.reshape(tf.range(PATCH[0], dtype=tf.float32), [1, PATCH[0], 1, 1, 1])
    return tf.concat([x + ramp, 2.0 * x + ramp], axis=-1)


def _reference(volume, overlap=0.5):
    """Numpy sliding window for _toy_tf on one (X, Y, Z) volume, written out by hand."""

    def starts(length, p):
        if length <= p:
            return [0]
        n = math.ceil((length - p) / (p * (1 - overlap))) + 1
        return [int(np.round((length - p) / (n - 1) * i)) for i in range(n)]

    def gauss(p):
        i = np.arange(p) - (p - 1) / 2.0
        return np.exp(-(i**2) / (2 * (p / 8.0) ** 2))

    g = gauss(PATCH[0])[:, None, None] * gauss(PATCH[1])[None, :, None] * gauss(PATCH[2])[None, None, :]
    acc = np.zeros(volume.shape + (2,))
    weight = np.zeros(volume.shape)
    for sx in starts(volume.shape[0], PATCH[0]):
        for sy in starts(volume.shape[1], PATCH[1]):
            for sz in starts(volume.shape[2], PATCH[2]):
                window = volume[sx : sx + PATCH[0], sy : sy + PATCH[1], sz : sz + PATCH[2]]
                ramp = np.arange(PATCH[0])[:, None, None]
                out = np.stack([window + ramp, 2 * window + ramp], axis=-1)
                acc[sx : sx + PATCH[0], sy : sy + PATCH[1], sz : sz + PATCH[2]] += out * g[..., None]
                weight[sx : sx + PATCH[0], sy : sy + PATCH[1], sz : sz + PATCH[2]] += g
    return acc / weight[..., None]


def test_volume_of_patch_size_equals_single_forward_pass():
    x = tf.random.stateless_normal((2,) + PATCH + (1,), seed=[1, 2])
    out = sliding_window.predict(_toy_tf, x, PATCH, 2)
    np.testing.assert_allclose(out.numpy(), _toy_tf(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,windows_per_batch", [((21, 13, 9), 1), ((21, 13, 9), 4), ((16, 8, 7), 3)])
def test_larger_volume_matches_numpy_reference(shape, windows_per_batch):
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(2,) + shape).astype(np.float32)
    out = sliding_window.predict(_toy_tf, volumes[..., None], PATCH, 2, windows_per_batch=windows_per_batch).numpy()
    assert out.shape == (2,) + shape + (2,)
    assert np.isfinite(out).all()
    for b in range(2):
        np.testing.assert_allclose(out[b], _reference(volumes[b].astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_smaller_volume_is_padded_and_cropped_back():
    # A constant network: every voxel (padded or not) gets exactly the constant.
    def constant(x):
        return tf.ones(tf.concat([tf.shape(x)[:4], [3]], 0)) * tf.constant([0.2, 0.3, 0.5])

    x = tf.zeros((1, 5, 11, 3, 1))
    out = sliding_window.predict(constant, x, PATCH, 3).numpy()
    assert out.shape == (1, 5, 11, 3, 3)
    np.testing.assert_allclose(out, np.broadcast_to([0.2, 0.3, 0.5], out.shape), rtol=1e-6)


def test_runs_in_a_graph_with_unknown_shape():
    fn = tf.function(
        lambda v: sliding_window.predict(_toy_tf, v, PATCH, 2),
        input_signature=[tf.TensorSpec([None, None, None, None, 1], tf.float32)],
    )
    volume = np.random.default_rng(1).normal(size=(1, 17, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(
        fn(volume[..., None]).numpy()[0], _reference(volume[0].astype(np.float64)), rtol=1e-4, atol=1e-4
    )


def test_mirrored_averages_the_network_over_every_flip_and_flips_back():
    """A network that is not flip-equivariant (cumulative sum along P0 and P2): mirroring over
    axes (0, 2) is the mean of the four flip combinations, each flipped back."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 5, 4, 6, 1)).astype(np.float32))

    def net(v):
        return tf.concat([tf.cumsum(v, axis=1), tf.cumsum(v, axis=3)], axis=-1)

    out = sliding_window.mirrored(net, (2, 0))(x).numpy()
    expected = np.mean(
        [
            np.flip(net(tf.reverse(x, d) if d else x).numpy(), d) if d else net(x).numpy()
            for d in ([], [1], [3], [1, 3])
        ],
        axis=0,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, net(x).numpy(), atol=1e-3)  # the flips matter for this network
    # An elementwise network is flip-equivariant: mirroring changes nothing. No axes: the network.
    np.testing.assert_allclose(
        sliding_window.mirrored(tf.sigmoid, (0, 1, 2))(x).numpy(), tf.sigmoid(x).numpy(), rtol=1e-6
    )
    assert sliding_window.mirrored(net, ()) is net
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window.mirrored(net, (3,))


@pytest.mark.parametrize("batch_voxels", [1, 5 * 4 * 6, 2 * 5 * 4 * 6, 2**20])
def test_mirrored_flips_stacked_in_one_call_give_the_per_flip_mean(batch_voxels):
    """Flips stacked along the batch (1, 2 or all 4 per network call) give the one-call-per-flip
    result; the network is called ceil(4 / flips per call) times."""
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(2, 5, 4, 6, 1)).astype(np.float32))
    calls = []

    def net(v):
        calls.append(int(v.shape[0]))
        return tf.concat([tf.cumsum(v, axis=1), tf.cumsum(v, axis=3)], axis=-1)

    expected = sliding_window.mirrored(net, (0, 2), batch_voxels=1)(x).numpy()
    calls.clear()
    out = sliding_window.mirrored(net, (0, 2), batch_voxels=batch_voxels)(x).numpy()
    per_call = min(4, max(1, batch_voxels // (5 * 4 * 6)))
    assert calls == [2 * per_call] * (4 // per_call)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_voxels", [1, 8 * 8 * 4 * 3, 2**22])
def test_chunked_scatter_matches_numpy_reference(monkeypatch, chunk_voxels):
    """Window outputs are added to the accumulator in chunks of network calls (one call per chunk
    up to all of them in one): every chunking gives the hand-written reference."""
    monkeypatch.setattr(sliding_window, "SCATTER_CHUNK_VOXELS", chunk_voxels)
    volume = np.random.default_rng(5).normal(size=(1, 21, 13, 9)).astype(np.float32)
    out = sliding_window.predict(_toy_tf, volume[..., None], PATCH, 2, windows_per_batch=2).numpy()
    np.testing.assert_allclose(out[0], _reference(volume[0]), rtol=1e-5, atol=1e-5)
