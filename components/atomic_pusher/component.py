"""AtomicPusher: tfx.components.Pusher with the atomic-publish executor (executor.py)."""

from __future__ import annotations

from typing import Optional, Union

from tfx import types
from tfx import v1 as tfx
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from components.atomic_pusher import executor

StrParameter = Optional[Union[str, data_types.RuntimeParameter]]


class AtomicPusherSpec(standard_component_specs.PusherSpec):
    """TFX's PusherSpec plus optional run-time overrides of the push target (executor.push_base)."""

    PARAMETERS = {
        **standard_component_specs.PusherSpec.PARAMETERS,
        executor.SERVING_BASE_KEY: ExecutionParameter(type=str, optional=True),
        executor.MODEL_NAME_KEY: ExecutionParameter(type=str, optional=True),
        executor.SERVING_ROOT_KEY: ExecutionParameter(type=str, optional=True),
    }


class AtomicPusher(tfx.components.Pusher):
    """Same inputs, outputs and blessing check as TFX's Pusher; publishes
    <base_directory>/<version> without ever exposing a half-written version (push.py).

    serving_base / model_name / serving_root (strings or Kubeflow run parameters) override
    push_destination's base directory at run time: serving_base if non-empty, else
    <serving_root>/<model_name> if both are non-empty."""

    SPEC_CLASS = AtomicPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        model_blessing: types.BaseChannel,
        push_destination: pusher_pb2.PushDestination,
        serving_base: StrParameter = None,
        model_name: StrParameter = None,
        serving_root: StrParameter = None,
    ):
        spec = AtomicPusherSpec(
            model=model,
            model_blessing=model_blessing,
            push_destination=push_destination,
            custom_config=json_utils.dumps(None),
            serving_base=serving_base,
            model_name=model_name,
            serving_root=serving_root,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        # TFX's Pusher.__init__ builds its own PusherSpec: skip to the base component.
        base_component.BaseComponent.__init__(self, spec=spec)
