"""Losses against hand-computed values on tiny arrays; a perfect prediction scores 0."""

import math

import numpy as np
import pytest
import tensorflow as tf

from modules.train import losses


def _probs_2class(p1):
    p1 = np.asarray(p1, np.float32)
    return tf.constant(np.stack([1 - p1, p1], axis=-1))


def test_perfect_prediction_scores_zero():
    truth = np.array([[[0, 1, 2], [2, 1, 0]]])  # (1, 2, 3)
    onehot = tf.one_hot(truth, 3)
    for name in ("dice", "dice_ce", "gdice", "ce"):
        assert float(losses.get_loss(name, 3)(truth, onehot)) == pytest.approx(0.0, abs=1e-6), name


def test_soft_dice_hand_computed():
    truth = np.array([[0, 1, 1, 0]])
    pred = _probs_2class([[0.1, 0.8, 0.6, 0.3]])
    # class 1: intersection 0.8 + 0.6 = 1.4, |truth| = 2, sum(p) = 1.8 -> Dice 2.8 / 3.8
    expected = 1 - (2.8 + 1e-5) / (3.8 + 1e-5)
    assert float(losses.soft_dice_loss(2)(truth, pred)) == pytest.approx(expected, rel=1e-5)
    # with background: class 0 intersection 0.9 + 0.7 = 1.6, |truth| 2, sum(p) 2.2 -> 3.2 / 4.2
    both = 1 - ((2.8 + 1e-5) / (3.8 + 1e-5) + (3.2 + 1e-5) / (4.2 + 1e-5)) / 2
    assert float(losses.soft_dice_loss(2, include_background=True)(truth, pred)) == pytest.approx(both, rel=1e-5)


def test_dice_is_batch_dice_over_all_cases():
    # Two cases, each missing class 1 in one of them: the batch sums, not per-case means.
    truth = np.array([[1, 0], [0, 0]])
    pred = _probs_2class([[1.0, 0.0], [0.5, 0.0]])
    # intersection 1, |truth| 1, sum(p) 1.5 -> 2 / 2.5
    assert float(losses.soft_dice_loss(2)(truth, pred)) == pytest.approx(1 - (2 + 1e-5) / (2.5 + 1e-5), rel=1e-5)


def test_dice_ce_hand_computed():
    truth = np.array([[0, 1, 1, 0]])
    pred = _probs_2class([[0.1, 0.8, 0.6, 0.3]])
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.7)) / 4
    dice = 1 - (2.8 + 1e-5) / (3.8 + 1e-5)
    assert float(losses.dice_ce_loss(2)(truth, pred)) == pytest.approx(dice + ce, rel=1e-5)
    assert float(losses.cross_entropy_loss(2)(truth, pred)) == pytest.approx(ce, rel=1e-5)


def test_generalized_dice_hand_computed():
    truth = np.array([[1, 1, 2, 2, 2, 2, 0, 0]])
    p = np.array(
        [
            [0.2, 0.8, 0.0],
            [0.5, 0.5, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.5, 0.5],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0],
            [0.5, 0.0, 0.5],
        ],
        np.float32,
    )[None]
    # class 1: w = 1/2^2, intersection 0.8 + 0.5 = 1.3, |g| + sum(p) = 2 + 1.8 = 3.8
    # class 2: w = 1/4^2, intersection 1 + 0.5 + 1 + 1 = 3.5, |g| + sum(p) = 4 + 4.0 = 8.0
    numerator = 2 * (1.3 / 4 + 3.5 / 16) + 1e-5
    denominator = 3.8 / 4 + 8.0 / 16 + 1e-5
    assert float(losses.generalized_dice_loss(3)(truth, tf.constant(p))) == pytest.approx(
        1 - numerator / denominator, rel=1e-5
    )


def test_generalized_dice_ignores_class_absent_from_truth():
    truth = np.array([[1, 1, 0, 0]])
    p = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]], np.float32)[None]
    # class 2 absent from truth: weight 0, so only class 1 (perfect) counts.
    assert float(losses.generalized_dice_loss(3)(truth, tf.constant(p))) == pytest.approx(0.0, abs=1e-6)


def test_classification_cross_entropy():
    truth = np.array([0, 2])
    pred = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    expected = -(math.log(0.7) + math.log(0.6)) / 2
    assert float(losses.get_loss("ce", 3)(truth, pred)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.get_loss("ce", 3)(truth[:, None], pred)) == pytest.approx(expected, rel=1e-6)


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("focal", 3)
