"""TFX's GenericExecutor with the Trainer's custom_config taken from the plan."""

from __future__ import annotations

import json
from typing import Any, Dict, List

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.types import standard_component_specs

from components.dataset_planner import artifacts


def custom_config_from_plan(plan: Dict[str, Any]) -> Dict[str, Any]:
    """The Trainer's custom_config (modules.train.trainer.trainer_config) of a plan."""
    return {"training": plan["settings"]["training"], "inputs": plan.get("inputs", {}), "plan": plan}


class Executor(trainer_executor.GenericExecutor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        stock_inputs, exec_properties = artifacts.with_plan(
            input_dict,
            exec_properties,
            standard_component_specs.CUSTOM_CONFIG_KEY,
            lambda plan: json.dumps(custom_config_from_plan(plan)),
        )
        super().Do(stock_inputs, output_dict, exec_properties)
