"""`medtfx bench train` / `bench infer` (pipeline/tools/bench_train.py, bench_infer.py): the medtfx
halves at tiny sizes (seconds), the FLOP count, and the MONAI network built from each plan having
the medtfx network's parameter count (skipped when .venv-monai is absent: `make bench-train`
creates it)."""

import pytest

from pipeline.tools import bench_infer, bench_train

TINY = {
    "patch_size": [16, 16, 8],
    "filters": [4, 8],
    "pool_sizes": [[2, 2, 1]],
    "kernel_sizes": [[3, 3, 1], [3, 3, 3]],
}
needs_monai = pytest.mark.skipif(
    not bench_train.monai_available(),
    reason=f"{bench_train.MONAI_PYTHON} absent: `make bench-train` creates the MONAI venv",
)


@pytest.mark.parametrize(
    "net, patch, expected",
    [
        # 2 levels, 1 -> 2 -> 4 channels, kernel 3^3 everywhere, patch 4^3 (64 voxels), pool 2 (8 voxels):
        # enc0 64*27*(1*2 + 2*2), bottleneck 8*27*(2*4 + 4*4), up 64*4*2, dec0 64*27*(4*2 + 2*2), logits 64*2*3
        (
            {
                "in_channels": 1,
                "num_classes": 3,
                "filters": [2, 4],
                "kernel_sizes": [[3] * 3] * 2,
                "pool_sizes": [[2] * 3],
            },
            [4, 4, 4],
            2 * (64 * 27 * 6 + 8 * 27 * 24 + 64 * 8 + 64 * 27 * 12 + 64 * 6),
        ),
        # kernel 1 along z at level 0, no pooling along z
        (
            {
                "in_channels": 1,
                "num_classes": 2,
                "filters": [2, 4],
                "kernel_sizes": [[3, 3, 1], [3] * 3],
                "pool_sizes": [[2, 2, 1]],
            },
            [4, 4, 2],
            2 * (32 * 9 * 6 + 8 * 27 * 24 + 32 * 8 + 32 * 9 * 12 + 32 * 4),
        ),
    ],
)
def test_conv_flops(net, patch, expected):
    assert bench_train.conv_flops(net, patch) == expected


@pytest.mark.parametrize(
    "training, expected",
    [
        (
            {"filters": [8, 16, 32], "num_classes": 2},
            {"filters": [8, 16, 32], "kernel_sizes": [[3, 3, 3]] * 3, "pool_sizes": [[2, 2, 2]] * 2},
        ),
        (
            {"filters": [8, 16], "num_classes": 4, "kernel_sizes": [3, [3, 3, 1]], "pool_sizes": [[2, 2, 1]]},
            {"filters": [8, 16], "kernel_sizes": [[3, 3, 3], [3, 3, 1]], "pool_sizes": [[2, 2, 1]]},
        ),
    ],
)
def test_network_config_expands_per_axis(training, expected):
    net = bench_train.network_config(training)
    assert {k: net[k] for k in expected} == expected
    assert net["num_classes"] == training["num_classes"] and net["in_channels"] == 1


def test_train_bench_medtfx_half_keys():
    result = bench_train.benchmark(
        plans=("hippocampus",),
        rounds=1,
        steps=1,
        warmup=1,
        use_monai=False,
        overrides={"hippocampus": {**TINY, "grid": [24, 24, 16]}},
    )
    assert set(result) >= {"plans", "machine_peak_gflops", "medtfx_train_steps_per_s", "cpu_count"}
    row = result["plans"][0]
    assert set(row["variants"]) == {"medtfx_float32", "medtfx_bfloat16"}
    for variant in row["variants"].values():
        assert variant["step_s"] > 0 and 0 < variant["fraction_of_peak"]
    assert result["medtfx_train_steps_per_s"] == max(v["steps_per_s"] for v in row["variants"].values())
    assert result["machine_peak_gflops"]["float32"]["peak"] > 0


def test_infer_bench_medtfx_half_keys():
    result = bench_infer.benchmark(
        shape=(24, 24, 12), rounds=1, mirror_axes=(0,), use_monai=False, training_overrides=TINY
    )
    assert {"medtfx_infer_s", "medtfx_infer_mirrored_s", "medtfx_peak_rss_mb", "windows", "variants"} <= set(result)
    assert set(result["variants"]) == {"medtfx_mirror_off", "medtfx_mirror_on"}
    assert result["medtfx_peak_rss_mb"] > 0 and result["windows"] > 1


@needs_monai
@pytest.mark.parametrize("plan", ["hippocampus", "ct", "ct_large"])
def test_monai_network_from_plan_has_medtfx_parameter_count(plan):
    training = (bench_infer.inference_plan() if plan == "ct_large" else bench_train.plan_for(plan))["settings"][
        "training"
    ]
    monai = bench_train.MonaiSide()
    try:
        monai_params = monai.ask("network", net=bench_train.network_config(training))["params"]
    finally:
        monai.close()
    assert monai_params == bench_train.medtfx_param_count(training)
