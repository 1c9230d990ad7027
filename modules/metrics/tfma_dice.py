"""Dice as TFMA metrics with their own Beam combiner.

TFMA's Keras-metric wrapper chokes on non-scalar labels (tfx#5191, model-analysis#97), so the
combiner here reads each example's label map (X, Y, Z) and class probabilities (X, Y, Z, C)
directly. Dice is computed per case by modules.metrics.dice.dice_per_label and averaged over cases
(nnU-Net's convention); a case where a label is absent from both truth and prediction (NaN
there) does not count for that label.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types

from modules.metrics.dice import dice_per_label

PREDICTION_KEY = "probabilities"


def _as_array(value, key: str = PREDICTION_KEY) -> np.ndarray:
    if isinstance(value, dict):
        value = value[key] if key in value else next(iter(value.values()))
    return np.asarray(value)


def case_dice(label: np.ndarray, probabilities: np.ndarray, labels: List[int]) -> List[Dict[int, float]]:
    """Per-case Dice for each label id.

    label: (X, Y, Z) or (B, X, Y, Z) integer map; probabilities: the same plus a class axis.
    Returns one {label_id: dice} per case.
    """
    prediction = np.argmax(probabilities, axis=-1)
    label = np.asarray(label).reshape(prediction.shape)  # drops a trailing 1 / flattened copies
    if prediction.ndim == 3:
        return [dice_per_label(label, prediction, labels)]
    return [dice_per_label(t, p, labels) for t, p in zip(label, prediction)]


class _DiceCombiner(beam.CombineFn):
    """Accumulates per-label sums of per-case Dice and case counts; outputs their mean."""

    def __init__(self, key: metric_types.MetricKey, labels: List[int]):
        self._key = key
        self._labels = list(labels)

    def create_accumulator(self):
        return np.zeros((2, len(self._labels)))  # rows: sum of Dice, number of cases

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        label = _as_array(element.get_labels(self._key.model_name, self._key.output_name))
        probabilities = _as_array(element.get_predictions(self._key.model_name, self._key.output_name))
        for per_case in case_dice(label, probabilities, self._labels):
            values = np.array([per_case[k] for k in self._labels])
            defined = ~np.isnan(values)
            accumulator[0, defined] += values[defined]
            accumulator[1, defined] += 1
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]):
        return np.sum(list(accumulators), axis=0)

    def extract_output(self, accumulator) -> Dict[metric_types.MetricKey, float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_label = accumulator[0] / accumulator[1]
        value = float(np.nanmean(per_label)) if np.any(accumulator[1] > 0) else float("nan")
        return {self._key: value}


def _dice_computations(
    name: str,
    labels: List[int],
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    eval_config=None,
    **kwargs,
) -> metric_types.MetricComputations:
    del eval_config, kwargs
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name)
            computations.append(
                metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=_DiceCombiner(key, labels))
            )
    return computations


class Dice(metric_types.Metric):
    """Mean per-case Dice of one label id (argmax of the predicted probabilities)."""

    def __init__(self, label: int = 1, name: Optional[str] = None):
        super().__init__(_dice_computations, name=name or f"dice_label_{label}", labels=[int(label)])


class MeanDice(metric_types.Metric):
    """Mean over label ids of their mean per-case Dice (background excluded by the caller)."""

    def __init__(self, labels: Sequence[int] = (1,), name: str = "mean_dice"):
        super().__init__(_dice_computations, name=name, labels=[int(k) for k in labels])


metric_types.register_metric(Dice)
metric_types.register_metric(MeanDice)
