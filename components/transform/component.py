"""Transform planned from the dataset: TFX's Transform whose settings come from the plan, and
whose executor also writes preview.png into the transform_graph artifact.

Same inputs, outputs and semantics as tfx.components.Transform plus an optional `plan` input;
TFX 1.16's Transform takes no custom executor, so the spec is built here. Statistics on
transformed voxels are off (TFDV on per-voxel features floods memory: tfx#1622)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.dataset_planner import artifacts
from components.transform import executor


class PlannedTransformSpec(standard_component_specs.TransformSpec):
    INPUTS = {
        **standard_component_specs.TransformSpec.INPUTS,
        artifacts.PLAN_KEY: ChannelParameter(type=artifacts.Plan, optional=True),
    }


class PlannedTransform(base_beam_component.BaseBeamComponent):
    """tfx.components.Transform with custom_config = the plan's transform settings (when a plan
    is given) + preview.png (see executor.py)."""

    SPEC_CLASS = PlannedTransformSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        schema: types.BaseChannel,
        preprocessing_fn: str,
        custom_config: Dict[str, Any],
        plan: Optional[types.BaseChannel] = None,
    ):
        super().__init__(
            spec=PlannedTransformSpec(
                examples=examples,
                schema=schema,
                preprocessing_fn=preprocessing_fn,
                force_tf_compat_v1=0,
                custom_config=json_utils.dumps(custom_config),
                disable_statistics=1,
                plan=plan,
                transform_graph=types.Channel(type=standard_artifacts.TransformGraph),
                transformed_examples=types.Channel(type=standard_artifacts.Examples),
                updated_analyzer_cache=types.Channel(type=standard_artifacts.TransformCache),
            )
        )
