"""Models (U-Net 3D/2D, ResNet classifier) and the training loop on tiny synthetic data:
shapes, float32 outputs under mixed precision, a 1-device strategy scope, callbacks."""

import functools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from modules.networks import resnet, unet
from modules.train import augment, training


@pytest.mark.parametrize("norm,residual", [("instance", False), ("group", True), ("batch", False)])
def test_unet3d_shapes_and_softmax(norm, residual):
    model = unet.build_unet3d((8, 8, 4), 3, filters=(4, 8, 8), residual=residual, norm=norm)
    out = model(tf.random.normal((2, 8, 8, 4, 1))).numpy()
    assert out.shape == (2, 8, 8, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    if residual:
        assert any(layer.name.endswith("_add") for layer in model.layers)


def test_unet_depth_and_divisibility():
    layers = unet.build_unet3d((16, 16, 16), 2, (4, 4, 4, 4)).layers
    assert len([layer for layer in layers if "pool" in layer.name]) == 3
    with pytest.raises(ValueError, match="divisible"):
        unet.build_unet3d((10, 8, 8), 2, (4, 8, 16))
    with pytest.raises(ValueError, match="norm"):
        unet.build_unet3d((8, 8, 8), 2, (4, 8), norm="layer")


def test_unet2d_and_slicewise():
    model2d = unet.build_unet2d((8, 12), 3, filters=(4, 8))
    assert model2d(tf.zeros((5, 8, 12, 1))).shape == (5, 8, 12, 3)
    slicewise = unet.build_unet2d_slicewise((3, 8, 12), 3, filters=(4, 8))
    x = tf.random.normal((2, 3, 8, 12, 1))
    out = slicewise(x)
    assert out.shape == (2, 3, 8, 12, 3)
    # Slice 1 of case 1 is exactly the 2D network on that slice.
    inner = slicewise.get_layer("slicewise").model2d
    np.testing.assert_allclose(out[1, 1].numpy(), inner(x[1:2, 1])[0].numpy(), rtol=1e-5, atol=1e-6)


def test_resnet3d_classifier():
    model = resnet.build_resnet3d((16, 16, 8), 4, filters=(4, 8), blocks_per_stage=1)
    out = model(tf.random.normal((3, 16, 16, 8, 1))).numpy()
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_mixed_precision_model_outputs_float32_and_restores_policy():
    cfg = training.config({"patch_size": [8, 8, 8], "filters": [4, 8], "mixed_precision": True})
    model = training.build_model(cfg)
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored after building
    conv = model.get_layer("enc0_conv0")
    assert conv.compute_dtype in ("float16", "bfloat16") and conv.variable_dtype == "float32"
    assert model(tf.zeros((1, 8, 8, 8, 1))).dtype == tf.float32


def _segmentation_data(n=4, shape=(12, 12, 8)):
    rng = np.random.default_rng(0)
    label = np.zeros((n,) + shape, np.uint8)
    label[:, 2:6, 3:8, 2:5] = 1
    label[:, 7:11, 3:9, 4:7] = 2
    image = (rng.normal(size=label.shape) * 0.3 + label).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((image, label))


def test_fit_in_mirrored_strategy_with_callbacks(tmp_path):
    from modules.train import input_pipeline

    cfg = training.config(
        {
            "patch_size": [8, 8, 8],
            "filters": [4, 8],
            "epochs": 2,
            "train_steps": 6,
            "distribution": "mirrored",
            "early_stopping_patience": 5,
            "time_limit_minutes": 5,
            "learning_rate": 1e-2,
        }
    )
    cases = _segmentation_data()
    train = input_pipeline.training_patches(cases, cfg.patch_size, 2, 3, 0.5, None, seed=0)
    validation = input_pipeline.validation_patches(cases, cfg.patch_size, 2, 3)
    model, history = training.fit(cfg, train, validation, str(tmp_path), 0, cases.take(2))
    assert training.strategy_for("mirrored").num_replicas_in_sync == 1
    for key in ("loss", "val_loss", "val_dice_label_1", "val_dice_label_2", "val_mean_dice"):
        assert len(history.history[key]) == 2, key
    assert all(0.0 <= v <= 1.0 for v in history.history["val_mean_dice"])
    assert tf.io.gfile.exists(str(tmp_path / "checkpoints" / "best.index"))
    assert tf.io.gfile.glob(str(tmp_path / "logs" / "validation" / "events.*"))  # TensorBoard


def test_per_label_dice_matches_numpy(tmp_path):
    from modules.metrics.dice import dice_per_label

    cfg = training.config({"patch_size": [12, 12, 8], "filters": [4, 8]})
    model = training.build_model(cfg)
    cases = _segmentation_data(2)
    callback = training.PerLabelDice(cases, cfg.patch_size, 3)
    callback.set_model(model)
    scores = callback.scores()
    per_case = []
    for image, label in cases:
        prediction = np.argmax(model(image[None, ..., None]).numpy()[0], -1)
        per_case.append(dice_per_label(label.numpy(), prediction, [1, 2]))
    for k in (1, 2):
        values = [d[k] for d in per_case if not np.isnan(d[k])]
        assert scores[f"val_dice_label_{k}"] == pytest.approx(np.mean(values) if values else 0.0, abs=1e-6)


def test_classification_fit(tmp_path):
    from modules.train import input_pipeline

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 0, 1], np.int32)
    images = (rng.normal(size=(6, 8, 8, 8)) + labels[:, None, None, None] * 2).astype(np.float32)
    cases = tf.data.Dataset.from_tensor_slices((images, labels))
    cfg = training.config(
        {
            "model": "resnet3d",
            "patch_size": [8, 8, 8],
            "filters": [4, 8],
            "num_classes": 2,
            "loss": "ce",
            "norm": "instance",
            "epochs": 1,
            "train_steps": 4,
        }
    )
    train = input_pipeline.classification_batches(cases, 3, True, 0, augment.AugmentConfig())
    model, history = training.fit(cfg, train, input_pipeline.classification_batches(cases, 3, False), str(tmp_path), 0)
    assert model.output_shape == (None, 2)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="model"):
        training.config({"model": "vnet"})
    with pytest.raises(ValueError, match="distribution"):
        training.config({"distribution": "tpu"})
    with pytest.raises(ValueError, match="target_shape"):
        training.config({"target_shape": [8, 8, 8]})  # a Transform setting, not the Trainer's
    assert training.resolve_patch_size(training.config({}), (8, 8, 4)).patch_size == (8, 8, 4)
    assert training.resolve_patch_size(training.config({"patch_size": [4, 4, 4]}), (8, 8, 4)).patch_size == (4, 4, 4)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_slicewise_unet_exports_with_sliding_window(tmp_path, slice_axis):
    """The serving graph's shape: a SavedModel applying the (2D slice-wise) network through the
    sliding window to a grid larger than its patch, reloaded, gives the eager result."""
    from modules.inference import sliding_window

    model = unet.build_unet2d_slicewise((4, 8, 8), 3, filters=(4, 8), slice_axis=slice_axis)

    class Export(tf.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 1], tf.float32)])
        def predict(self, x):
            return sliding_window.predict(lambda v: self.model(v, training=False), x, (4, 8, 8), 3)

    tf.saved_model.save(Export(model), str(tmp_path / "m"))
    x = tf.random.stateless_normal((1, 6, 12, 9, 1), seed=[0, 1])
    reloaded = tf.saved_model.load(str(tmp_path / "m"))  # keep a reference: it owns the variables
    loaded = reloaded.predict(x).numpy()
    assert loaded.shape == (1, 6, 12, 9, 3)
    expected = sliding_window.predict(lambda v: model(v, training=False), x, (4, 8, 8), 3).numpy()
    np.testing.assert_allclose(loaded, expected, rtol=1e-5, atol=1e-6)


# ---- nnU-Net dynamic topology: per-level, per-axis pooling and kernel sizes ----


def _per_axis(entry, ndim):
    return (entry,) * ndim if isinstance(entry, int) else tuple(entry)


# (spatial shape built / fed, filters, pool_sizes, kernel_sizes)
TOPOLOGY_CASES = [
    # 0.8 x 0.8 x 4 mm-like: z never pooled at the first level, no z mixing at the first level.
    ((32, 32, 8), (32, 32, 8), (4, 8, 16), [(2, 2, 1), (2, 2, 2)], [(3, 3, 1), (3, 3, 3), (3, 3, 3)]),
    # A different axis coarse, ints as shorthand for "every axis".
    ((16, 8, 12), (16, 8, 12), (4, 8, 8), [(2, 1, 2), 2], [(3, 1, 3), 3, (1, 3, 3)]),
    # z never pooled: an odd z size is fine, also with unknown sizes at build time.
    ((None, None, None), (8, 16, 5), (4, 8, 8), [(2, 2, 1), (2, 2, 1)], [(3, 3, 1), 3, 3]),
    ((8, 8, 4), (8, 8, 4), (4, 8, 8), None, None),  # today's isotropic default
    ((12, 8), (12, 8), (4, 8, 8), [(2, 1), (2, 2)], [(3, 1), (1, 3), 3]),  # 2D
]


@pytest.mark.parametrize("built,fed,filters,pools,kernels", TOPOLOGY_CASES)
def test_unet_dynamic_topology(built, fed, filters, pools, kernels):
    ndim = len(built)
    model = unet.build_unet(built, 3, filters, residual=True, norm="instance", pool_sizes=pools, kernel_sizes=kernels)
    out = model(tf.random.normal((2,) + fed + (1,))).numpy()
    assert out.shape == (2,) + fed + (3,) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)

    pools = [_per_axis(p, ndim) for p in pools] if pools else [(2,) * ndim] * (len(filters) - 1)
    kernels = [_per_axis(k, ndim) for k in kernels] if kernels else [(3,) * ndim] * len(filters)
    level_shape = list(built)
    for level, pool in enumerate(pools):
        for block in (f"enc{level}", f"dec{level}"):
            assert model.get_layer(f"{block}_conv0").kernel_size == kernels[level], block
            assert model.get_layer(f"{block}_conv1").kernel_size == kernels[level], block
        assert model.get_layer(f"pool{level}").pool_size == pool
        up = model.get_layer(f"up{level}")
        assert up.kernel_size == pool and up.strides == pool
        # An axis with factor 1 keeps its size at the next level.
        level_shape = [s if s is None else s // p for s, p in zip(level_shape, pool)]
        assert model.get_layer(f"pool{level}").output_shape == (None, *level_shape, filters[level])
    assert model.get_layer("bottleneck_conv0").kernel_size == kernels[-1]
    assert model.get_layer("bottleneck_conv1").kernel_size == kernels[-1]


def test_anisotropic_unet3d_passes_topology_through():
    model = unet.build_unet3d(
        (32, 32, 8, 1), 2, (4, 8, 16), pool_sizes=[(2, 2, 1), (2, 2, 2)], kernel_sizes=[(3, 3, 1), (3, 3, 3), (3, 3, 3)]
    )
    assert model.get_layer("enc0_conv0").kernel_size == (3, 3, 1)
    assert model.get_layer("enc0_conv0").kernel.shape[:3] == (3, 3, 1)
    assert model.get_layer("pool0").output_shape == (None, 16, 16, 8, 4)  # z not pooled
    assert model.get_layer("pool1").output_shape == (None, 8, 8, 4, 8)
    assert model.get_layer("up0").output_shape == (None, 32, 32, 8, 4)
    assert model.output_shape == (None, 32, 32, 8, 2)


# (builder kwargs, error message pattern)
TOPOLOGY_ERRORS = [
    (dict(spatial_shape=(32, 32, 6), pool_sizes=[(2, 2, 2), (2, 2, 2)]), r"size 6 along axis 2 .*factor 4"),
    (dict(spatial_shape=(30, 32, 8)), r"size 30 along axis 0 .*factor 4"),
    # z pooled once: 5 fails along z only, while x and y pass.
    (dict(spatial_shape=(32, 32, 5), pool_sizes=[(2, 2, 1), (2, 2, 2)]), r"size 5 along axis 2 .*factor 2"),
    # z never pooled: any z passes, y needs 4.
    (dict(spatial_shape=(32, 6, 5), pool_sizes=[(2, 2, 1), (2, 2, 1)]), r"size 6 along axis 1 .*factor 4"),
    (dict(spatial_shape=(16, 16, 8), pool_sizes=[(2, 2, 2)]), r"pool_sizes needs 2 entries"),
    (dict(spatial_shape=(16, 16, 8), pool_sizes=[(2, 2), (2, 2, 2)]), r"pool_sizes\[0\].*3 values"),
    (dict(spatial_shape=(16, 16, 8), pool_sizes=[(2, 2, 2), (3, 2, 2)]), r"pool_sizes\[1\].*one of \(1, 2\)"),
    (dict(spatial_shape=(16, 16, 8), kernel_sizes=[3, 3]), r"kernel_sizes needs 3 entries"),
    (dict(spatial_shape=(16, 16, 8), kernel_sizes=[3, (3, 3, 5), 3]), r"kernel_sizes\[1\].*one of \(1, 3\)"),
    (dict(spatial_shape=(16, 16, 8), kernel_sizes=[3, 3, (3, 3)]), r"kernel_sizes\[2\].*3 values"),
    (dict(spatial_shape=(16, 16, 8), kernel_sizes=[2, 3, 3]), r"kernel_sizes\[0\].*one of \(1, 3\)"),
]


@pytest.mark.parametrize("kwargs,message", TOPOLOGY_ERRORS)
def test_unet_topology_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet.build_unet(num_classes=2, filters=(4, 8, 16), **kwargs)


def test_conv_block_kernel_size_default_and_per_axis():
    x = tf_keras.Input((8, 8, 4, 2))
    default = tf_keras.Model(x, unet.conv_block(x, 4, "a"))
    anisotropic = tf_keras.Model(x, unet.conv_block(x, 4, "b", kernel_size=(3, 3, 1), residual=True))
    assert default.get_layer("a_conv1").kernel_size == (3, 3, 3)
    assert anisotropic.get_layer("b_conv1").kernel_size == (3, 3, 1)
    assert anisotropic.get_layer("b_proj").kernel_size == (1, 1, 1)  # the shortcut stays 1x1x1


# (input shape, slice_axis, filters, pool_sizes, kernel_sizes, expected 2D kernel at level 0)
SLICEWISE_CASES = [
    ((3, 8, 12), 0, (4, 8), None, None, (3, 3)),
    ((8, 3, 12), 1, (4, 8), [(2, 1, 2)], [(3, 1, 3), (3, 1, 1)], (3, 3)),
    ((8, 12, 5), 2, (4, 8, 8), [(2, 2, 1), (2, 1, 1)], [(1, 3, 1), 3, (3, 3, 1)], (1, 3)),
    ((8, 12, 5), 2, (4, 8), [(1, 2)], [(3, 1), 3], (3, 1)),  # in-plane (2-axis) entries
]


@pytest.mark.parametrize("shape,slice_axis,filters,pools,kernels,kernel0", SLICEWISE_CASES)
def test_slicewise_along_any_axis(shape, slice_axis, filters, pools, kernels, kernel0):
    model = unet.build_unet2d_slicewise(
        shape, 3, filters, slice_axis=slice_axis, pool_sizes=pools, kernel_sizes=kernels
    )
    layer = model.get_layer("slicewise")
    model2d = layer.model2d
    in_plane = tuple(s for axis, s in enumerate(shape) if axis != slice_axis)
    assert model2d.input_shape == (None,) + in_plane + (1,)
    assert model2d.get_layer("enc0_conv0").kernel_size == kernel0
    assert layer.get_config()["slice_axis"] == slice_axis
    assert model.output_shape == (None,) + shape + (3,)

    x = tf.random.stateless_normal((2,) + shape + (1,), seed=[1, slice_axis]).numpy()
    out = model(x, training=False).numpy()
    assert out.shape == (2,) + shape + (3,) and out.dtype == np.float32
    # Every slice is exactly the 2D network on that slice (in-plane axes in X, Y, Z order).
    for k in range(shape[slice_axis]):
        expected = model2d(np.take(x, k, axis=slice_axis + 1), training=False).numpy()
        np.testing.assert_allclose(np.take(out, k, axis=slice_axis + 1), expected, rtol=1e-5, atol=1e-6)
    # Changing one slice changes that slice's output only.
    changed_slice = shape[slice_axis] // 2
    index = [slice(None)] * 5
    index[slice_axis + 1] = changed_slice
    x_changed = x.copy()
    x_changed[tuple(index)] += 3.0
    diff = np.abs(model(x_changed, training=False).numpy() - out)
    assert diff[tuple(index)].max() > 1e-4
    diff[tuple(index)] = 0.0
    assert diff.max() == 0.0


# (kwargs, error message pattern)
SLICEWISE_ERRORS = [
    (dict(input_shape=(8, 8, 8), slice_axis=3), r"slice_axis must be 0, 1 or 2"),
    (dict(input_shape=(8, 8, 8), slice_axis=2, pool_sizes=[(2, 2, 2)]), r"pool_sizes\[0\].*slice axis 2.*must be 1"),
    (dict(input_shape=(8, 8, 8), slice_axis=0, kernel_sizes=[(3, 3, 3), 3]), r"kernel_sizes\[0\].*slice axis 0"),
    (dict(input_shape=(8, 8, 8), slice_axis=0, pool_sizes=[(2, 2, 2, 2)]), r"pool_sizes\[0\].*3 values .* or 2"),
    # Only the in-plane sizes are checked, and the message numbers them as 3D axes.
    (dict(input_shape=(8, 6, 5), slice_axis=2, filters=(4, 8, 8)), r"size 6 along axis 1 .*factor 4"),
    (dict(input_shape=(5, 8, 6), slice_axis=0, filters=(4, 8, 8)), r"size 6 along axis 2 .*factor 4"),
]


@pytest.mark.parametrize("kwargs,message", SLICEWISE_ERRORS)
def test_slicewise_errors(kwargs, message):
    kwargs = dict(dict(num_classes=2, filters=(4, 8)), **kwargs)
    with pytest.raises(ValueError, match=message):
        unet.build_unet2d_slicewise(**kwargs)


def test_slicewise_checks_only_in_plane_sizes():
    model = unet.build_unet2d_slicewise((5, 8, 4), 2, (4, 8, 8), slice_axis=0)  # X = 5 is never pooled
    assert model.output_shape == (None, 5, 8, 4, 2)


# Layer names and parameter counts of the default-topology models before pool_sizes/kernel_sizes
# existed: defaults (and their explicit spelling) must rebuild the same graph so old weights load.
DEFAULT_UNET3D_NAMES_2_LEVELS = [
    "image",
    "enc0_conv0",
    "enc0_norm0",
    "enc0_act0",
    "enc0_conv1",
    "enc0_norm1",
    "enc0_act1",
    "pool0",
    "bottleneck_conv0",
    "bottleneck_norm0",
    "bottleneck_act0",
    "bottleneck_conv1",
    "bottleneck_norm1",
    "bottleneck_act1",
    "up0",
    "skip0",
    "dec0_conv0",
    "dec0_norm0",
    "dec0_act0",
    "dec0_conv1",
    "dec0_norm1",
    "dec0_act1",
    "logits",
    "probabilities",
]

DEFAULT_TOPOLOGY_CASES = [
    # (builder, args, layer count, parameter count, layer names or None)
    (unet.build_unet3d, ((16, 16, 8), 3, (4, 8)), 24, 4767, DEFAULT_UNET3D_NAMES_2_LEVELS),
    (functools.partial(unet.build_unet3d, residual=True), ((16, 16, 8), 3, (4, 8, 16)), 54, 21851, None),
    (unet.build_unet2d_slicewise, ((4, 8, 8), 3, (4, 8, 16)), 2, 7487, ["image", "slicewise"]),
]


def _explicit_defaults(builder, depth):
    """The default pool/kernel sizes spelled out, mixing every accepted entry form."""
    if builder is unet.build_unet3d:
        return dict(pool_sizes=[(2, 2, 2)] + [2] * (depth - 2), kernel_sizes=[3] * (depth - 1) + [(3, 3, 3)])
    return dict(
        pool_sizes=[(1, 2, 2)] + [(2, 2)] * (depth - 2),  # slice-wise: 3-axis or in-plane entries
        kernel_sizes=[(1, 3, 3)] + [3] * (depth - 2) + [(3, 3)],
    )


def _graph(model):
    return [layer.name for layer in model.layers], [tuple(w.shape) for w in model.weights]


@pytest.mark.parametrize("builder,args,layers,params,names", DEFAULT_TOPOLOGY_CASES)
def test_default_topology_is_unchanged(builder, args, layers, params, names):
    model = builder(*args)
    assert len(model.layers) == layers and model.count_params() == params
    if names is not None:
        assert [layer.name for layer in model.layers] == names
    base = builder.func if isinstance(builder, functools.partial) else builder
    explicit = builder(*args, **_explicit_defaults(base, len(args[2])))
    assert _graph(explicit) == _graph(model)
    if base is unet.build_unet2d_slicewise:
        assert _graph(explicit.get_layer("slicewise").model2d) == _graph(model.get_layer("slicewise").model2d)


@pytest.fixture
def mixed_bfloat16():
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize(
    "build,shape,conv",
    [
        (
            lambda: unet.build_unet3d((16, 16, 4), 3, (4, 8), pool_sizes=[(2, 2, 1)], kernel_sizes=[(3, 3, 1), 3]),
            (16, 16, 4),
            lambda m: m.get_layer("enc0_conv0"),
        ),
        (
            lambda: unet.build_unet2d_slicewise((8, 8, 3), 3, (4, 8), slice_axis=2, pool_sizes=[(2, 2, 1)]),
            (8, 8, 3),
            lambda m: m.get_layer("slicewise").model2d.get_layer("enc0_conv0"),
        ),
    ],
)
def test_mixed_bfloat16_outputs_float32(mixed_bfloat16, build, shape, conv):
    model = build()
    assert conv(model).compute_dtype == "bfloat16" and conv(model).variable_dtype == "float32"
    out = model(tf.random.normal((1,) + shape + (1,)))
    assert out.dtype == tf.float32 and out.shape == (1,) + shape + (3,)
    np.testing.assert_allclose(out.numpy().sum(-1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("slice_axis", [0, 1])
def test_slicewise_keras_save_and_load(tmp_path, slice_axis):
    """Keras 2 serialisation (get_config / from_config) keeps slice_axis and the weights."""
    model = unet.build_unet2d_slicewise((4, 8, 8), 3, (4, 8), slice_axis=slice_axis)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert loaded.get_layer("slicewise").slice_axis == slice_axis
    x = tf.random.stateless_normal((1, 4, 8, 8, 1), seed=[2, 3])
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
