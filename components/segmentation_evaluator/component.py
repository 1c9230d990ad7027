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

from components.dataset_planner import artifacts
from components.segmentation_evaluator import eval_config, executor
from modules.settings import EvaluationSettings


class SegmentationEvaluatorSpec(types.ComponentSpec):
    """EvaluatorSpec + evaluation settings (JSON), num_classes, and an optional plan (whose
    num_classes wins: the labels are known only once the data is fingerprinted)."""

    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        executor.SETTINGS_KEY: ExecutionParameter(type=str),
        executor.NUM_CLASSES_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
        **standard_component_specs.EvaluatorSpec.INPUTS,
        artifacts.PLAN_KEY: ChannelParameter(type=artifacts.Plan, optional=True),
    }
    OUTPUTS = standard_component_specs.EvaluatorSpec.OUTPUTS


class SegmentationEvaluator(base_beam_component.BaseBeamComponent):
    """TFMA evaluation + blessing (as tfx.components.Evaluator) and, for segmentation, the
    surface report (components/segmentation_evaluator/report.py) in outputs['evaluation']."""

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
        example_splits: Optional[List[str]] = None,
    ):
        spec = SegmentationEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            plan=plan,
            eval_config=eval_config.eval_config(settings, num_classes),
            example_splits=json_utils.dumps(example_splits),
            fairness_indicator_thresholds=json_utils.dumps(None),
            settings=settings.model_dump_json(),
            num_classes=int(num_classes),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)
