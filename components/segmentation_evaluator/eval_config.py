"""TFMA EvalConfigs of the Evaluator, from the evaluation settings and the label ids (which the
plan knows only at run time, so the executor rebuilds the config from the same function)."""

from __future__ import annotations

import json
from typing import List, Sequence

import tensorflow_model_analysis as tfma

from components.segmentation_evaluator.report import SLICE_FEATURES
from modules.settings import EvaluationSettings
from modules.transform.preprocessing import LABEL


def _gate(lower_bound: float, max_drop: float):
    """Bless when the metric on the overall slice is >= lower_bound and at most max_drop below the
    baseline's (the change part applies only when a baseline model exists: TFX rubber-stamps the
    first model). Overall only: small slices (one site, a few cases) are reported, not gating."""
    return [
        tfma.PerSliceMetricThreshold(
            slicing_specs=[tfma.SlicingSpec()],
            threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": lower_bound}),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_drop}
                ),
            ),
        )
    ]


def classification_metrics_specs(settings: EvaluationSettings, num_classes: int) -> List[tfma.MetricsSpec]:
    """Example count and accuracy; one-vs-rest AUC per class id and their macro average, which
    gates the blessing (min_auc, max_auc_drop)."""
    class_ids = list(range(num_classes))
    return [
        tfma.MetricsSpec(
            metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy"),
            ]
        ),
        tfma.MetricsSpec(
            metrics=[tfma.MetricConfig(class_name="AUC")],
            binarize=tfma.BinarizationOptions(class_ids={"values": class_ids}),
        ),
        tfma.MetricsSpec(
            metrics=[
                tfma.MetricConfig(class_name="AUC", per_slice_thresholds=_gate(settings.min_auc, settings.max_auc_drop))
            ],
            aggregate=tfma.AggregationOptions(macro_average=True, class_weights={k: 1.0 for k in class_ids}),
        ),
    ]


def segmentation_metrics_specs(settings: EvaluationSettings, labels: Sequence[int]) -> List[tfma.MetricsSpec]:
    """Per-label and mean Dice (modules.metrics.tfma_dice); mean Dice gates the blessing."""
    labels = [int(k) for k in labels]
    metrics = [
        tfma.MetricConfig(
            class_name="Dice",
            module="modules.metrics.tfma_dice",
            config=json.dumps({"label": k, "name": f"dice_label_{k}"}),
        )
        for k in labels
    ]
    metrics.append(
        tfma.MetricConfig(
            class_name="MeanDice",
            module="modules.metrics.tfma_dice",
            config=json.dumps({"labels": labels, "name": "mean_dice"}),
            per_slice_thresholds=_gate(settings.min_mean_dice, settings.max_dice_drop),
        )
    )
    return [tfma.MetricsSpec(metrics=metrics)]


def eval_config(settings: EvaluationSettings, num_classes: int) -> tfma.EvalConfig:
    """Segmentation: Dice per foreground label 1..num_classes-1 and their mean, gated by
    min_mean_dice / max_dice_drop. Classification: see classification_metrics_specs. Both
    sliced by SLICE_FEATURES."""
    model_specs = [
        tfma.ModelSpec(signature_name="evaluate", label_key=LABEL, preprocessing_function_names=["transform_features"])
    ]
    slicing_specs = [tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[f]) for f in SLICE_FEATURES]
    specs = (
        classification_metrics_specs(settings, num_classes)
        if settings.task == "classification"
        else segmentation_metrics_specs(settings, range(1, num_classes))
    )
    return tfma.EvalConfig(model_specs=model_specs, slicing_specs=slicing_specs, metrics_specs=specs)
