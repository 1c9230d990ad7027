"""The plan as the configuration (modules/plan/planning.py): planner choices over the configured
settings, the user's settings kept and recorded, every stage's settings complete and valid."""

import pytest

from modules.plan import planning
from modules.settings import TrainingSettings, TransformSettings
from pipeline.config import make_config
from tests.test_planner import CPU, HIPPOCAMPUS, fake_step_seconds, fingerprint


def _plan(overrides=()):
    cfg = make_config(list(overrides))
    base = {"transform": cfg.transform.model_dump(mode="json"), "training": cfg.training.model_dump(mode="json")}
    return cfg, planning.build_plan(
        fingerprint(**HIPPOCAMPUS), base, cfg.user_overrides(), cfg.planning, fake_step_seconds(), machine=CPU
    )


def test_plan_settings_are_complete_and_valid():
    _, plan = _plan()
    transform = TransformSettings.model_validate(plan["settings"]["transform"])
    training = TrainingSettings.model_validate(plan["settings"]["training"])
    assert transform.target_spacing == (1.0, 1.0, 1.0) and training.num_classes == 3
    assert training.patch_size is not None and len(training.filters) == len(training.kernel_sizes)
    assert plan["inputs"] == {"channels": 1, "modalities": ["MR"]}


@pytest.mark.parametrize(
    "override,stage,field,value",
    [
        ("filters=[8,16,32]", "training", "filters", [8, 16, 32]),  # a planned key
        ("residual=true", "training", "residual", True),  # a key the planner does not decide
        ("intensity_window=[-100,100]", "transform", "intensity_window", [-100.0, 100.0]),
        ("train_steps=50", "training", "train_steps", 50),
    ],
)
def test_user_settings_win_and_are_recorded(override, stage, field, value):
    _, plan = _plan([override])
    assert plan["settings"][stage][field] == value
    decisions = {d["key"]: d for d in plan["decisions"]}
    if f"{stage}.{field}" in decisions:
        assert decisions[f"{stage}.{field}"]["origin"] == "user"


def test_budget_from_planning_settings_changes_the_steps():
    _, short = _plan(["budget_minutes=5"])
    _, long = _plan(["budget_minutes=60"])
    assert short["settings"]["training"]["train_steps"] < long["settings"]["training"]["train_steps"]
    assert short["budget_minutes"] == 5.0
