"""Trainer planned from the dataset: TFX's Trainer (GenericExecutor, run_fn by import path)
whose custom_config comes from the plan when one is given.

Same inputs, outputs and semantics as tfx.components.Trainer plus an optional `plan` input;
the spec is built here because tfx.components.Trainer builds its own fixed spec class."""

from __future__ import annotations

from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.dataset_planner import artifacts
from components.planned_trainer import executor


class PlannedTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        artifacts.PLAN_KEY: ChannelParameter(type=artifacts.Plan, optional=True),
    }


class PlannedTrainer(base_component.BaseComponent):
    """tfx.components.Trainer with custom_config {'training', 'inputs', 'plan'} taken from the
    plan (modules/train/trainer.py `trainer_config` reads it)."""

    SPEC_CLASS = PlannedTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        run_fn: str,
        custom_config: Dict[str, Any],
        train_steps: int,
        eval_steps: int,
        plan: Optional[types.BaseChannel] = None,
    ):
        super().__init__(
            spec=PlannedTrainerSpec(
                examples=examples,
                transform_graph=transform_graph,
                run_fn=run_fn,
                train_args=trainer_pb2.TrainArgs(num_steps=train_steps),
                eval_args=trainer_pb2.EvalArgs(num_steps=eval_steps),
                custom_config=json_utils.dumps(custom_config),
                plan=plan,
                model=types.Channel(type=standard_artifacts.Model),
                model_run=types.Channel(type=standard_artifacts.ModelRun),
            )
        )
