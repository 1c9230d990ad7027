"""Artifact types of the planning stage, and reading a plan back in a consumer's executor."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from tfx import types
from tfx.types import artifact_utils

FINGERPRINT_FILE = "fingerprint.json"
PLAN_FILE = "plan.json"
PLAN_KEY = "plan"


class DatasetFingerprint(types.Artifact):
    """fingerprint.json (modules/plan/fingerprint.py) and fingerprint.md of the train split."""

    TYPE_NAME = "medtfx.DatasetFingerprint"


class Plan(types.Artifact):
    """plan.json (modules/plan/planner.py, every stage's settings with their origin) and plan.md."""

    TYPE_NAME = "medtfx.Plan"


def read_plan(input_dict: Dict[str, List[types.Artifact]]) -> Optional[Dict[str, Any]]:
    """The plan a consumer received on its `plan` input, or None when the DAG has no planner."""
    artifacts = input_dict.get(PLAN_KEY) or []
    if not artifacts:
        return None
    import tensorflow as tf

    path = os.path.join(artifact_utils.get_single_uri(artifacts), PLAN_FILE)
    with tf.io.gfile.GFile(path) as fh:
        return json.loads(fh.read())


def without_plan(input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, List[types.Artifact]]:
    """input_dict as a consumer's stock TFX executor expects it: without the `plan` channel."""
    return {k: v for k, v in input_dict.items() if k != PLAN_KEY}


def with_plan(
    input_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
    key: str,
    value_of: Callable[[Dict[str, Any]], str],
) -> Tuple[Dict[str, List[types.Artifact]], Dict[str, Any]]:
    """What a consumer's stock TFX executor gets: input_dict without the `plan` channel and
    exec_properties[key] = value_of(plan) when there is a plan (without a planner the configured
    exec properties stand)."""
    plan = read_plan(input_dict)
    if plan is not None:
        exec_properties = {**exec_properties, key: value_of(plan)}
    return without_plan(input_dict), exec_properties
