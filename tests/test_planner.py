"""The self-configuring planner on realistic fingerprints, with an analytic step-time fake.

No TensorFlow: modules/plan/planner.py is numpy + stdlib, and one test checks it stays so.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from modules.plan import planner
from modules.plan.planner import Machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = Machine(cpu_count=2, memory_gb=16.0)
CPU_BF16 = Machine(cpu_count=8, memory_gb=32.0, bf16=True)
GPU = Machine(cpu_count=8, memory_gb=64.0, accelerator="gpu", accelerator_memory_gb=16.0)


def fingerprint(
    modality="MR",
    spacing=(1.0, 1.0, 1.0),
    p10=None,
    shape=(36, 50, 35),
    shape_max=None,
    num_cases=260,
    labels=(0, 1, 2),
    boxes=None,
    integer_valued=False,
    intensity=(0.0, 50.0, 400.0),
):
    """A fingerprint in modules/plan/fingerprint.combine's format. Case 0 has the largest shape;
    the others vary +-15 % around the median. boxes: {label: bbox_mm_median}."""
    spacing = np.asarray(spacing, float)
    shape = np.asarray(shape, float)
    p10 = np.asarray(spacing if p10 is None else p10, float)
    shape_max = np.asarray(np.ceil(shape * 1.2) if shape_max is None else shape_max, float)
    boxes = boxes or {str(label): [10.0, 10.0, 10.0] for label in labels if label}
    lo, mid, hi = intensity
    rng = np.random.default_rng(0)
    cases = []
    for i in range(num_cases):
        case_shape = shape_max if i == 0 else np.minimum(np.round(shape * rng.uniform(0.85, 1.15, 3)), shape_max)
        cases.append(
            {
                "case": f"c{i:03d}",
                "spacing": spacing.tolist(),
                "shape": case_shape.tolist(),
                "modality": modality,
                "label_voxels": {k: 1000 for k in boxes},
            }
        )
    return {
        "version": 1,
        "num_cases": num_cases,
        "channels": [
            {
                "index": 0,
                "modality": modality,
                "modality_counts": {modality: num_cases},
                "integer_valued": integer_valued,
                "foreground_intensity": {
                    "mean": mid,
                    "std": (hi - lo) / 4,
                    "min": lo,
                    "max": hi,
                    "p00_5": lo,
                    "p50": mid,
                    "p99_5": hi,
                },
            }
        ],
        "spacing": {
            "median": spacing.tolist(),
            "p10": p10.tolist(),
            "p90": spacing.tolist(),
            "min": p10.tolist(),
            "max": spacing.tolist(),
        },
        "shape": {
            "median": shape.tolist(),
            "p90": (shape * 1.1).tolist(),
            "min": (shape * 0.8).tolist(),
            "max": shape_max.tolist(),
        },
        "extent_mm": {"median": (shape * spacing).tolist(), "max": (shape_max * spacing).tolist()},
        "labels": list(labels),
        "label_stats": {
            k: {
                "cases": num_cases,
                "voxels_median": 1500.0,
                "volume_mm3_median": 1500.0,
                "volume_mm3_min": 600.0,
                "bbox_mm_median": list(b),
            }
            for k, b in boxes.items()
        },
        "foreground_bbox_mm_max": [max(b[a] for b in boxes.values()) for a in range(3)],
        "cases": cases,
    }


# Decathlon Task04 hippocampus: MR, 1 mm isotropic, ~36x50x35 voxels, two small structures.
HIPPOCAMPUS = dict(
    modality="MR",
    spacing=(1, 1, 1),
    shape=(36, 50, 35),
    shape_max=(43, 59, 47),
    num_cases=260,
    boxes={"1": [20, 30, 18], "2": [18, 28, 16]},
)
# CT abdomen-like: 0.8x0.8x4 mm, 150 mm field of view, a large organ with a ~16 mm lesion inside.
CT = dict(
    modality="CT",
    spacing=(0.8, 0.8, 4.0),
    p10=(0.7, 0.7, 2.5),
    shape=(188, 188, 38),
    shape_max=(200, 200, 50),
    num_cases=40,
    integer_valued=True,
    intensity=(-1024, 40, 1500),
    boxes={"1": [90, 70, 60], "2": [16, 16, 16]},
)
THIN_Z = dict(modality="MR", spacing=(1, 1, 1.5), shape=(128, 128, 8), shape_max=(140, 140, 10), num_cases=30)
THIN_X = dict(modality="MR", spacing=(1.5, 1, 1), shape=(8, 128, 128), shape_max=(10, 140, 140), num_cases=30)
VERY_ANISOTROPIC = dict(
    modality="MR",
    spacing=(0.5, 0.5, 6.0),
    p10=(0.5, 0.5, 5.0),
    shape=(320, 320, 24),
    shape_max=(384, 384, 30),
    num_cases=50,
)
DATASETS = {
    "hippocampus": HIPPOCAMPUS,
    "ct": CT,
    "thin_z": THIN_Z,
    "thin_x": THIN_X,
    "very_anisotropic": VERY_ANISOTROPIC,
}


def fake_step_seconds(calls=None, mixed_factor=0.6):
    """Analytic step time: patch voxels x batch x sum over levels of filters^2 / 8^level
    (about 1 s for the hippocampus plan), x mixed_factor under mixed precision."""

    def step(settings):
        if calls is not None:
            calls.append(dict(settings))
        levels = sum(f * f / 8**level for level, f in enumerate(settings["filters"]))
        seconds = 1.2e-8 * np.prod(settings["patch_size"]) * settings["batch_size"] * levels
        return float(seconds * (mixed_factor if settings["mixed_precision"] else 1.0))

    return step


def plan_for(name, budget=30.0, machine=CPU, overrides=None, calls=None, **kwargs):
    return planner.make_plan(
        fingerprint(**DATASETS[name]), budget, machine, fake_step_seconds(calls), overrides=overrides, **kwargs
    )


def decision(plan, key):
    matches = [d for d in plan["decisions"] if d["key"] == key]
    assert len(matches) == 1, key
    return matches[0]


# ------------------------------------------------------------------------------------------------
# Whole plans for the realistic datasets


@pytest.mark.parametrize(
    "name, model, slice_axis, spacing, intensity",
    [
        ("hippocampus", "unet3d", 2, [1.0, 1.0, 1.0], {"MR": "zscore_nonzero", "*": "zscore_nonzero"}),
        # anisotropic (ratio 5 > 3): z takes its 10th percentile 2.5 mm instead of the 4 mm median
        ("ct", "unet3d", 2, [0.8, 0.8, 2.5], {"CT": "dataset", "*": "zscore_nonzero"}),
        # 8 slices: too thin for 3D pooling -> 2D perpendicular to the thin axis
        ("thin_z", "unet2d", 2, [1.0, 1.0, 1.5], {"MR": "zscore_nonzero", "*": "zscore_nonzero"}),
        ("thin_x", "unet2d", 0, [1.5, 1.0, 1.0], {"MR": "zscore_nonzero", "*": "zscore_nonzero"}),
        # 0.5x0.5x6 mm (ratio 12 > 10) but 29 resampled slices (not thin): 2D for the anisotropy
        ("very_anisotropic", "unet2d", 2, [0.5, 0.5, 5.0], {"MR": "zscore_nonzero", "*": "zscore_nonzero"}),
    ],
)
def test_dataset_plans(name, model, slice_axis, spacing, intensity):
    plan = plan_for(name)
    training, transform = plan["settings"]["training"], plan["settings"]["transform"]
    assert training["model"] == model
    assert training["slice_axis"] == slice_axis
    assert transform["target_spacing"] == pytest.approx(spacing)
    assert transform["intensity_mode"] == intensity
    assert transform["spatial_mode"] == "fixed_shape"
    assert training["num_classes"] == 3
    assert training["loss"] == "dice_ce" and training["learning_rate"] == pytest.approx(3e-3)
    assert training["sliding_window_overlap"] == 0.5 and training["foreground_oversample"] == 0.33
    assert json.loads(json.dumps(plan)) == plan


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("machine", [CPU, GPU], ids=["cpu", "gpu"])
def test_topology_is_consistent(name, machine):
    training = plan_for(name, machine=machine)["settings"]["training"]
    transform = plan_for(name, machine=machine)["settings"]["transform"]
    filters, pools, kernels = training["filters"], training["pool_sizes"], training["kernel_sizes"]
    assert len(pools) == len(filters) - 1 and len(kernels) == len(filters)
    assert len(filters) <= planner.MAX_LEVELS[machine.accelerator]
    assert all(len(p) == 3 and set(p) <= {1, 2} for p in pools)
    assert all(len(k) == 3 and set(k) <= {1, 3} for k in kernels)
    divisor = np.prod(np.array(pools), axis=0) if pools else np.ones(3, int)
    patch, grid = np.array(training["patch_size"]), np.array(transform["target_shape"])
    assert np.all(patch % divisor == 0), (patch, divisor)
    assert np.all(grid % divisor == 0), (grid, divisor)
    assert np.all(patch <= grid)
    if training["model"] == "unet2d":
        axis = training["slice_axis"]
        assert all(p[axis] == 1 for p in pools) and all(k[axis] == 1 for k in kernels)


def test_hippocampus_plan_matches_nnunet_and_fits_the_budget():
    plan = plan_for("hippocampus", budget=30.0)
    training, estimates = plan["settings"]["training"], plan["estimates"]
    # nnU-Net's 3d_fullres patch for Task04 is 40x56x40 (median 36x50x35 rounded up to 8s).
    assert training["patch_size"] == [40, 56, 40]
    assert training["filters"] == [16, 32, 64, 128]
    assert training["pool_sizes"] == [[2, 2, 2]] * 3
    assert training["kernel_sizes"] == [[3, 3, 3]] * 4
    assert training["batch_size"] == 2
    assert training["mixed_precision"] is False
    assert training["train_steps"] >= 800
    assert training["train_steps"] * estimates["step_seconds"] <= training["time_limit_minutes"] * 60 + 1e-6
    total = estimates["training_minutes"] + estimates["validation_minutes"] + estimates["export_minutes"]
    assert total == pytest.approx(30.0, abs=0.05)
    assert 1 <= training["epochs"] <= 20
    assert training["val_dice_cases"] == 20  # min(20, 260 / 5)
    # the grid covers the largest case (43x59x47 mm at 1 mm)
    assert all(g >= m for g, m in zip(plan["settings"]["transform"]["target_shape"], [43, 59, 47]))
    assert plan["warnings"] == []


def test_ct_plan_is_anisotropic_and_keeps_the_field_of_view():
    plan = plan_for("ct", budget=30.0)
    training, transform = plan["settings"]["training"], plan["settings"]["transform"]
    # 2.5 mm z vs 0.8 mm in-plane: no z pooling and in-plane kernels at the first level
    assert training["pool_sizes"][0] == [2, 2, 1]
    assert training["kernel_sizes"][0] == [3, 3, 1]
    # after one in-plane pooling (1.6 mm) z is within 2x: pooled and 3 wide from then on
    assert training["pool_sizes"][1] == [2, 2, 2]
    assert training["kernel_sizes"][1] == [3, 3, 3]
    covered_mm = np.array(transform["target_shape"]) * np.array(transform["target_spacing"])
    assert np.all(covered_mm >= np.array([160.0, 160.0, 200.0]) - 1e-6)  # largest field of view
    assert np.all(covered_mm[:2] >= 150.0)
    assert not any("cropped" in w for w in plan["warnings"])


def test_ct_like_unknown_modality_is_treated_as_ct_with_a_warning():
    fp = fingerprint(**{**CT, "modality": "unknown"})
    plan = planner.make_plan(fp, 30.0, CPU, fake_step_seconds())
    assert plan["settings"]["transform"]["intensity_mode"] == {"unknown": "dataset", "*": "zscore_nonzero"}
    assert any("treated as CT" in w for w in plan["warnings"])
    # not CT-like (no air values): per-volume z-score, no warning
    fp = fingerprint(**{**HIPPOCAMPUS, "modality": "OT", "integer_valued": True})
    plan = planner.make_plan(fp, 30.0, CPU, fake_step_seconds())
    assert plan["settings"]["transform"]["intensity_mode"] == {"OT": "zscore_nonzero", "*": "zscore_nonzero"}
    assert not any("CT" in w for w in plan["warnings"])


def test_huge_field_of_view_uses_the_p90_grid_with_a_warning_but_keeps_the_structures():
    # 700 mm fields of view at 1 mm exceed 256^3 voxels: the grid drops to the 90th percentile
    fp = fingerprint(
        modality="MR",
        spacing=(1, 1, 1),
        shape=(300, 300, 300),
        shape_max=(700, 700, 700),
        num_cases=20,
        boxes={"1": [320, 320, 320]},
    )
    plan = planner.make_plan(fp, 600.0, CPU, fake_step_seconds())
    grid = np.array(plan["settings"]["transform"]["target_shape"])
    assert np.all(grid < 700)
    assert np.all(grid >= 320)  # never smaller than the largest foreground box
    warning = next(w for w in plan["warnings"] if "cropped" in w)
    assert "of 20 cases will be cropped" in warning


# ------------------------------------------------------------------------------------------------
# Budget shrinking: filters, then batch, then patch, then spacing


@pytest.mark.parametrize(
    "budget, filters_shrunk, patch_shrunk, spacing_coarsened",
    [
        (30.0, False, False, False),
        (5.0, True, False, False),  # cheaper filters suffice: the patch stays nnU-Net's
        (3.0, True, True, False),  # filters at the floor, then the patch
        (2.0, True, True, True),  # then a low-resolution plan
    ],
)
def test_budget_shrinks_filters_then_patch_then_spacing(budget, filters_shrunk, patch_shrunk, spacing_coarsened):
    plan = plan_for("hippocampus", budget=budget)
    training, transform = plan["settings"]["training"], plan["settings"]["transform"]
    assert (training["filters"][0] == 8) == filters_shrunk
    patch_reason = decision(plan, "training.patch_size")["reason"]
    assert ("halved for the time budget" in patch_reason) == patch_shrunk
    if not patch_shrunk:
        assert training["patch_size"] == [40, 56, 40]
    assert (transform["target_spacing"] != [1.0, 1.0, 1.0]) == spacing_coarsened
    assert training["train_steps"] >= 800
    assert ("capped lower" in decision(plan, "training.filters")["reason"]) == filters_shrunk
    assert ("coarsened" in decision(plan, "transform.target_spacing")["reason"]) == spacing_coarsened


@pytest.mark.parametrize("budget", [120.0, 30.0])
def test_shrinking_never_grows_the_memory_limited_patch(budget):
    # CT on 16 GB: the memory rule shrinks the patch; fewer filters must not let it grow back.
    unhurried = plan_for("ct", budget=100000.0)["settings"]["training"]
    assert "activation memory budget" in decision(plan_for("ct", budget=100000.0), "training.patch_size")["reason"]
    assert unhurried["filters"][0] == 16
    hurried = plan_for("ct", budget=budget)["settings"]["training"]
    assert hurried["filters"][0] == 8
    assert np.all(np.array(hurried["patch_size"]) <= np.array(unhurried["patch_size"]))


@pytest.mark.parametrize("name, budget", [("ct", 1.5), ("hippocampus", 1.1)])
def test_spacing_never_coarser_than_the_smallest_structure_and_warns_when_nothing_fits(name, budget):
    fp = fingerprint(**DATASETS[name])
    plan = planner.make_plan(fp, budget, CPU, fake_step_seconds())
    spacing = np.array(plan["settings"]["transform"]["target_spacing"])
    initial, _ = planner.plan_target_spacing(fp)
    boxes = np.array([s["bbox_mm_median"] for s in fp["label_stats"].values()])
    limit = np.maximum(np.array(initial), boxes.min(axis=0) / 8)
    assert np.all(spacing <= limit + 1e-6), (spacing, limit)
    assert np.any(spacing > np.array(initial))  # it did coarsen as far as allowed
    assert plan["settings"]["training"]["filters"][0] == 8
    assert any("smallest plan" in w for w in plan["warnings"])


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("budget", [1.5, 3.0, 30.0, 300.0])
@pytest.mark.parametrize("machine", [CPU, CPU_BF16, GPU], ids=["cpu", "bf16", "gpu"])
def test_step_seconds_is_called_at_most_six_times_and_never_twice_alike(name, budget, machine):
    calls = []
    plan = plan_for(name, budget=budget, machine=machine, calls=calls)
    assert 1 <= len(calls) <= 6
    assert len({json.dumps(c, sort_keys=True) for c in calls}) == len(calls)
    assert set(calls[0]) == set(planner.NETWORK_KEYS)
    assert plan["estimates"]["train_steps"] == plan["settings"]["training"]["train_steps"]


@pytest.mark.parametrize("mixed_factor, expect_mixed", [(0.6, True), (1.4, False)])
def test_bf16_machine_measures_both_precisions_and_keeps_the_faster(mixed_factor, expect_mixed):
    calls = []
    plan = planner.make_plan(fingerprint(**HIPPOCAMPUS), 30.0, CPU_BF16, fake_step_seconds(calls, mixed_factor))
    assert [c["mixed_precision"] for c in calls[:2]] == [False, True]
    calibration = plan["estimates"]["calibration"]
    assert set(calibration) == {"float32", "mixed_bfloat16"}
    assert calibration["mixed_bfloat16"] == pytest.approx(calibration["float32"] * mixed_factor, rel=1e-3)
    assert plan["settings"]["training"]["mixed_precision"] is expect_mixed


def test_cpu_without_bf16_measures_float32_only():
    calls = []
    plan = planner.make_plan(fingerprint(**HIPPOCAMPUS), 30.0, CPU, fake_step_seconds(calls))
    assert [c["mixed_precision"] for c in calls] == [False]
    assert set(plan["estimates"]["calibration"]) == {"float32"}


def test_gpu_grows_the_batch_within_five_percent_of_the_dataset():
    plan = plan_for("hippocampus", budget=600.0, machine=GPU)
    training = plan["settings"]["training"]
    assert training["filters"][0] == 32  # nnU-Net's GPU base
    # 5 % of 260 cases x 36x50x35 voxels / 40x56x40 patch ~ 9
    assert training["batch_size"] == round(0.05 * 260 * 36 * 50 * 35 / (40 * 56 * 40))
    assert set(plan["estimates"]["calibration"]) == {"float32", "mixed_float16"}


# ------------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    "overrides, check",
    [
        (
            {"training.patch_size": [32, 32, 32]},
            lambda plan, calls: all(c["patch_size"] == [32, 32, 32] for c in calls),
        ),
        (
            {"training.filters": [8, 16, 32]},
            lambda plan, calls: (
                plan["settings"]["training"]["pool_sizes"] == [[2, 2, 2]] * 2
                and len(plan["settings"]["training"]["kernel_sizes"]) == 3
                and all(c["filters"] == [8, 16, 32] for c in calls)
            ),
        ),
        (
            {"transform.target_spacing": [2.0, 2.0, 2.0]},  # 18x25x17.5 voxels: 2 poolings, multiples of 4
            lambda plan, calls: plan["settings"]["training"]["patch_size"] == [20, 28, 20],
        ),
        ({"training.mixed_precision": True}, lambda plan, calls: [c["mixed_precision"] for c in calls] == [True]),
        (
            {"training.model": "unet2d", "training.slice_axis": 0},
            lambda plan, calls: (
                plan["settings"]["training"]["pool_sizes"][0][0] == 1
                and plan["settings"]["training"]["kernel_sizes"][0][0] == 1
            ),
        ),
        ({"training.batch_size": 4}, lambda plan, calls: all(c["batch_size"] == 4 for c in calls)),
        ({"transform.target_shape": [40, 56, 40]}, lambda plan, calls: plan["estimates"]["windows_per_case"] == 1),
        (
            {"training.tta_mirror_axes": [0, 1, 2], "training.epochs": 3},
            lambda plan, calls: plan["settings"]["training"]["epochs"] == 3,
        ),
    ],
)
def test_overrides_win_are_recorded_and_used_downstream(overrides, check):
    calls = []
    plan = plan_for("hippocampus", budget=30.0, machine=CPU_BF16, overrides=overrides, calls=calls)
    for key, value in overrides.items():
        d = decision(plan, key)
        assert d == {"key": key, "value": value, "origin": "user", "reason": "set by the user"}
        stage, name = key.split(".")
        assert plan["settings"][stage][name] == value
    assert check(plan, calls)
    assert all(d["origin"] == "plan" for d in plan["decisions"] if d["key"] not in overrides)
    # the steps are those the budget allows for the network actually used
    training = plan["settings"]["training"]
    assert training["train_steps"] == pytest.approx(  # estimates are rounded
        training["time_limit_minutes"] * 60 / plan["estimates"]["step_seconds"], rel=2e-3
    )


def test_overridden_patch_is_never_shrunk():
    plan = plan_for("hippocampus", budget=2.0, overrides={"training.patch_size": [40, 56, 40]})
    assert plan["settings"]["training"]["patch_size"] == [40, 56, 40]
    assert plan["settings"]["transform"]["target_spacing"] != [1.0, 1.0, 1.0]  # shrinks elsewhere


@pytest.mark.parametrize(
    "key", ["training.residual", "trainer.filters", "filters", "transform.", "evaluation.min_mean_dice"]
)
def test_unknown_override_key_raises(key):
    with pytest.raises(ValueError, match="not a planned setting"):
        plan_for("hippocampus", overrides={key: 1})


@pytest.mark.parametrize("labels", [[0], []])
def test_only_background_labels_raise(labels):
    fp = fingerprint(**HIPPOCAMPUS)
    fp["labels"] = labels
    with pytest.raises(ValueError, match="no foreground"):
        planner.make_plan(fp, 30.0, CPU, fake_step_seconds())


def test_non_positive_step_time_raises():
    with pytest.raises(ValueError, match="positive"):
        planner.make_plan(fingerprint(**HIPPOCAMPUS), 30.0, CPU, lambda settings: 0.0)


# ------------------------------------------------------------------------------------------------
# Decisions and describe()


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_setting_has_exactly_one_decision_with_a_reason(name):
    plan = plan_for(name, budget=3.0)
    expected = [f"{stage}.{key}" for stage, keys in planner.SETTINGS_KEYS.items() for key in keys]
    assert [d["key"] for d in plan["decisions"]] == expected
    assert set(plan["settings"]) == {"transform", "training"}
    for d in plan["decisions"]:
        stage, key = d["key"].split(".")
        assert d["value"] == plan["settings"][stage][key]
        assert d["origin"] == "plan" and d["reason"].strip(), d
    text = planner.describe(plan)
    for key in expected:
        assert key in text
    assert "estimates" in text and "warnings" in text
    assert max(len(line) for line in text.splitlines()) < 160


# ------------------------------------------------------------------------------------------------
# The rules one by one


@pytest.mark.parametrize(
    "spacing, patch, max_levels, slice_axis, pools, kernels",
    [
        # hippocampus: isotropic, 3 poolings until 5 voxels remain
        ((1, 1, 1), (36, 50, 35), 5, None, [[2, 2, 2]] * 3, [[3, 3, 3]] * 4),
        # level cap: 2 levels = 1 pooling
        ((1, 1, 1), (64, 64, 64), 2, None, [[2, 2, 2]], [[3, 3, 3]] * 2),
        # 4 mm z vs 1 mm: z waits until x/y reach 2 mm (then within 2x), kernel 1 along z until then
        (
            (1, 1, 4),
            (128, 128, 32),
            5,
            None,
            [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        # 5 mm z: still more than 2x coarser after one pooling (2 mm), so two levels without z
        (
            (1, 1, 5),
            (128, 128, 32),
            5,
            None,
            [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
            [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        ),
        # 2D: never along the slice axis
        ((1, 1, 1), (6, 64, 64), 5, 0, [[1, 2, 2]] * 4, [[1, 3, 3]] * 5),
        # a single poolable axis needs >= 12 voxels (nnU-Net): 10 is not enough
        ((1, 1, 1), (4, 4, 10), 5, None, [], [[3, 3, 3]]),
    ],
)
def test_network_topology(spacing, patch, max_levels, slice_axis, pools, kernels):
    assert planner.network_topology(spacing, patch, max_levels, slice_axis) == (pools, kernels)


@pytest.mark.parametrize(
    "grid, patch, overlap, windows",
    [
        ((40, 56, 40), (40, 56, 40), 0.5, 1),
        ((48, 64, 48), (40, 56, 40), 0.5, 8),  # one extra half-step per axis
        ((160, 160, 32), (80, 80, 32), 0.5, 9),  # (160 - 80) / 40 + 1 = 3 per in-plane axis
        ((10, 64, 64), (3, 64, 64), 0.5, 8),  # 1-voxel steps: ceil(7 / 1) + 1
    ],
)
def test_sliding_windows(grid, patch, overlap, windows):
    assert planner.sliding_windows(grid, patch, overlap) == windows


@pytest.mark.parametrize(
    "budget, step, expected_epochs",
    [
        (30.0, 1.0, 8),
        (4.0, 0.5, 1),  # three epochs' validation would take 22 % of the time
        (4.0, 0.05, 3),  # cheap validation: three points on the training curves
        (600.0, 1.0, 20),
    ],
)
def test_split_budget_adds_up_and_follows_the_epoch_rule(budget, step, expected_epochs):
    split = planner.split_budget(budget, step, batch_size=2, windows=8, val_dice_cases=20)
    assert split["epochs"] == expected_epochs
    assert split["training_minutes"] + split["validation_minutes"] + split["export_minutes"] == pytest.approx(budget)
    assert split["train_steps"] == math.floor(split["training_minutes"] * 60 / step + 1e-6)
    assert split["validation_minutes"] == pytest.approx(expected_epochs * 20 * 8 * step / 6 / 60)


@pytest.mark.parametrize(
    "eval_pass_minutes, spacing, slice_axis, axes",
    [
        (0.1, (1, 1, 1), None, [0, 1, 2]),  # 8 x 0.1 = 0.8 min < 4.5 min
        (0.6, (0.8, 0.8, 2.5), None, [0, 1]),  # 8 x 0.6 > 4.5 min: the coarse z goes first
        (0.6, (1, 1, 1), 0, [1, 2]),  # 2D: the slice axis goes first
        (5.0, (1, 1, 1), None, []),
    ],
)
def test_mirror_axes_drop_the_coarsest_first(eval_pass_minutes, spacing, slice_axis, axes):
    kept, reason = planner.plan_mirror_axes(30.0, eval_pass_minutes, spacing, slice_axis)
    assert kept == axes
    assert reason


@pytest.mark.parametrize(
    "cpuinfo, meminfo, env, nvidia_smi, expected",
    [
        (
            "flags\t\t: fpu sse avx2\n",
            "MemTotal:       16777216 kB\n",
            {},
            None,
            dict(memory_gb=16.0, accelerator="cpu", bf16=False),
        ),
        (
            "flags\t\t: fpu avx512f amx_bf16 amx_tile\n",
            "MemTotal: 8388608 kB\n",
            {},
            "/usr/bin/nvidia-smi",
            dict(memory_gb=8.0, accelerator="cpu", bf16=True),
        ),  # no CUDA_VISIBLE_DEVICES: CPU
        (
            "flags : avx512_bf16\n",
            "",
            {"CUDA_VISIBLE_DEVICES": "0,1"},
            "/usr/bin/nvidia-smi",
            dict(accelerator="gpu", accelerator_memory_gb=24.0, bf16=True),
        ),
        ("flags : sse\n", "", {"CUDA_VISIBLE_DEVICES": "0"}, None, dict(accelerator="cpu")),  # no nvidia-smi
        ("flags : sse\n", "", {"CUDA_VISIBLE_DEVICES": "-1"}, "/usr/bin/nvidia-smi", dict(accelerator="cpu")),
        ("flags : sse\n", "", {"CUDA_VISIBLE_DEVICES": ""}, "/usr/bin/nvidia-smi", dict(accelerator="cpu")),
    ],
)
def test_detect_machine(cpuinfo, meminfo, env, nvidia_smi, expected):
    machine = planner.detect_machine(
        cpuinfo_text=cpuinfo,
        meminfo_text=meminfo,
        environ=env,
        which=lambda name: nvidia_smi,
        gpu_memory_gb=lambda: 24.0,
    )
    for field, value in expected.items():
        assert getattr(machine, field) == value, field
    assert machine.cpu_count >= 1


def test_planner_imports_without_tensorflow():
    code = "import sys, modules.plan.planner; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("budget", [0.5, 1.0])
def test_a_budget_without_training_time_is_refused_in_words(budget):
    with pytest.raises(ValueError, match=r"leaves no training time after export .* --budget-minutes above"):
        plan_for("hippocampus", budget=budget)


def test_a_tiny_budget_with_the_steps_set_is_planned():
    plan = plan_for("hippocampus", budget=1.0, overrides={"training.train_steps": 60})
    assert plan["settings"]["training"]["train_steps"] == 60
