"""Losses (tf_keras compatible: fn(y_true, y_pred) -> scalar).

Segmentation: y_true (B, *spatial) integer labels; y_pred (B, *spatial, C) softmax probabilities.
Classification: y_true (B,) or (B, 1) class ids; y_pred (B, C) softmax probabilities.
Probabilities are cast to float32 first, so the losses are safe under mixed precision.
"""

from __future__ import annotations

from typing import Callable, Dict

import tensorflow as tf

_EPS = 1e-7  # probability floor for the logarithm in cross-entropy


def _onehot_and_probs(y_true, y_pred, num_classes: int):
    y_pred = tf.cast(y_pred, tf.float32)
    labels = tf.cast(y_true, tf.int32)
    if labels.shape.rank is not None and y_pred.shape.rank is not None and labels.shape.rank == y_pred.shape.rank:
        labels = tf.squeeze(labels, -1)  # (B, ..., 1) labels
    return tf.one_hot(labels, num_classes, dtype=tf.float32), y_pred


def _class_sums(onehot, y_pred):
    """Per-class (intersection, truth volume, predicted volume), each (C,), summed over the batch
    and all voxels (nnU-Net's 'batch Dice': stable when a patch lacks some class)."""
    axes = tf.range(tf.rank(y_pred) - 1)
    return (
        tf.reduce_sum(onehot * y_pred, axis=axes),
        tf.reduce_sum(onehot, axis=axes),
        tf.reduce_sum(y_pred, axis=axes),
    )


def soft_dice_loss(num_classes: int, smooth: float = 1e-5, include_background: bool = False):
    """1 - mean over classes of (2 * sum(p * g) + smooth) / (sum(g) + sum(p) + smooth).

    Background (class 0) is excluded by default. A perfect one-hot prediction gives 0.
    """
    first = 0 if include_background else 1

    def loss(y_true, y_pred):
        onehot, probs = _onehot_and_probs(y_true, y_pred, num_classes)
        intersection, truth, predicted = _class_sums(onehot, probs)
        dice = (2.0 * intersection + smooth) / (truth + predicted + smooth)
        return 1.0 - tf.reduce_mean(dice[first:])

    loss.__name__ = "soft_dice_loss"
    return loss


def generalized_dice_loss(num_classes: int, smooth: float = 1e-5, include_background: bool = False):
    """Generalised Dice (Sudre et al. 2017): class weights w_c = 1 / (sum g_c)^2, so small
    structures count as much as large ones:
        1 - (2 * sum_c w_c sum(p g) + smooth) / (sum_c w_c (sum(g) + sum(p)) + smooth).
    A class absent from the batch's truth gets weight 0 (its 1/0^2 would dominate)."""
    first = 0 if include_background else 1

    def loss(y_true, y_pred):
        onehot, probs = _onehot_and_probs(y_true, y_pred, num_classes)
        intersection, truth, predicted = _class_sums(onehot, probs)
        intersection, truth, predicted = intersection[first:], truth[first:], predicted[first:]
        weights = tf.math.divide_no_nan(1.0, tf.square(truth))
        numerator = 2.0 * tf.reduce_sum(weights * intersection) + smooth
        denominator = tf.reduce_sum(weights * (truth + predicted)) + smooth
        return 1.0 - numerator / denominator

    loss.__name__ = "generalized_dice_loss"
    return loss


def cross_entropy_loss(num_classes: int):
    """Mean categorical cross-entropy -log p[true class] over all voxels (or cases); works for
    segmentation and classification shapes alike."""

    def loss(y_true, y_pred):
        onehot, probs = _onehot_and_probs(y_true, y_pred, num_classes)
        picked = tf.reduce_sum(onehot * probs, axis=-1)
        return -tf.reduce_mean(tf.math.log(tf.clip_by_value(picked, _EPS, 1.0)))

    loss.__name__ = "cross_entropy_loss"
    return loss


def dice_ce_loss(num_classes: int, ce_weight: float = 1.0):
    """Soft Dice + cross-entropy (nnU-Net's default)."""
    dice = soft_dice_loss(num_classes)
    ce = cross_entropy_loss(num_classes)

    def loss(y_true, y_pred):
        return dice(y_true, y_pred) + ce_weight * ce(y_true, y_pred)

    loss.__name__ = "dice_ce_loss"
    return loss


# name -> factory: num_classes -> fn(y_true, y_pred) -> scalar loss.
LOSSES: Dict[str, Callable[[int], Callable]] = {
    "dice": soft_dice_loss,
    "dice_ce": dice_ce_loss,
    "gdice": generalized_dice_loss,
    "ce": cross_entropy_loss,
}


def get_loss(name: str, num_classes: int):
    """'dice' | 'dice_ce' | 'gdice' | 'ce' -> loss function."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](num_classes)
