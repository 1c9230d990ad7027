"""The plan as the configuration: the planner's choices merged with the pipeline's settings.

`build_plan` is what the DatasetPlanner component and `medtfx plan` run: it asks the planner
(modules.plan.planner) for every choice the user left open, keeps what the user set (recorded
with origin "user"), and validates each stage's complete settings with its model
(modules.settings), so a consumer takes `plan["settings"][stage]` as its whole configuration.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from modules.plan import planner
from modules.settings import STAGES, PlanningSettings

PLANNED_STAGES = ("transform", "training")


def trained_modalities(fingerprint: Dict[str, Any]) -> list:
    """The training cases' modality values ('MR', or 'MR,MR' for two channels), the ones the
    model may be asked about."""
    if fingerprint.get("cases"):
        return sorted({str(c["modality"]) for c in fingerprint["cases"]})
    return sorted(fingerprint["channels"][0].get("modality_counts", {}))


def build_plan(
    fingerprint: Dict[str, Any],
    base_settings: Dict[str, Dict[str, Any]],
    user_overrides: Dict[str, Any],
    planning: PlanningSettings,
    step_seconds: Callable[[Dict], float],
    machine: Optional[planner.Machine] = None,
) -> Dict[str, Any]:
    """The plan: planner choices, then the user's settings, over `base_settings` (stage ->
    settings dict as configured). Raises ValueError (pydantic's) when the merged settings of a
    stage are invalid."""
    machine = machine or planner.detect_machine()
    # The planner decides SETTINGS_KEYS; the user's other settings are merged in below.
    planned_overrides = {
        k: v
        for k, v in user_overrides.items()
        if "." in k and k.split(".", 1)[1] in planner.SETTINGS_KEYS.get(k.split(".", 1)[0], ())
    }
    plan = planner.make_plan(
        fingerprint,
        planning.budget_minutes,
        machine,
        step_seconds,
        overrides=planned_overrides,
        min_steps=planning.min_steps,
    )
    for stage in PLANNED_STAGES:
        merged = {**base_settings.get(stage, {}), **plan["settings"].get(stage, {})}
        for key, value in user_overrides.items():
            if key.startswith(stage + "."):
                merged[key.split(".", 1)[1]] = value
        plan["settings"][stage] = STAGES[stage].model_validate(merged).model_dump(mode="json")
    plan["inputs"] = {"channels": len(fingerprint["channels"]), "modalities": trained_modalities(fingerprint)}
    return plan
