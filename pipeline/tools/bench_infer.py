"""`medtfx bench infer`: the serving model's sliding-window inference against MONAI's
sliding_window_inference, same network, overlap and Gaussian weighting, test-time mirroring off
and on, on a CT-sized volume.

The volume: a 512x512x200 CT at 0.8x0.8x2.5 mm (pipeline/tools/bench_train.py's "ct_large" fingerprint),
planned by modules.plan.planner.make_plan for a 12-minute budget with a step time from the
convolution FLOPs at INFERENCE_PLAN_GFLOPS (a CPU's training budget: the planner coarsens the
spacing and shrinks the network until the budget fits), and taken on the plan's grid: the resampled
volume (the resampling itself is Transform's, the same for any network, and not timed here).

medtfx side: what the exported model's signatures run (modules/train/trainer.py
_ExportModule._predict): sliding_window.predict over sliding_window.mirrored(model), one
tf.function traced once, then argmax to a uint8 mask. MONAI side (pipeline/tools/monai_side.py):
DynUNet from the same plan, sliding_window_inference(mode="gaussian", sigma_scale=0.125, the same
overlap) with a predictor averaging softmax over the same flips, under torch.inference_mode. Each
variant: one untimed warm-up run on a small volume (tracing, oneDNN primitive creation), then
interleaved timed runs on the full volume (mirroring on: one run, it is 2^axes times the work),
the best kept. Peak memory: each process's VmHWM, reset before the timed run (Linux clear_refs).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pipeline.tools import bench_train

INFERENCE_PLAN_BUDGET_MINUTES = 12.0
# Convolution throughput assumed by the inference plan's step-time model (GFLOP/s, about what
# this 2-core machine sustains in float32 training): makes the plan independent of the load.
INFERENCE_PLAN_GFLOPS = 40.0
DEFAULT_MIRROR_AXES = (0,)


def inference_plan(budget_minutes: float = INFERENCE_PLAN_BUDGET_MINUTES) -> dict:
    """make_plan on the CT-sized fingerprint with an analytic step time (see module docstring)."""
    from modules.plan import planner

    return planner.make_plan(
        bench_train.fingerprint("ct_large"),
        budget_minutes,
        planner.detect_machine(),
        lambda network: bench_train.analytic_step_seconds(network, INFERENCE_PLAN_GFLOPS),
    )


def _peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmHWM: peak RSS, VmRSS: current) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class MedtfxInference:
    """The exported model's sliding-window prediction (trainer._ExportModule._predict) as one
    traced tf.function: (X, Y, Z) float32 -> (X, Y, Z) uint8 mask."""

    def __init__(self, training: dict, mirror_axes: Sequence[int], overlap: float, windows_per_batch: int = 1):
        import tensorflow as tf

        from modules.inference import sliding_window
        from modules.train import training as training_lib

        cfg = training_lib.config(training)
        tf.keras.utils.set_random_seed(0)
        self.model = training_lib.build_model(cfg)
        patch = [int(p) for p in cfg.patch_size or ()]
        classes = int(cfg.num_classes)
        network = sliding_window.mirrored(lambda x: self.model(x, training=False), mirror_axes)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
        def segment(volume):
            probs = sliding_window.predict(network, volume[None, ..., None], patch, classes, overlap, windows_per_batch)
            return tf.cast(tf.argmax(probs[0], axis=-1), tf.uint8)

        self.segment = segment

    def run(self, volume) -> Dict[str, Any]:
        import hashlib

        rss_before = _status_mb("VmRSS")
        _peak_rss_reset()
        start = time.perf_counter()
        mask = self.segment(volume).numpy()
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "peak_rss_mb": _status_mb("VmHWM"),
            "rss_before_mb": rss_before,
            "mask_sha": hashlib.sha1(mask.tobytes()).hexdigest()[:12],
        }


def benchmark(
    shape: Optional[Sequence[int]] = None,
    rounds: int = 2,
    mirror_axes: Sequence[int] = DEFAULT_MIRROR_AXES,
    use_monai: bool = True,
    training_overrides: Optional[Dict[str, Any]] = None,
    windows_per_batch: int = 1,
) -> Dict[str, Any]:
    """Timings of medtfx and MONAI with mirroring off and on (`mirror_axes`), interleaved.

    shape: the volume on the plan's grid (default: the plan's target_shape).
    Mirroring on is timed once per side after its warm-up (2^len(axes) times the work).
    """
    import tensorflow as tf

    plan = inference_plan()
    training = {**plan["settings"]["training"], **(training_overrides or {})}
    grid = [int(s) for s in (shape or plan["settings"]["transform"]["target_shape"])]
    net = bench_train.network_config(training)
    patch = [int(p) for p in training["patch_size"]]
    overlap = float(training["sliding_window_overlap"])
    volume = tf.constant(np.random.default_rng(1).standard_normal(grid, dtype=np.float32))
    from modules.plan import planner

    windows = planner.sliding_windows(grid, patch, overlap)
    flops_per_pass = windows * bench_train.conv_flops(net, patch)
    variants: Dict[str, Dict[str, Any]] = {}
    settings = {"off": (), "on": tuple(int(a) for a in mirror_axes)}
    monai = bench_train.MonaiSide() if use_monai else None
    result: Dict[str, Any] = {
        "plan_target_spacing_mm": plan["settings"]["transform"]["target_spacing"],
        "source_volume": "512x512x200 at 0.8x0.8x2.5 mm, on the plan's grid",
        "grid": grid,
        "patch": patch,
        "filters": net["filters"],
        "pool_sizes": net["pool_sizes"],
        "kernel_sizes": net["kernel_sizes"],
        "overlap": overlap,
        "windows": windows,
        "windows_per_batch": windows_per_batch,
        "mirror_axes_on": list(settings["on"]),
        "conv_tflop_per_pass": round(flops_per_pass / 1e12, 3),
    }
    try:
        peak = bench_train.machine_peak(monai, n=1024 if training_overrides else 4096)
        medtfx = {k: MedtfxInference(training, axes, overlap, windows_per_batch) for k, axes in settings.items()}
        result["medtfx_params"] = int(medtfx["off"].model.count_params())
        for key, axes in settings.items():
            if monai is not None:
                result["monai_params"] = monai.ask(
                    "infer_setup",
                    key=key,
                    net=net,
                    shape=grid,
                    patch=patch,
                    overlap=overlap,
                    mirror_axes=list(axes),
                    precision="float32",
                    sw_batch_size=windows_per_batch,
                )["params"]
        runs: Dict[str, List[Dict[str, Any]]] = {}
        # Warm-up on a volume of two windows per axis: the same traced function and oneDNN
        # primitives as the full volume, at a fraction of its time.
        small = tf.zeros([min(g, 2 * p) for g, p in zip(grid, patch)])
        for key in settings:
            medtfx[key].run(small)
            if monai is not None:
                monai.ask("infer", key=key, warmup_shape=[int(d) for d in small.shape])
        for key in settings:
            for r in range(1, (rounds if key == "off" else 1) + 1):
                got = medtfx[key].run(volume)
                runs.setdefault(f"medtfx_mirror_{key}", []).append(got)
                line = f"  mirroring {key} run {r}: medtfx {got['seconds']:.2f} s"
                if monai is not None:
                    got = monai.ask("infer", key=key)
                    runs.setdefault(f"monai_mirror_{key}", []).append(got)
                    line += f", MONAI {got['seconds']:.2f} s"
                print(line, flush=True)
    finally:
        if monai is not None:
            monai.close()
    for name, rs in runs.items():
        best = min(rs, key=lambda x: x["seconds"])
        passes = 2 ** len(settings["on"]) if name.endswith("_on") else 1
        gflops = passes * flops_per_pass / best["seconds"] / 1e9
        variants[name] = {
            "seconds": round(best["seconds"], 2),
            "all_seconds": [round(x["seconds"], 2) for x in rs],
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in rs), 1),
            "rss_before_mb": round(min(x["rss_before_mb"] for x in rs), 1),
            "conv_gflops": round(gflops, 1),
            "fraction_of_float32_peak": round(gflops / peak["float32"]["peak"], 4),
        }
    result.update(
        variants=variants,
        machine_peak_gflops=peak,
        cpu_count=os.cpu_count(),
        tensorflow_version=tf.__version__,
        monai=monai.hello if monai is not None else None,
    )
    for side in ("medtfx", "monai"):
        if f"{side}_mirror_off" in variants:
            result[f"{side}_infer_s"] = variants[f"{side}_mirror_off"]["seconds"]
            result[f"{side}_infer_mirrored_s"] = variants[f"{side}_mirror_on"]["seconds"]
            result[f"{side}_peak_rss_mb"] = max(
                variants[f"{side}_mirror_off"]["peak_rss_mb"], variants[f"{side}_mirror_on"]["peak_rss_mb"]
            )
    return result


def print_table(result: Dict[str, Any]) -> None:
    print(
        f"volume {'x'.join(map(str, result['grid']))} at {result['plan_target_spacing_mm']} mm (the plan's grid), "
        f"patch {'x'.join(map(str, result['patch']))}, filters {result['filters']}, overlap {result['overlap']}, "
        f"{result['windows']} windows ({result['conv_tflop_per_pass']} conv TFLOP per pass); parameters "
        f"medtfx {result['medtfx_params']:,} MONAI {result.get('monai_params', 'n/a')}"
    )
    print(
        f"  {'mirroring':<22s} {'medtfx s':>9s} {'MONAI s':>9s} {'speed':>7s} {'medtfx MB':>10s} {'MONAI MB':>9s}"
        f" {'medtfx % peak':>14s} {'MONAI % peak':>13s}"
    )
    for key, label in (("off", "off"), ("on", f"on, axes {result['mirror_axes_on']}")):
        ours = result["variants"].get(f"medtfx_mirror_{key}")
        theirs = result["variants"].get(f"monai_mirror_{key}") or {}
        if not ours:
            continue
        nan = float("nan")
        speed = f"{theirs['seconds'] / ours['seconds']:.2f}x" if theirs else "n/a"
        print(
            f"  {label:<22s} {ours['seconds']:>9.2f} {theirs.get('seconds', nan):>9.2f} {speed:>7s}"
            f" {ours['peak_rss_mb']:>10.0f} {theirs.get('peak_rss_mb', nan):>9.0f}"
            f" {100 * ours['fraction_of_float32_peak']:>13.1f}%"
            f" {100 * theirs.get('fraction_of_float32_peak', nan):>12.1f}%"
        )


def main(args) -> int:
    """CLI entry (`medtfx bench infer --json FILE [--rounds N] [--shape X Y Z] [--no-monai]`)."""
    use_monai = not args.no_monai
    if use_monai and not bench_train.monai_available():
        print(
            f"error: {bench_train.MONAI_PYTHON} is missing: `make bench-infer` creates it (or pass --no-monai)",
            file=sys.stderr,
        )
        return 2
    load_start = os.getloadavg()
    result = benchmark(
        args.shape, args.rounds, args.mirror_axes, use_monai, windows_per_batch=max(1, args.windows_per_batch)
    )
    result["loadavg_start_end"] = [list(load_start), list(os.getloadavg())]
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print_table(result)
    print(
        f"\nmedtfx {result['medtfx_infer_s']} s, MONAI {result.get('monai_infer_s')} s (mirroring off); "
        f"report: {args.json}"
    )
    return 0
