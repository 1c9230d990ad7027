"""DatasetPlanner: after ImageExampleGen, fingerprints the training cases and plans every
setting the user left open (nnU-Net's plan step, inside the pipeline so it runs where the data
is and scales with Beam like the other components)."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Union

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.dashboard import artifacts as dashboard
from components.dataset_planner import artifacts, executor


class DatasetPlannerSpec(types.ComponentSpec):
    PARAMETERS = {
        executor.SETTINGS_KEY: ExecutionParameter(type=str),
        executor.USER_OVERRIDES_KEY: ExecutionParameter(type=str),
        executor.PLANNING_KEY: ExecutionParameter(type=str),
        executor.BUDGET_MINUTES_KEY: ExecutionParameter(type=float, optional=True),
    }
    INPUTS = {executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {
        executor.FINGERPRINT_KEY: ChannelParameter(type=artifacts.DatasetFingerprint),
        artifacts.PLAN_KEY: ChannelParameter(type=artifacts.Plan),
        executor.PLAN_REPORT_KEY: ChannelParameter(type=dashboard.Markdown),
    }


class DatasetPlanner(base_beam_component.BaseBeamComponent):
    """examples -> outputs['fingerprint'], outputs['plan'] (consumed by Transform, Trainer and
    Evaluator) and outputs['plan_report'] (both as the Kubeflow dashboard shows them: Markdown)."""

    SPEC_CLASS = DatasetPlannerSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        settings: Dict[str, Dict[str, Any]],
        user_overrides: Dict[str, Any],
        planning: Dict[str, Any],
        budget_minutes: Optional[Union[float, data_types.RuntimeParameter]] = None,
    ):
        """budget_minutes, when given (e.g. a Kubeflow run parameter), overrides
        planning['budget_minutes'] at run time."""
        super().__init__(
            spec=DatasetPlannerSpec(
                examples=examples,
                settings=json.dumps(settings, sort_keys=True),
                user_overrides=json.dumps(user_overrides, sort_keys=True),
                planning=json.dumps(planning, sort_keys=True),
                budget_minutes=budget_minutes,
                fingerprint=types.Channel(type=artifacts.DatasetFingerprint),
                plan=types.Channel(type=artifacts.Plan),
                plan_report=types.Channel(type=dashboard.Markdown),
            )
        )
