"""AtomicPusher: tfx.components.Pusher with the atomic-publish executor (executor.py)."""

from __future__ import annotations

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.atomic_pusher import executor


class AtomicPusher(tfx.components.Pusher):
    """Same spec, inputs, outputs and blessing check as TFX's Pusher; publishes
    <base_directory>/<version> without ever exposing a half-written version (push.py)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
