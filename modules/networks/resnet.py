"""3D ResNet classifier (tf_keras): a volume -> class probabilities of the whole case.

Pre-activation-free basic residual blocks (two 3x3x3 convolutions, He et al. 2016), a stride-2
convolution opening each stage after the first, global average pooling, a dense softmax (float32).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tf_keras as keras  # Keras 2 explicitly: tf.keras may already be Keras 3 in TFX's process

from modules.networks.unet import conv_block, normalization


def build_resnet3d(
    input_shape: Sequence[Optional[int]],
    num_classes: int,
    filters: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: int = 2,
    norm: str = "batch",
    dropout: float = 0.0,
    in_channels: int = 1,
):
    """ResNet for (X, Y, Z, in_channels) volumes -> (num_classes,) float32 softmax.

    Args:
      input_shape: (X, Y, Z[, 1]) voxels; None sizes allowed (global pooling).
      filters: channels per stage; each stage after the first halves the resolution.
      blocks_per_stage: residual blocks per stage.
      norm: unet.NORMS ('batch' suits classification batches; 'instance' for tiny batches).
      dropout: rate before the classifier.
    """
    inputs = keras.Input(shape=tuple(input_shape[:3]) + (in_channels,), name="image")
    x = keras.layers.Conv3D(filters[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = normalization(norm, filters[0], "stem_norm")(x)
    x = keras.layers.LeakyReLU(0.01, name="stem_act")(x)
    for stage, f in enumerate(filters):
        if stage:
            x = keras.layers.Conv3D(f, 3, strides=2, padding="same", use_bias=False, name=f"stage{stage}_down")(x)
            x = normalization(norm, f, f"stage{stage}_down_norm")(x)
            x = keras.layers.LeakyReLU(0.01, name=f"stage{stage}_down_act")(x)
        for block in range(blocks_per_stage):
            x = conv_block(x, f, f"stage{stage}_block{block}", 3, norm, residual=True)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Softmax(dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="resnet3d")
