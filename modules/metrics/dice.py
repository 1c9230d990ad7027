"""Volumetric Dice in numpy: the one definition every Dice in medtfx uses.

Callers: the TFMA metrics (modules/metrics/tfma_dice.py), the native-grid surface report
(modules/surface_metrics.label_metrics) and the training callback's validation Dice.

A label absent from both the truth and the prediction of a case has no Dice (0/0): it scores
NaN for that case, which means "skipped". It is neither 1 (a perfect empty prediction would
inflate means on cases that never had the structure) nor 0 (it would punish a correct empty
prediction). Means over cases therefore skip NaN (np.nanmean, surface_metrics.summarise).
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np


def dice_per_label(truth: np.ndarray, prediction: np.ndarray, labels: Iterable[int]) -> Dict[int, float]:
    """Dice of each label id between two integer label maps of one case.

    Args:
      truth: integer label map, any shape (usually (X, Y, Z)).
      prediction: integer label map of the same shape as `truth`.
      labels: label ids to score.
    Returns:
      {label_id: 2 |T ∩ P| / (|T| + |P|)} in [0, 1]; NaN for a label absent from both maps.
    Raises:
      ValueError: if the two maps differ in shape.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    out = {}
    for k in labels:
        t, p = truth == k, prediction == k
        denominator = int(np.count_nonzero(t)) + int(np.count_nonzero(p))
        out[int(k)] = 2.0 * np.count_nonzero(t & p) / denominator if denominator else float("nan")
    return out
