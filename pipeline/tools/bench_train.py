"""`medtfx bench train`: the Trainer's own training step against MONAI (PyTorch CPU) on the same
planned 3D U-Net, each in float32 and bfloat16, plus the machine's matmul peak.

The network comes from the medtfx planner (modules.plan.planner.make_plan, 30-minute budget) run
on a dataset fingerprint: the Decathlon hippocampus's (1 mm MR, median 36x50x36 voxels) and the
anisotropic CT of `make bench-ct` (0.78x0.78x4 mm, 192x192x38). The planner's step-time callback
is analytic here (convolution FLOPs at PLAN_GFLOPS), so the plan does not depend on the load.

medtfx side: modules.train.training.build_model + compile_model (network, Dice + CE, Adam) fed by
modules.train.input_pipeline.training_patches (cached cases, foreground oversampling,
augmentation) through Keras `fit`, as run_fn does; a step is the wall time between consecutive
batch ends (input pipeline waits included). MONAI side (pipeline/tools/monai_side.py in
.venv-monai): DynUNet configured from the same plan (parameter counts printed and compared),
DiceCELoss (foreground batch Dice + CE), Adam, on a fixed random batch (no input pipeline), with
torch.autocast for bfloat16. Runs are interleaved (medtfx f32, MONAI f32, medtfx bf16, MONAI bf16,
then again), the first steps of every variant are warm-up, and the best round is kept.

Achieved GFLOP/s: convolution FLOPs of one step (forward x 3: forward, input and weight
gradients) over the step time, as a share of the machine's attainable peak (the faster of a
large TF and torch matmul, float32 and bfloat16).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MONAI_PYTHON = os.path.join(REPO, ".venv-monai", "bin", "python")
MONAI_SCRIPT = os.path.join(REPO, "pipeline", "tools", "monai_side.py")
PRECISIONS = ("float32", "bfloat16")
# The planner's step-time callback here: convolution FLOPs of the step (conv_flops) at this many
# GFLOP/s, about what this 2-core machine sustains in float32 training. Measuring instead (as
# `medtfx plan` does) would make the benchmarked network depend on the machine's load.
PLAN_GFLOPS = 40.0
PLAN_BUDGET_MINUTES = 30.0

# Timed steps per round: a few seconds of work per variant and round, a run within ~10 minutes.
DEFAULT_STEPS = {"hippocampus": 4, "ct": 4}

# Dataset fingerprints (modules/plan/fingerprint.combine format, aggregates only): the real
# hippocampus figures (README's plan), the anisotropic CT of `make bench-ct` (150 mm field of view,
# 0.78 x 0.78 x 4 mm) and a whole CT scan, 512x512x200 at 0.8x0.8x2.5 mm (bench_infer.py).
DATASETS: Dict[str, Dict[str, Any]] = {
    "hippocampus": dict(
        modality="MR",
        spacing=(1.0, 1.0, 1.0),
        shape=(36, 50, 36),
        shape_max=(43, 59, 47),
        cases=260,
        boxes={"1": [22.0, 16.0, 14.0], "2": [19.0, 23.0, 20.0]},
        intensity=(28.0, 358.0, 2800.0),
    ),
    "ct": dict(
        modality="CT",
        spacing=(0.78, 0.78, 4.0),
        shape=(192, 192, 38),
        shape_max=(201, 201, 41),
        cases=40,
        boxes={"1": [88.0, 67.0, 60.0], "2": [19.0, 19.0, 20.0]},
        intensity=(-1000.0, 40.0, 400.0),
    ),
    "ct_large": dict(
        modality="CT",
        spacing=(0.8, 0.8, 2.5),
        shape=(512, 512, 200),
        shape_max=(512, 512, 200),
        cases=40,
        boxes={"1": [180.0, 150.0, 160.0], "2": [20.0, 20.0, 20.0]},
        intensity=(-1000.0, 40.0, 400.0),
    ),
}


def fingerprint(name: str) -> dict:
    """The fingerprint of DATASETS[name] (every case at the median spacing; sizes around the median)."""
    d = DATASETS[name]
    spacing = [float(s) for s in d["spacing"]]
    shape, shape_max = np.asarray(d["shape"], float), np.asarray(d["shape_max"], float)
    extent = (shape * spacing).tolist()
    lo, mid, hi = d["intensity"]
    return {
        "version": 1,
        "num_cases": d["cases"],
        "channels": [
            {
                "index": 0,
                "modality": d["modality"],
                "modality_counts": {d["modality"]: d["cases"]},
                "integer_valued": d["modality"] == "CT",
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
        "spacing": {k: spacing for k in ("median", "p10", "p90", "min", "max")},
        "shape": {
            "median": shape.tolist(),
            "p90": shape_max.tolist(),
            "min": shape.tolist(),
            "max": shape_max.tolist(),
        },
        "extent_mm": {"median": extent, "max": (shape_max * spacing).tolist()},
        "labels": [0] + [int(k) for k in d["boxes"]],
        "label_stats": {
            k: {
                "cases": d["cases"],
                "voxels_median": 1000.0,
                "volume_mm3_median": float(np.prod(box)) / 2,
                "volume_mm3_min": float(np.prod(box)) / 4,
                "bbox_mm_median": box,
            }
            for k, box in d["boxes"].items()
        },
        "foreground_bbox_mm_max": list(d["boxes"]["1"]),
        "cases": [],
    }


def analytic_step_seconds(network: dict, gflops: float = PLAN_GFLOPS) -> float:
    """A planner step-time callback: 3 x forward convolution FLOPs of the batch at `gflops`."""
    net = network_config({**network, "num_classes": network.get("num_classes", 3)})
    return 3 * int(network.get("batch_size", 2)) * conv_flops(net, network["patch_size"]) / (gflops * 1e9)


def plan_for(name: str, budget_minutes: float = PLAN_BUDGET_MINUTES) -> dict:
    """make_plan on fingerprint(name) for this machine with analytic_step_seconds: the planner's
    rules (spacing, topology, shrinking to the budget) with a load-independent step time."""
    from modules.plan import planner

    machine = planner.detect_machine()
    return planner.make_plan(fingerprint(name), budget_minutes, machine, analytic_step_seconds)


def network_config(training: dict) -> dict:
    """The plan's U-Net topology as monai_side.py's NET: in_channels, num_classes, filters,
    kernel_sizes / pool_sizes as one [x, y, z] list per level (ints expanded)."""
    filters = [int(f) for f in training["filters"]]
    levels = len(filters)

    def per_axis(values, count, default):
        if values is None:
            return [[default] * 3 for _ in range(count)]
        return [[int(v)] * 3 if isinstance(v, (int, np.integer)) else [int(a) for a in v] for v in values]

    return {
        "in_channels": 1,
        "num_classes": int(training["num_classes"]),
        "filters": filters,
        "kernel_sizes": per_axis(training.get("kernel_sizes"), levels, 3),
        "pool_sizes": per_axis(training.get("pool_sizes"), levels - 1, 2),
    }


def conv_flops(net: dict, patch: Sequence[int]) -> float:
    """Forward multiply-add FLOPs (2 per MAC) of the U-Net's convolutions for one sample of `patch`:
    two k^3 convolutions per encoder / bottleneck / decoder level, the transposed convolutions
    and the 1x1x1 logits."""
    filters, kernels, pools = net["filters"], net["kernel_sizes"], net["pool_sizes"]
    size = np.asarray(patch, float)
    sizes = [size.copy()]
    for p in pools:
        size = size / np.asarray(p)
        sizes.append(size.copy())
    flops, cin = 0.0, net["in_channels"]
    for level, f in enumerate(filters):  # encoder + bottleneck
        voxels, k = float(np.prod(sizes[level])), float(np.prod(kernels[level]))
        flops += 2 * voxels * k * (cin * f + f * f)
        cin = f
    for level in reversed(range(len(filters) - 1)):  # decoder
        voxels, k = float(np.prod(sizes[level])), float(np.prod(kernels[level]))
        f = filters[level]
        flops += 2 * voxels * filters[level + 1] * f  # transposed conv: each input voxel to prod(p) outputs
        flops += 2 * voxels * k * (2 * f * f + f * f)
    flops += 2 * float(np.prod(sizes[0])) * filters[0] * net["num_classes"]
    return flops


class MonaiSide:
    """pipeline/tools/monai_side.py in a subprocess of .venv-monai's python, one JSON line per
    request and reply (see that file's docstring).

    Raises:
      FileNotFoundError: .venv-monai is missing (make bench-train creates it).
      RuntimeError: the MONAI side replied with an error or exited.
    """

    def __init__(self, python: str = MONAI_PYTHON):
        if not os.path.exists(python):
            raise FileNotFoundError(f"{python}: no MONAI venv (make bench-train or bench-infer creates it)")
        # torch's OpenMP threads spin at barriers by default: on a shared machine (other processes
        # on the 2 cores) a preempted thread makes the other spin, measured 5x slower steps. Passive
        # waiting is MONAI's best setting here (the default of an idle machine costs ~5 % at most).
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.proc = subprocess.Popen(
            [python, MONAI_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the MONAI side exited (code {self.proc.poll()}); its stderr is above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"MONAI side: {reply['error']}")
        return reply

    def ask(self, op: str, **fields) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask_quit()
            finally:
                self.proc.wait(timeout=30)

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()


def monai_available(python: str = MONAI_PYTHON) -> bool:
    return os.path.exists(python)


def tf_matmul_gflops(n: int, dtype: str, repeats: int = 3) -> float:
    """Best GFLOP/s of an n x n TF matmul in `dtype` (float32 | bfloat16)."""
    import tensorflow as tf

    tf_dtype = tf.bfloat16 if dtype == "bfloat16" else tf.float32
    a = tf.cast(tf.random.normal([n, n]), tf_dtype)
    b = tf.cast(tf.random.normal([n, n]), tf_dtype)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y)[:1, :1], tf.float32)))
    mm(a, b).numpy()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def machine_peak(monai: Optional[MonaiSide], n: int = 4096) -> Dict[str, Any]:
    """Attainable matmul GFLOP/s per dtype: TF's and torch's, the faster kept as the peak."""
    out: Dict[str, Any] = {}
    for dtype in PRECISIONS:
        row = {"tensorflow": round(tf_matmul_gflops(n, dtype), 1)}
        if monai is not None:
            row["torch"] = round(monai.ask("matmul", n=n, dtype=dtype)["gflops"], 1)
        row["peak"] = max(row.values())
        out[dtype] = row
    out["matmul_n"] = n
    return out


def medtfx_param_count(training: dict) -> int:
    from modules.train import training as training_lib

    cfg = training_lib.config(training)
    return int(training_lib.build_model(cfg).count_params())


class MedtfxTrainer:
    """The Trainer's model, loss, optimizer and input pipeline for one precision, stepped by
    Keras fit on synthetic cases (an ellipsoid 'structure' per label in a noisy volume on the
    plan's grid), so foreground oversampling and augmentation do their real work."""

    def __init__(self, training: dict, grid: Sequence[int], precision: str, cases: int = 4):
        import tensorflow as tf
        import tf_keras as keras

        from modules.train import input_pipeline
        from modules.train import training as training_lib

        self.keras = keras
        cfg = training_lib.config({**training, "mixed_precision": precision == "bfloat16"})
        self.cfg = cfg
        self.model = training_lib.build_model(cfg)
        training_lib.compile_model(self.model, cfg)
        grid = [int(g) for g in grid]
        rng = np.random.default_rng(0)
        images = rng.standard_normal((cases, *grid), dtype=np.float32)
        labels = np.zeros((cases, *grid), np.uint8)
        centre = np.asarray(grid) // 2
        for k in range(1, int(cfg.num_classes)):
            lo = np.maximum(centre - np.asarray(grid) // (4 + 2 * k), 0)
            hi = centre + (k - 1)
            labels[:, lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = k
        case_ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
        assert cfg.patch_size is not None
        self.batches = input_pipeline.training_patches(
            case_ds,
            cfg.patch_size,
            int(cfg.batch_size),
            int(cfg.num_classes),
            float(cfg.foreground_oversample),
            cfg.augmentation if cfg.augment else None,
            int(cfg.seed),
        )
        self.poly = training_lib.PolyLearningRate(cfg.learning_rate, 10_000)

    def steps(self, n: int) -> List[float]:
        """Runs n + 1 steps in one fit call; returns the n wall times between batch ends."""
        ends: List[float] = []
        timer = self.keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_: ends.append(time.perf_counter()))
        self.model.fit(self.batches, epochs=1, steps_per_epoch=n + 1, verbose=0, callbacks=[self.poly, timer])
        return list(np.diff(ends))


def _best(rounds: List[List[float]]) -> float:
    """The best round's median step: other work on the shared machine only adds time."""
    return min(statistics.median(r) for r in rounds if r)


def bench_plan(
    name: str,
    training: dict,
    grid: Sequence[int],
    monai: Optional[MonaiSide],
    rounds: int,
    steps: int,
    warmup: int,
    precisions: Sequence[str] = PRECISIONS,
) -> Dict[str, Any]:
    """Interleaved rounds of every (side, precision); seconds per step of each."""
    import tensorflow as tf

    net = network_config(training)
    patch = [int(p) for p in training["patch_size"]]
    batch = int(training["batch_size"])
    row: Dict[str, Any] = {
        "plan": name,
        "patch": patch,
        "batch": batch,
        "filters": net["filters"],
        "kernel_sizes": net["kernel_sizes"],
        "pool_sizes": net["pool_sizes"],
        "step_conv_gflop": round(3 * batch * conv_flops(net, patch) / 1e9, 2),
    }
    tf.keras.backend.clear_session()
    trainers = {p: MedtfxTrainer(training, grid, p) for p in precisions}
    row["medtfx_params"] = int(trainers[precisions[0]].model.count_params())
    if monai is not None:
        for p in precisions:
            row["monai_params"] = monai.ask(
                "train_setup", net=net, patch=patch, batch=batch, precision=p, lr=float(training["learning_rate"])
            )["params"]
    times: Dict[str, List[List[float]]] = {}
    for r in range(rounds + 1):  # round 0: warm-up (tracing, oneDNN primitive creation)
        for p in precisions:
            n = warmup if r == 0 else steps
            got = trainers[p].steps(n)
            if r:
                times.setdefault(f"medtfx_{p}", []).append(got)
            line = f"  {name} round {r or 'warm-up'} {p}: medtfx {statistics.median(got):.3f} s/step"
            if monai is not None:
                got = monai.ask("train", precision=p, steps=n)["seconds"]
                if r:
                    times.setdefault(f"monai_{p}", []).append(got)
                line += f", MONAI {statistics.median(got):.3f} s/step"
            print(line, flush=True)
    variants = {}
    for key, rs in times.items():
        seconds = _best(rs)
        variants[key] = {
            "step_s": round(seconds, 4),
            "steps_per_s": round(1.0 / seconds, 3),
            "conv_gflops": round(row["step_conv_gflop"] / seconds, 1),
            "rounds_median_s": [round(statistics.median(x), 4) for x in rs],
        }
    row["variants"] = variants
    del trainers
    tf.keras.backend.clear_session()
    return row


def benchmark(
    plans: Sequence[str] = ("hippocampus", "ct"),
    rounds: int = 3,
    steps: int = 0,
    warmup: int = 1,
    use_monai: bool = True,
    overrides: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """Every plan's row (see bench_plan), the machine peak and each side's best steps/s.

    steps: timed steps per round (0: DEFAULT_STEPS of the plan).
    overrides: {plan name: {training key: value}} over the plan (the test's tiny sizes; "grid":
      the synthetic cases' shape).
    """
    import tensorflow as tf

    monai = MonaiSide() if use_monai else None
    try:
        peak = machine_peak(monai, n=1024 if overrides else 4096)
        rows = []
        for name in plans:
            plan = plan_for(name)
            training = {**plan["settings"]["training"], **(overrides or {}).get(name, {})}
            grid = training.pop("grid", None) or plan["settings"]["transform"]["target_shape"]
            plan_steps = steps or DEFAULT_STEPS.get(name, 3)
            rows.append(bench_plan(name, training, grid, monai, rounds, plan_steps, warmup))
    finally:
        if monai is not None:
            monai.close()
    for row in rows:
        for key, v in row["variants"].items():
            precision = key.split("_", 1)[1]
            v["fraction_of_peak"] = round(v["conv_gflops"] / peak[precision]["peak"], 4)
    result: Dict[str, Any] = {
        "plans": rows,
        "machine_peak_gflops": peak,
        "loadavg_start_end": None,
        "cpu_count": os.cpu_count(),
        "tensorflow_version": tf.__version__,
        "monai": monai.hello if monai is not None else None,
    }
    for side in ("medtfx", "monai"):
        best = [v["steps_per_s"] for row in rows for k, v in row["variants"].items() if k.startswith(side)]
        if best:
            # Per plan, the side's best precision; the headline is the first plan's.
            result[f"{side}_train_steps_per_s"] = max(
                v["steps_per_s"] for k, v in rows[0]["variants"].items() if k.startswith(side)
            )
            result[f"{side}_train_steps_per_s_by_plan"] = {
                row["plan"]: max(v["steps_per_s"] for k, v in row["variants"].items() if k.startswith(side))
                for row in rows
            }
    return result


def print_table(result: Dict[str, Any]) -> None:
    peak = result["machine_peak_gflops"]
    print(
        "machine peak (matmul %d): float32 %.0f GFLOP/s, bfloat16 %.0f GFLOP/s"
        % (peak["matmul_n"], peak["float32"]["peak"], peak["bfloat16"]["peak"])
    )
    nan = float("nan")
    for row in result["plans"]:
        monai_params = row.get("monai_params")
        print(
            f"\n{row['plan']}: patch {'x'.join(map(str, row['patch']))} batch {row['batch']} "
            f"filters {row['filters']} ({row['step_conv_gflop']} conv GFLOP/step); parameters "
            f"medtfx {row['medtfx_params']:,} MONAI {format(monai_params, ',') if monai_params else 'n/a'}"
        )
        print(
            f"  {'precision':<10s} {'medtfx s/step':>14s} {'MONAI s/step':>13s} {'medtfx speed':>13s}"
            f" {'medtfx % peak':>14s} {'MONAI % peak':>13s}"
        )
        for p in PRECISIONS:
            ours, theirs = row["variants"].get(f"medtfx_{p}"), row["variants"].get(f"monai_{p}") or {}
            if ours is None:
                continue
            speed = f"{theirs['step_s'] / ours['step_s']:.2f}x" if theirs else "n/a"
            print(
                f"  {p:<10s} {ours['step_s']:>14.3f} {theirs.get('step_s', nan):>13.3f} {speed:>13s}"
                f" {100 * ours['fraction_of_peak']:>13.1f}% {100 * theirs.get('fraction_of_peak', nan):>12.1f}%"
            )


def main(args) -> int:
    """CLI entry (`medtfx bench train --json FILE [--plans ...] [--rounds N] [--steps N] [--no-monai]`)."""
    use_monai = not args.no_monai
    if use_monai and not monai_available():
        print(f"error: {MONAI_PYTHON} is missing: `make bench-train` creates it (or pass --no-monai)", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    result = benchmark(args.plans, args.rounds, args.steps, args.warmup, use_monai)
    result["loadavg_start_end"] = [list(load_start), list(os.getloadavg())]
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print_table(result)
    print(
        f"\nbest steps/s ({result['plans'][0]['plan']}): medtfx {result.get('medtfx_train_steps_per_s')}"
        f", MONAI {result.get('monai_train_steps_per_s')}; report: {args.json}"
    )
    return 0
