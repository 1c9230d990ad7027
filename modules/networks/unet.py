"""U-Nets (tf_keras = Keras 2, imported explicitly): 3D, 2D, and 2D applied slice-wise along any
axis of 3D inputs, with configurable depth, filters, residual units, normalisation and nnU-Net's
dynamic topology (per-level, per-axis pooling factors and kernel sizes for anisotropic voxels).

Spatial sizes may be None (fully convolutional: train on patches, infer on any grid whose size
along each axis is divisible by the product of that axis' pooling factors, 2 ** (depth - 1) by
default). Outputs are float32 softmax probabilities even under a mixed-precision policy.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tf_keras as keras  # Keras 2 explicitly: tf.keras may already be Keras 3 in TFX's process

NORMS = ("instance", "group", "batch", "none")
POOL_FACTORS = (1, 2)
KERNEL_SIZES = (1, 3)

# One entry per level: an int (same on every axis) or one value per spatial axis.
PerAxis = Union[int, Sequence[int]]


def normalization(norm: str, filters: int, name: str):
    """A normalisation layer over the channel axis (last).

    instance: per sample and channel over space (GroupNormalization with groups == channels),
      batch-size independent, nnU-Net's default; group: 8 groups (or fewer channels);
      batch: BatchNormalization (large batches only); none: identity.
    """
    if norm == "instance":
        return keras.layers.GroupNormalization(groups=filters, epsilon=1e-5, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(groups=min(filters, 8), epsilon=1e-5, name=name)
    if norm == "batch":
        return keras.layers.BatchNormalization(name=name)
    if norm == "none":
        return keras.layers.Activation("linear", name=name)
    raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")


def _layers(ndim: int):
    if ndim == 3:
        return keras.layers.Conv3D, keras.layers.Conv3DTranspose, keras.layers.MaxPool3D
    if ndim == 2:
        return keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.MaxPool2D
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def conv_block(
    x,
    filters: int,
    name: str,
    ndim: int = 3,
    norm: str = "instance",
    residual: bool = False,
    convs: int = 2,
    kernel_size: PerAxis = 3,
):
    """`convs` x (kernel_size convolution -> norm -> LeakyReLU(0.01)), 'same' padding.

    kernel_size: an int (every axis) or one size per spatial axis, e.g. (3, 3, 1) to leave the
    coarse axis of anisotropic data unmixed at a fine level.
    residual=True makes it a residual unit: the last activation is applied after adding the input
    (projected by a 1^ndim convolution + norm when the channel count changes).
    """
    conv, _, _ = _layers(ndim)
    shortcut = x
    for i in range(convs):
        x = conv(filters, kernel_size, padding="same", use_bias=norm == "none", name=f"{name}_conv{i}")(x)
        x = normalization(norm, filters, f"{name}_norm{i}")(x)
        if residual and i == convs - 1:
            if shortcut.shape[-1] != filters:
                shortcut = conv(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
                shortcut = normalization(norm, filters, f"{name}_proj_norm")(shortcut)
            x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
        x = keras.layers.LeakyReLU(0.01, name=f"{name}_act{i}")(x)
    return x


def _per_level_per_axis(
    values: Optional[Sequence[PerAxis]], what: str, levels: int, ndim: int, allowed: Tuple[int, ...], default: int
) -> List[Tuple[int, ...]]:
    """`levels` tuples of `ndim` ints from `allowed`; None gives `default` everywhere.

    Raises:
      ValueError: wrong number of levels, an entry with the wrong number of axes, or a value
        outside `allowed`.
    """
    if values is None:
        return [(default,) * ndim] * levels
    if isinstance(values, (str, bytes)) or len(values) != levels:
        raise ValueError(f"{what} needs {levels} entries (one per level), got {values!r}")
    result = []
    for level, entry in enumerate(values):
        # int as well as numbers.Integral (numpy integers): mypy only narrows on the former.
        axes = (int(entry),) * ndim if isinstance(entry, (int, numbers.Integral)) else tuple(int(v) for v in entry)
        if len(axes) != ndim:
            raise ValueError(f"{what}[{level}] = {entry!r} needs {ndim} values (one per spatial axis)")
        if any(v not in allowed for v in axes):
            raise ValueError(f"{what}[{level}] = {entry!r}: every value must be one of {allowed}")
        result.append(axes)
    return result


def _check_divisible(
    spatial: Sequence[Optional[int]], pool_sizes: Sequence[Sequence[int]], axis_names: Optional[Sequence[str]] = None
) -> None:
    """Raises ValueError unless every known size is divisible by the product of its pool factors
    (so pooling never drops voxels and the upsampled decoder lines up with its skips)."""
    for axis, size in enumerate(spatial):
        factor = math.prod(level[axis] for level in pool_sizes)
        if size is not None and size % factor:
            label = axis_names[axis] if axis_names else str(axis)
            raise ValueError(
                f"spatial shape {tuple(spatial)}: size {size} along axis {label} is not "
                f"divisible by its total pooling factor {factor}"
            )


def build_unet(
    spatial_shape: Sequence[Optional[int]],
    num_classes: int,
    filters: Sequence[int] = (8, 16, 32),
    residual: bool = False,
    norm: str = "instance",
    in_channels: int = 1,
    name: str = "unet",
    pool_sizes: Optional[Sequence[PerAxis]] = None,
    kernel_sizes: Optional[Sequence[PerAxis]] = None,
):
    """U-Net for (*spatial, in_channels) inputs -> (*spatial, num_classes) float32 softmax.

    Args:
      spatial_shape: 2 or 3 sizes (voxels; None = any size divisible by that axis' total pooling).
      filters: channels per level; depth = len(filters) (the last is the bottleneck).
      residual: residual units instead of plain double convolutions.
      norm: one of NORMS.
      pool_sizes: len(filters) - 1 entries, one per downsampling, each an int or one factor per
        axis from POOL_FACTORS, e.g. [(2, 2, 1), (2, 2, 2)] for voxels 4x coarser along z.
        The transposed convolution undoing a pooling uses the same factor as kernel and stride.
        None: 2 on every axis at every level.
      kernel_sizes: len(filters) entries, each an int or one size per axis from KERNEL_SIZES;
        entry i is used by encoder level i and decoder level i, the last by the bottleneck.
        None: 3 everywhere.

    Raises:
      ValueError: fewer than 2 levels, unknown norm, pool_sizes / kernel_sizes of the wrong
        length or with values not allowed, or a spatial size not divisible by the product of
        its axis' pooling factors (the message names the axis, size and factor).
    """
    ndim = len(spatial_shape)
    conv, up_conv, pool = _layers(ndim)
    depth = len(filters)
    if depth < 2:
        raise ValueError("a U-Net needs at least 2 levels (filters of length >= 2)")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
    pools = _per_level_per_axis(pool_sizes, "pool_sizes", depth - 1, ndim, POOL_FACTORS, 2)
    kernels = _per_level_per_axis(kernel_sizes, "kernel_sizes", depth, ndim, KERNEL_SIZES, 3)
    _check_divisible(spatial_shape, pools)
    inputs = keras.Input(shape=tuple(spatial_shape) + (in_channels,), name="image")
    x, skips = inputs, []
    for level, f in enumerate(filters[:-1]):
        x = conv_block(x, f, f"enc{level}", ndim, norm, residual, kernel_size=kernels[level])
        skips.append(x)
        x = pool(pools[level], name=f"pool{level}")(x)
    x = conv_block(x, filters[-1], "bottleneck", ndim, norm, residual, kernel_size=kernels[-1])
    for level in reversed(range(depth - 1)):
        x = up_conv(filters[level], pools[level], strides=pools[level], name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_block(x, filters[level], f"dec{level}", ndim, norm, residual, kernel_size=kernels[level])
    logits = conv(num_classes, 1, name="logits")(x)
    # float32 softmax keeps mixed precision numerically safe.
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)


def build_unet3d(
    input_shape: Sequence[Optional[int]],
    num_classes: int,
    filters: Sequence[int] = (8, 16, 32),
    residual: bool = False,
    norm: str = "instance",
    pool_sizes: Optional[Sequence[PerAxis]] = None,
    kernel_sizes: Optional[Sequence[PerAxis]] = None,
    in_channels: int = 1,
):
    """3D U-Net: (B, X, Y, Z, in_channels) -> (B, X, Y, Z, num_classes). input_shape: (X, Y, Z[, C]).

    pool_sizes / kernel_sizes: per level and per axis (X, Y, Z), see build_unet.
    """
    return build_unet(
        tuple(input_shape[:3]),
        num_classes,
        filters,
        residual,
        norm,
        name="unet3d",
        pool_sizes=pool_sizes,
        kernel_sizes=kernel_sizes,
        in_channels=in_channels,
    )


def build_unet2d(
    input_shape: Sequence[Optional[int]],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64),
    residual: bool = False,
    norm: str = "instance",
    pool_sizes: Optional[Sequence[PerAxis]] = None,
    kernel_sizes: Optional[Sequence[PerAxis]] = None,
    in_channels: int = 1,
):
    """2D U-Net: (B, Y, Z, in_channels) -> (B, Y, Z, num_classes). input_shape: (Y, Z[, C]).

    pool_sizes / kernel_sizes: per level and per in-plane axis, see build_unet.
    """
    return build_unet(
        tuple(input_shape[:2]),
        num_classes,
        filters,
        residual,
        norm,
        name="unet2d",
        pool_sizes=pool_sizes,
        kernel_sizes=kernel_sizes,
        in_channels=in_channels,
    )


def _slice_to_front(slice_axis: int) -> Tuple[List[int], List[int]]:
    """Permutations of (B, X, Y, Z, C) moving spatial `slice_axis` to position 1 (the two
    in-plane axes keep their order) and back."""
    spatial = [1, 2, 3]
    forward = [0, spatial.pop(slice_axis)] + spatial + [4]
    backward = [forward.index(i) for i in range(5)]
    return forward, backward


@keras.saving.register_keras_serializable(package="medtfx")
class SliceWise(keras.layers.Layer):
    """Applies a 2D model to every slice of a (B, X, Y, Z, C) volume perpendicular to spatial
    axis `slice_axis` (0 = X, 1 = Y, 2 = Z): the slice axis is moved next to the batch, folded
    into it ((B * slices, in-plane 1, in-plane 2, C)), and the result unfolded and moved back.

    Lets the 2D U-Net train and serve through the same 3D patch / sliding-window machinery.
    """

    def __init__(self, model2d: keras.Model, slice_axis: int = 0, **kwargs):
        super().__init__(**kwargs)
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of X, Y, Z), got {slice_axis!r}")
        self.model2d = model2d
        self.slice_axis = int(slice_axis)
        self._forward, self._backward = _slice_to_front(self.slice_axis)

    def call(self, x, training=None):
        if self.slice_axis:
            x = tf.transpose(x, self._forward)
        shape = tf.shape(x)
        slices = tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))
        y = self.model2d(slices, training=training)
        y = tf.reshape(y, tf.concat([shape[:2], tf.shape(y)[1:]], axis=0))
        if self.slice_axis:
            y = tf.transpose(y, self._backward)
        return y

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        return tf.TensorShape(shape[:4] + [self.model2d.output_shape[-1]])

    def get_config(self):
        config = super().get_config()
        config.update(model2d=keras.saving.serialize_keras_object(self.model2d), slice_axis=self.slice_axis)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model2d"] = keras.saving.deserialize_keras_object(config["model2d"])
        return cls(**config)


def _in_plane(
    values: Optional[Sequence[PerAxis]], what: str, slice_axis: int, require_one: bool
) -> Optional[Sequence[PerAxis]]:
    """Per-level entries given for 3 axes (the slice axis' value dropped) or already for the 2
    in-plane axes (kept); ints kept as they are.

    Raises:
      ValueError: a 3-axis entry whose slice-axis value is not 1 (a 2D net can neither pool nor
        convolve across slices), or an entry with neither 2 nor 3 values.
    """
    if values is None or isinstance(values, (str, bytes)):
        return values
    result: List[PerAxis] = []
    for level, entry in enumerate(values):
        if isinstance(entry, (int, numbers.Integral)):
            result.append(entry)
            continue
        entry = tuple(entry)
        if len(entry) == 3:
            if require_one and int(entry[slice_axis]) != 1:
                raise ValueError(
                    f"{what}[{level}] = {entry!r}: the slice axis {slice_axis} value must be 1 for a 2D slice-wise net"
                )
            entry = entry[:slice_axis] + entry[slice_axis + 1 :]
        elif len(entry) != 2:
            raise ValueError(f"{what}[{level}] = {entry!r} needs 3 values (X, Y, Z) or 2 (in-plane)")
        result.append(entry)
    return result


def build_unet2d_slicewise(
    input_shape: Sequence[Optional[int]],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64),
    residual: bool = False,
    norm: str = "instance",
    slice_axis: int = 0,
    pool_sizes: Optional[Sequence[PerAxis]] = None,
    kernel_sizes: Optional[Sequence[PerAxis]] = None,
    in_channels: int = 1,
):
    """A 2D U-Net over the slices perpendicular to `slice_axis` of 3D inputs:
    (B, X, Y, Z, in_channels) -> (B, X, Y, Z, num_classes).

    Args:
      input_shape: (X, Y, Z[, 1]); only the two in-plane sizes must be divisible by their total
        pooling factors (2 ** (len(filters) - 1) by default).
      slice_axis: 0 (slices in the Y-Z plane), 1 (X-Z) or 2 (X-Y, axial for RAS-like volumes).
      pool_sizes / kernel_sizes: per level (see build_unet), each entry an int, 2 in-plane values
        (in X, Y, Z order with the slice axis left out) or 3 values (X, Y, Z) whose slice-axis
        value must be 1 and is dropped.

    Raises:
      ValueError: slice_axis not in (0, 1, 2), a 3-axis pool / kernel entry with a slice-axis
        value other than 1, or anything build_unet rejects (the divisibility message numbers the
        in-plane axes as the 3D axes they are).
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of X, Y, Z), got {slice_axis!r}")
    spatial = tuple(input_shape[:3])
    in_plane_axes = [axis for axis in range(3) if axis != slice_axis]
    pools_2d = _in_plane(pool_sizes, "pool_sizes", slice_axis, require_one=True)
    kernels_2d = _in_plane(kernel_sizes, "kernel_sizes", slice_axis, require_one=True)
    # Checked here, not only inside build_unet, so the message names the 3D axis.
    depth = len(filters)
    if depth >= 2:
        pools = _per_level_per_axis(pools_2d, "pool_sizes", depth - 1, 2, POOL_FACTORS, 2)
        _check_divisible([spatial[a] for a in in_plane_axes], pools, [str(a) for a in in_plane_axes])
    model2d = build_unet2d(
        tuple(spatial[a] for a in in_plane_axes),
        num_classes,
        filters,
        residual,
        norm,
        pool_sizes=pools_2d,
        kernel_sizes=kernels_2d,
        in_channels=in_channels,
    )
    inputs = keras.Input(shape=spatial + (in_channels,), name="image")
    # float32 layer dtype: the slices' probabilities leave the layer in float32 under any policy.
    outputs = SliceWise(model2d, slice_axis, name="slicewise", dtype="float32")(inputs)
    return keras.Model(inputs, outputs, name="unet2d_slicewise")
