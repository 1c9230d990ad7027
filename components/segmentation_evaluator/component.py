"""SegmentationEvaluator: the stock Evaluator's spec plus the evaluation settings, the number of
classes and an optional plan, run by an Executor that subclasses TFX's Evaluator executor.

Why a subclass and not a component after the Evaluator: the report must land in the Evaluator's
own ModelEvaluation artifact, and an artifact is immutable once its producer finishes (a later
component writing into it would bypass MLMD lineage and break caching). Same inputs, outputs
and blessing semantics as tfx.components.Evaluator, so the Resolver and Pusher wiring is
unchanged.
"""

from __future__ import annotations

from typing import List, Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils

from components.dashboard import artifacts as dashboard
from components.dataset_planner import artifacts
from components.segmentation_evaluator import eval_config, executor
from modules.settings import EvaluationSettings


class SegmentationEvaluatorSpec(types.ComponentSpec):
    """EvaluatorSpec + evaluation settings (JSON), num_classes, an optional plan (whose
    num_classes wins: the labels are known only once the data is fingerprinted), optional
    ExampleValidator anomalies (summarised in the report), and the report as the Kubeflow
    dashboard shows it (components/dashboard)."""

    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        executor.SETTINGS_KEY: ExecutionParameter(type=str),
        executor.NUM_CLASSES_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        **standard_component_specs.EvaluatorSpec.INPUTS,
        artifacts.PLAN_KEY: ChannelParameter(type=artifacts.Plan, optional=True),
        executor.ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies, optional=True),
    }
    OUTPUTS = {
        **standard_component_specs.EvaluatorSpec.OUTPUTS,
        executor.SUMMARY_KEY: ChannelParameter(type=dashboard.Markdown),
        executor.REPORT_KEY: ChannelParameter(type=dashboard.HTML),
        executor.METRICS_KEY: ChannelParameter(type=dashboard.Metrics),
    }


class SegmentationEvaluator(base_beam_component.BaseBeamComponent):
    """TFMA evaluation + blessing (as tfx.components.Evaluator) and, for segmentation, the
    surface report (components/segmentation_evaluator/report.py) in outputs['evaluation'];
    for the Kubeflow dashboard outputs['summary'] (Markdown: the summary and the anomalies),
    outputs['report'] (HTML, pictures embedded) and outputs['metrics'] (per-label Dice,
    surface Dice, HD95)."""

    SPEC_CLASS = SegmentationEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        model: types.BaseChannel,
        settings: EvaluationSettings,
        num_classes: int,
        baseline_model: Optional[types.BaseChannel] = None,
        plan: Optional[types.BaseChannel] = None,
        anomalies: Optional[types.BaseChannel] = None,
        example_splits: Optional[List[str]] = None,
    ):
        spec = SegmentationEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            plan=plan,
            anomalies=anomalies,
            eval_config=eval_config.eval_config(settings, num_classes),
            example_splits=json_utils.dumps(example_splits),
            fairness_indicator_thresholds=json_utils.dumps(None),
            settings=settings.model_dump_json(),
            num_classes=int(num_classes),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            summary=types.Channel(type=dashboard.Markdown),
            report=types.Channel(type=dashboard.HTML),
            metrics=types.Channel(type=dashboard.Metrics),
        )
        super().__init__(spec=spec)
