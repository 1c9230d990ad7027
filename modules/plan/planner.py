"""The self-configuring planner: dataset fingerprint + compute budget + machine -> plan.

As nnU-Net's experiment planning (nnunetv2/experiment_planning/experiment_planners/
default_experiment_planner.py and network_topology.py), every training and preprocessing
setting is derived by a written-down rule from the dataset fingerprint (modules/plan/
fingerprint.combine), here also from a wall-time budget and the machine, and each comes with a
one-sentence reason. Unlike nnU-Net, which targets a fixed GPU memory and trains for a fixed
number of epochs, the plan must fit a time budget on whatever machine runs it (often a CPU), so
it measures seconds per training step (a callable the caller supplies) and shrinks the network,
the patch and finally the resolution until enough steps fit.

Conventions: axes are the canonical (X, Y, Z) = (R, A, S) array axes; spacing is mm per axis;
shapes and patch sizes are voxels per axis; times are minutes unless a name says seconds.

Numpy and the standard library only, so the command line can plan before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import textwrap
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PLAN_VERSION = 1

# The settings the plan fills, per stage, in the order decisions are made and reported.
SETTINGS_KEYS: Dict[str, Tuple[str, ...]] = {
    "transform": ("channels", "target_spacing", "target_shape", "spatial_mode", "intensity_mode"),
    "training": (
        "in_channels",
        "model",
        "slice_axis",
        "num_classes",
        "patch_size",
        "filters",
        "pool_sizes",
        "kernel_sizes",
        "batch_size",
        "learning_rate",
        "loss",
        "train_steps",
        "epochs",
        "mixed_precision",
        "time_limit_minutes",
        "tta_mirror_axes",
        "sliding_window_overlap",
        "foreground_oversample",
        "val_dice_cases",
    ),
}
# The keys step_seconds receives: everything that changes the cost of one training step.
NETWORK_KEYS = (
    "in_channels",
    "model",
    "slice_axis",
    "num_classes",
    "patch_size",
    "filters",
    "pool_sizes",
    "kernel_sizes",
    "batch_size",
    "mixed_precision",
)

ANISOTROPY_RATIO = 3.0  # nnU-Net's ANISO_THRESHOLD: coarsest / finest median spacing
SLICEWISE_ANISOTROPY_RATIO = 10.0  # beyond this a 3D kernel sees almost nothing across slices
THIN_VOXELS = 16  # fewer resampled voxels than this along an axis: too thin for 3D pooling
MIN_FEATURE_MAP = 4  # nnU-Net's UNet_featuremap_min_edge_length
MAX_LEVELS = {"cpu": 5, "gpu": 6}
FILTERS = {"cpu": (16, 128), "gpu": (32, 320)}  # (base, cap): nnU-Net uses 32 .. 320 on GPUs
SMALLEST_FILTER_BASE = 8
MIN_BATCH = 2  # nnU-Net's UNet_min_batch_size
MAX_DATASET_COVERED = 0.05  # nnU-Net: one batch sees at most 5 % of the dataset's voxels
SLICES_PER_2D_BATCH = 12  # nnU-Net's reference 2D batch size (UNet_reference_val_corresp_bs_2d)
# Activation tensors kept for the backward pass per filter and voxel of a level: encoder 2 x
# (conv, norm, activation), decoder transposed conv + 2-filter concat + 2 x (conv, norm,
# activation), plus one transient gradient.
ACTIVATIONS_PER_FILTER = 16
BYTES_PER_VALUE = 4  # float32 activations (mixed precision halves this: kept as headroom)
GPU_MEMORY_SHARE = 0.6
CPU_MEMORY_SHARE = 0.3
CPU_MEMORY_CAP_GB = 8.0
DEFAULT_GPU_MEMORY_GB = 8.0  # nnU-Net's default gpu_memory_target_in_gb
GRID_VOXEL_CAP = 256**3
SMALLEST_PATCH = 32  # budget shrinking keeps at least this many voxels per axis (data allowing)
LOWRES_SPACING_FACTOR = 1.5
MAX_SPACING_ROUNDS = 12
MIN_STRUCTURE_VOXELS = 8  # the smallest structure must span this many voxels along every axis
EXPORT_MINUTES = 1.0
MAX_EPOCHS = 20
MINUTES_PER_EPOCH = 3.0
# Short budgets still get this many epochs when their validation is cheap (at most
# MIN_EPOCHS_VALIDATION_SHARE of the time): a training curve of one point shows no trend.
MIN_EPOCHS = 3
MIN_EPOCHS_VALIDATION_SHARE = 0.1
MAX_VAL_DICE_CASES = 20
EVAL_SHARE = 0.2  # ImageExampleGen's 4:1 train:eval hash split
INFERENCE_SPEEDUP = 3.0  # a forward pass costs about a third of a training step
MAX_EVALUATION_SHARE = 0.15  # test-time mirroring may cost at most this share of the budget
MAX_STEP_MEASUREMENTS = 5
OVERLAP = 0.5  # nnU-Net's sliding-window step of half a patch
LEARNING_RATE = 3e-3
LOSS = "dice_ce"
FOREGROUND_OVERSAMPLE = 0.33
_EPS = 1e-6
_MAX_SHRINK_ITERATIONS = 500  # guards the memory loop: topology changes could in theory cycle


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the planner needs to know about the machine that trains.

    cpu_count: logical CPUs; memory_gb: RAM (GiB); accelerator: "cpu" | "gpu";
    accelerator_memory_gb: memory of one accelerator (GiB, 0 = unknown); bf16: the CPU has
    native bfloat16 instructions (AMX or AVX512-BF16), so mixed precision may pay off on it.
    """

    cpu_count: int
    memory_gb: float
    accelerator: str = "cpu"
    accelerator_memory_gb: float = 0.0
    bf16: bool = False


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _nvidia_smi_memory_gb() -> float:
    """Memory of the first GPU per nvidia-smi (GiB), 0.0 when the query fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return float(out.split()[0]) / 1024.0  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0.0


def detect_machine(
    cpuinfo_text: Optional[str] = None,
    meminfo_text: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
    which: Callable[[str], Optional[str]] = shutil.which,
    gpu_memory_gb: Callable[[], float] = _nvidia_smi_memory_gb,
) -> Machine:
    """The Machine this process runs on.

    bf16 when a /proc/cpuinfo flags line lists amx_bf16 or avx512_bf16; memory from /proc/meminfo
    MemTotal; accelerator "gpu" only when CUDA_VISIBLE_DEVICES names at least one device (not
    empty, not "-1"/"none") and nvidia-smi is on the PATH.

    Args:
      cpuinfo_text, meminfo_text: file contents to parse instead of /proc/cpuinfo, /proc/meminfo.
      environ: instead of os.environ; which: instead of shutil.which; gpu_memory_gb: instead of
        asking nvidia-smi (returns GiB, 0.0 = unknown).
    """
    cpuinfo = _read_text("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
    meminfo = _read_text("/proc/meminfo") if meminfo_text is None else meminfo_text
    env = os.environ if environ is None else environ
    flags = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    memory_gb = 0.0
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            memory_gb = float(line.split()[1]) / 1024.0**2  # kB -> GiB
    devices = [
        d
        for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if d.strip() and not d.strip().startswith("-") and d.strip().lower() not in ("none", "nodevfiles")
    ]
    gpu = bool(devices) and which("nvidia-smi") is not None
    return Machine(
        cpu_count=int(os.cpu_count() or 1),
        memory_gb=round(memory_gb, 2),
        accelerator="gpu" if gpu else "cpu",
        accelerator_memory_gb=round(gpu_memory_gb(), 2) if gpu else 0.0,
        bf16=bool(flags & {"amx_bf16", "avx512_bf16"}),
    )


# ------------------------------------------------------------------------------------------------
# Rules on the fingerprint alone


def num_classes_for(labels: Sequence[int]) -> int:
    """Rule 8: classes = largest label value + 1 (background included).

    Raises:
      ValueError when the label maps hold only background (or nothing): nothing to segment.
    """
    values = [int(v) for v in labels]
    if not values or max(values) <= 0:
        raise ValueError(f"labels {list(labels)}: the label maps hold no foreground, nothing to segment")
    return max(values) + 1


def plan_target_spacing(fingerprint: dict) -> Tuple[List[float], str]:
    """Rule 1 (nnU-Net determine_fullres_target_spacing): the per-axis median spacing; when the
    data is anisotropic (coarsest / finest median spacing > 3, nnU-Net's ANISO_THRESHOLD) the
    coarse axis takes its 10th-percentile spacing instead (fewer interpolated slices), but never
    finer than the other axes (nnU-Net's clamp).

    Returns ([x, y, z] mm, reason).
    """
    median = np.asarray(fingerprint["spacing"]["median"], dtype=np.float64)
    target = median.copy()
    ratio = float(median.max() / median.min())
    if ratio <= ANISOTROPY_RATIO:
        return _round_list(
            target
        ), f"median spacing of the training cases (nnU-Net); spacing ratio {ratio:.1f} <= {ANISOTROPY_RATIO:g}"
    coarse = int(np.argmax(median))
    p10 = float(fingerprint["spacing"]["p10"][coarse])
    others = max(float(median[a]) for a in range(3) if a != coarse)
    target[coarse] = max(p10, others)
    return _round_list(target), (
        f"median spacing, except the coarse axis {coarse} which takes its 10th percentile {p10:g} mm "
        f"because the data is anisotropic (ratio {ratio:.1f} > {ANISOTROPY_RATIO:g}), as nnU-Net"
    )


def resampled_shape(shape: Sequence[float], spacing: Sequence[float], target_spacing: Sequence[float]) -> np.ndarray:
    """Rule 2: a (3,) voxel shape at `spacing` mm resampled to `target_spacing` mm (float voxels)."""
    return np.asarray(shape, np.float64) * np.asarray(spacing, np.float64) / np.asarray(target_spacing, np.float64)


def _median_resampled(fingerprint: dict, target_spacing: Sequence[float]) -> np.ndarray:
    return resampled_shape(fingerprint["shape"]["median"], fingerprint["spacing"]["median"], target_spacing)


def choose_model(fingerprint: dict, target_spacing: Sequence[float]) -> Tuple[str, int, str]:
    """Rule 6: "unet2d" (slice-wise 2D U-Net) when the data is thin (resampled median shape
    < 16 voxels along an axis: too few for 3D pooling) or very anisotropic (median spacing ratio
    > 10: a 3D kernel sees little across slices, nnU-Net's 2D configuration wins there);
    otherwise "unet3d" (rule 3 makes its kernels and pooling anisotropic where needed).

    Returns (model, slice_axis, reason). slice_axis is the thinnest resampled axis for thin data,
    else the coarsest axis (ties: the last, usually S); 2D slices are perpendicular to it.
    """
    median_shape = _median_resampled(fingerprint, target_spacing)
    spacing = np.asarray(fingerprint["spacing"]["median"], np.float64)
    ratio = float(spacing.max() / spacing.min())
    thin = int(np.argmin(median_shape))
    coarse = 2 - int(np.argmax(np.asarray(target_spacing)[::-1]))
    if median_shape[thin] < THIN_VOXELS:
        return (
            "unet2d",
            thin,
            (
                f"thin data: {median_shape[thin]:.0f} resampled voxels along axis {thin} "
                f"(< {THIN_VOXELS}) leave no room for 3D pooling, so 2D slices perpendicular to it"
            ),
        )
    if ratio > SLICEWISE_ANISOTROPY_RATIO:
        return (
            "unet2d",
            coarse,
            (
                f"very anisotropic spacing (ratio {ratio:.1f} > {SLICEWISE_ANISOTROPY_RATIO:g}): "
                f"2D slices perpendicular to the coarse axis {coarse}, as nnU-Net's 2d configuration"
            ),
        )
    return (
        "unet3d",
        coarse,
        (
            f"3D U-Net: at least {THIN_VOXELS} resampled voxels per axis and spacing ratio "
            f"{ratio:.1f} <= {SLICEWISE_ANISOTROPY_RATIO:g}"
        ),
    )


def _looks_like_ct(channel: dict) -> bool:
    stats = channel.get("foreground_intensity", {})
    return bool(channel.get("integer_valued")) and (
        float(stats.get("p00_5", 0.0)) < -500.0 or float(stats.get("min", 0.0)) <= -1000.0
    )


def plan_intensity(fingerprint: dict) -> Tuple[Dict[str, str], str, List[str]]:
    """Rule 7 (nnU-Net's normalisation schemes): a CT channel gets "dataset" (clip to the
    training set's foreground 0.5/99.5 percentiles, z-score with its foreground mean/std: CT
    values are quantitative); every other modality "zscore_nonzero" (per volume over non-zero
    voxels). A channel whose modality is unknown ("unknown", "OT", "") but which looks like CT
    (integer voxels and foreground p00_5 < -500 or min <= -1000, i.e. air in Hounsfield units)
    is treated as CT, with a warning.

    Returns ({modality: mode, "*": "zscore_nonzero"}, reason, warnings).
    """
    modes: Dict[str, str] = {}
    notes, warnings = [], []
    for channel in fingerprint.get("channels", []):
        modality = str(channel.get("modality", "unknown"))
        if modality.upper() == "CT":
            mode = "dataset"
            notes.append(
                f"channel {channel.get('index', 0)} is CT: dataset percentile clip + z-score (nnU-Net's CT scheme)"
            )
        elif modality.lower() in ("unknown", "ot", "") and _looks_like_ct(channel):
            mode = "dataset"
            notes.append(
                f"channel {channel.get('index', 0)} ({modality!r}) looks like CT: dataset percentile clip + z-score"
            )
            warnings.append(
                f"channel {channel.get('index', 0)} has modality {modality!r} but integer voxels down to "
                f"{channel.get('foreground_intensity', {}).get('min')}: treated as CT (dataset normalisation)"
            )
        else:
            mode = "zscore_nonzero"
            notes.append(
                f"channel {channel.get('index', 0)} is {modality}: per-volume z-score over non-zero voxels (nnU-Net)"
            )
        if modes.get(modality, mode) != mode:
            warnings.append(f"channels share modality {modality!r} but need different normalisations; the first wins")
        modes.setdefault(modality, mode)
    modes.setdefault("*", "zscore_nonzero")
    return modes, "; ".join(notes) or "no channel described: per-volume z-score over non-zero voxels", warnings


# ------------------------------------------------------------------------------------------------
# Network topology and memory


def network_topology(
    spacing: Sequence[float], patch_size: Sequence[int], max_levels: int, slice_axis: Optional[int] = None
) -> Tuple[List[List[int]], List[List[int]]]:
    """Rule 3 (nnU-Net get_pool_and_conv_props): pooling factors and kernel sizes per level.

    Level by level, an axis is pooled (factor 2) while its feature map stays >= 4 voxels after
    pooling (current size >= 8) and its current spacing is at most 2x the finest current spacing
    among the axes still large enough to pool, so a much coarser axis is not pooled early; its
    relative spacing halves as the others are pooled. The kernel is 1 along an axis whose current
    spacing is > 2x the finest current spacing, else 3, and stays 3 once 3 (nnU-Net); the
    bottleneck's kernel is 3 along every axis (nnU-Net). As in nnU-Net, a level that would pool a
    single axis needs >= 12 voxels along it. Pooling stops when no axis qualifies or
    at max_levels levels (the caller caps levels: CPU 5, GPU 6). With slice_axis (unet2d) that axis
    is never pooled and its kernel is 1.

    Args:
      spacing: (3,) mm; patch_size: (3,) voxels; max_levels: >= 1.
    Returns:
      (pool_sizes, kernel_sizes): len(levels) - 1 and len(levels) lists of 3 ints each.
    """
    axes = [a for a in range(3) if a != slice_axis]
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch_size]
    kernel = [1, 1, 1]
    pools: List[List[int]] = []
    kernels: List[List[int]] = []

    def widen_kernels():
        finest = min(current_spacing[a] for a in axes)
        for a in axes:
            if current_spacing[a] <= 2.0 * finest * (1 + _EPS):
                kernel[a] = 3

    while len(pools) < max_levels - 1:
        widen_kernels()
        large = [a for a in axes if current_size[a] >= 2 * MIN_FEATURE_MAP]
        if not large:
            break
        finest = min(current_spacing[a] for a in large)
        pooled = [a for a in large if current_spacing[a] <= 2.0 * finest * (1 + _EPS)]
        if len(pooled) == 1 and current_size[pooled[0]] < 3 * MIN_FEATURE_MAP:
            break  # nnU-Net: a level pooling a single axis needs >= 12 voxels along it
        kernels.append(list(kernel))
        pools.append([2 if a in pooled else 1 for a in range(3)])
        for a in pooled:
            current_spacing[a] *= 2.0
            current_size[a] = math.ceil(current_size[a] / 2.0)
    kernels.append([1 if a == slice_axis else 3 for a in range(3)])
    return pools, kernels


def divisor_of(pool_sizes: Sequence[Sequence[int]]) -> List[int]:
    """Per axis, the product of the pooling factors: what the patch must be divisible by."""
    out = [1, 1, 1]
    for pool in pool_sizes:
        out = [o * int(p) for o, p in zip(out, pool)]
    return out


def round_up(shape: Sequence[float], divisor: Sequence[int]) -> List[int]:
    """Each size rounded up to a positive multiple of its divisor."""
    return [int(max(1, math.ceil(float(s) / d - _EPS)) * d) for s, d in zip(shape, divisor)]


def default_filters(levels: int, base: int, cap: int) -> List[int]:
    """Rule 5: `base` filters doubling per level, capped at `cap` (nnU-Net: 32 .. 320)."""
    return [int(min(cap, base * 2**level)) for level in range(levels)]


def activation_bytes(
    patch_size: Sequence[int],
    filters: Sequence[int],
    pool_sizes: Sequence[Sequence[int]],
    batch_size: int,
    bytes_per_value: int = BYTES_PER_VALUE,
) -> float:
    """Rule 4's memory estimate of one training step: the activations the backward pass keeps.

    Sum over levels of filters x voxels at that level, x ACTIVATIONS_PER_FILTER tensors, x batch,
    x bytes. Returns bytes.
    """
    size = np.asarray(patch_size, np.float64)
    values = 0.0
    for level, f in enumerate(filters):
        values += float(f) * float(np.prod(size))
        if level < len(pool_sizes):
            size = np.ceil(size / np.asarray(pool_sizes[level], np.float64))
    return ACTIVATIONS_PER_FILTER * values * batch_size * bytes_per_value


def memory_budget_bytes(machine: Machine) -> Tuple[float, str]:
    """Rule 4's budget: GPU 0.6 x accelerator memory (8 GiB when unknown, nnU-Net's default
    target); CPU min(8 GiB, 0.3 x RAM), leaving room for cached cases and the input pipeline."""
    if machine.accelerator == "gpu":
        gb = machine.accelerator_memory_gb or DEFAULT_GPU_MEMORY_GB
        return GPU_MEMORY_SHARE * gb * 2**30, f"{GPU_MEMORY_SHARE:g} x {gb:g} GiB GPU memory"
    gb = min(CPU_MEMORY_CAP_GB, CPU_MEMORY_SHARE * machine.memory_gb)
    return gb * 2**30, f"min({CPU_MEMORY_CAP_GB:g} GiB, {CPU_MEMORY_SHARE:g} x {machine.memory_gb:g} GiB RAM)"


def sliding_windows(grid: Sequence[int], patch_size: Sequence[int], overlap: float = OVERLAP) -> int:
    """Windows a sliding window of `patch_size` needs over `grid` (nnU-Net's step computation:
    per axis ceil((grid - patch) / (patch x (1 - overlap))) + 1, at least one step of a voxel)."""
    count = 1
    for g, p in zip(grid, patch_size):
        if g <= p:
            continue
        step = max(1, int(p * (1.0 - overlap)))
        count *= int(math.ceil((g - p) / step)) + 1
    return count


def _relative_cost(settings: dict) -> float:
    """Multiply-adds of one training step up to a constant: batch x sum over levels of
    voxels x filters^2 x kernel volume (convolutions dominate)."""
    size = np.asarray(settings["patch_size"], np.float64)
    total = 0.0
    for level, f in enumerate(settings["filters"]):
        kernel = settings["kernel_sizes"][min(level, len(settings["kernel_sizes"]) - 1)]
        total += float(np.prod(size)) * float(f) ** 2 * float(np.prod(kernel))
        if level < len(settings["pool_sizes"]):
            size = np.ceil(size / np.asarray(settings["pool_sizes"][level], np.float64))
    return total * settings["batch_size"]


# ------------------------------------------------------------------------------------------------
# Planning state


@dataclasses.dataclass(frozen=True)
class _Net:
    """One candidate network and grid (everything a step-time measurement depends on)."""

    spacing: Tuple[float, ...]
    median_shape: Tuple[float, ...]  # resampled median shape at `spacing`, voxels
    patch: Tuple[int, ...]
    filters: Tuple[int, ...]
    pools: Tuple[Tuple[int, ...], ...]
    kernels: Tuple[Tuple[int, ...], ...]
    batch: int
    target_shape: Tuple[int, ...]
    patch_note: str
    batch_note: str
    grid_note: str
    warnings: Tuple[str, ...]  # about this candidate (grid crops, memory)


class _Context:
    """What stays fixed while candidates are designed: fingerprint, machine, overrides, model."""

    def __init__(
        self,
        fingerprint: dict,
        machine: Machine,
        overrides: Dict[str, Any],
        model: str,
        slice_axis: int,
        num_classes: int,
    ):
        self.fp = fingerprint
        self.machine = machine
        self.overrides = overrides
        self.model = model
        self.slice_axis = slice_axis
        self.num_classes = num_classes
        self.channels = max(1, len(fingerprint.get("channels", [])))
        self.kind = "gpu" if machine.accelerator == "gpu" else "cpu"
        self.memory_budget, self.memory_note = memory_budget_bytes(machine)

    def fixed(self, key: str) -> bool:
        return key in self.overrides

    def get(self, key: str):
        return self.overrides[key]

    @property
    def plane_axis(self) -> Optional[int]:
        return self.slice_axis if self.model == "unet2d" else None


def _check_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    out = dict(overrides or {})
    for key in out:
        stage, _, name = key.partition(".")
        if stage not in SETTINGS_KEYS or name not in SETTINGS_KEYS[stage]:
            known = [f"{s}.{k}" for s, keys in SETTINGS_KEYS.items() for k in keys]
            raise ValueError(f"override {key!r}: not a planned setting; choose from {known}")
    return out


def _round_list(values, digits: int = 4) -> List[float]:
    return [round(float(v), digits) for v in values]


def _topology(ctx: _Context, spacing, patch, levels_cap: int):
    """Pools and kernels for `patch`: the user's when overridden, else rule 3, matched to the
    user's filter count when that is overridden."""
    pools, kernels = network_topology(spacing, patch, levels_cap, ctx.plane_axis)
    if ctx.fixed("training.pool_sizes"):
        pools = [list(p) for p in ctx.get("training.pool_sizes")]
    levels = len(pools) + 1
    if ctx.fixed("training.filters"):
        levels = len(ctx.get("training.filters"))
        pools = (pools + [[1, 1, 1]] * levels)[: levels - 1]
    if ctx.fixed("training.kernel_sizes"):
        kernels = [list(k) for k in ctx.get("training.kernel_sizes")]
    else:  # keep the bottleneck's kernel last, the per-level kernels before it
        body = (kernels[:-1] + [kernels[-2] if len(kernels) > 1 else kernels[-1]] * levels)[: levels - 1]
        kernels = body + [kernels[-1]]
    return pools, kernels


def _grid(ctx: _Context, spacing, divisor) -> Tuple[List[int], str, List[str]]:
    """Rule 9: the grid every case is cropped/padded to (and serving's sliding window covers).

    Large enough for the largest resampled field of view (extent_mm max / target spacing, rounded
    up to the pooling divisor) so no case is cropped; above GRID_VOXEL_CAP voxels, the 90th
    percentile of the per-case fields of view instead (a warning counts the cropped cases and the
    largest cut), but never smaller than the largest foreground bounding box
    (foreground_bbox_mm_max / target spacing), so no structure is cut.
    """
    fp = ctx.fp
    spacing = np.asarray(spacing, np.float64)
    extent_max = np.asarray(
        fp.get("extent_mm", {}).get("max")
        or np.asarray(fp["shape"]["max"], np.float64) * np.asarray(fp["spacing"]["median"]),
        np.float64,
    )
    full = round_up(extent_max / spacing, divisor)
    if float(np.prod(full, dtype=np.float64)) <= GRID_VOXEL_CAP:
        return (
            full,
            (
                f"covers the largest field of view {_fmt_mm(extent_max)} at the target spacing, rounded up to "
                f"multiples of {divisor}, so no case is cropped"
            ),
            [],
        )
    cases = fp.get("cases") or []
    if cases:
        extents = np.array([np.asarray(c["shape"], np.float64) * np.asarray(c["spacing"], np.float64) for c in cases])
        p90 = np.percentile(extents, 90, axis=0)
    else:
        extents = None
        p90 = np.asarray(fp["shape"]["p90"], np.float64) * np.asarray(fp["spacing"]["median"], np.float64)
    bbox = np.asarray(fp.get("foreground_bbox_mm_max") or [0.0, 0.0, 0.0], np.float64)
    shape = round_up(np.maximum(p90, bbox) / spacing, divisor)
    covered = np.asarray(shape) * spacing
    if extents is not None:
        cut = np.maximum(extents - covered, 0.0)
        cropped = int(np.sum(cut.max(axis=1) > _EPS))
        how = f"{cropped} of {len(cases)} cases will be cropped, by up to {_fmt_mm(cut.max(axis=0))}"
    else:
        how = f"about 10 % of the cases will be cropped, by up to {_fmt_mm(np.maximum(extent_max - covered, 0))}"
    warning = (
        f"the grid for the largest field of view {full} exceeds {GRID_VOXEL_CAP} voxels: using the "
        f"90th percentile {shape}; {how}"
    )
    return (
        shape,
        (
            f"covers the 90th percentile field of view and the largest foreground box {_fmt_mm(bbox)} "
            f"(the largest view {full} exceeds {GRID_VOXEL_CAP} voxels)"
        ),
        [warning],
    )


def _fmt_mm(values) -> str:
    return "x".join(f"{float(v):.0f}" for v in values) + " mm"


def _design(
    ctx: _Context,
    spacing,
    filter_base: int,
    filter_cap: int,
    batch_cap: Optional[int],
    patch_limit: Optional[Sequence[int]],
) -> _Net:
    """One candidate at `spacing`: patch (rule 4), topology (rule 3), filters and batch (rule 5),
    grid (rule 9), honouring the overrides; patch_limit caps the patch (budget shrinking)."""
    fp = ctx.fp
    median = _median_resampled(fp, spacing)
    levels_cap = MAX_LEVELS[ctx.kind]
    user_shape = ctx.get("transform.target_shape") if ctx.fixed("transform.target_shape") else None

    def filters_for(levels: int) -> List[int]:
        if ctx.fixed("training.filters"):
            return [int(f) for f in ctx.get("training.filters")]
        return default_filters(levels, filter_base, filter_cap)

    notes: List[str] = []
    memory_warnings: List[str] = []
    if ctx.fixed("training.patch_size"):
        patch = [int(p) for p in ctx.get("training.patch_size")]
        pools, kernels = _topology(ctx, spacing, patch, levels_cap)
        notes.append("set by the user")
    else:
        start = [float(math.ceil(m - _EPS)) for m in median]
        if ctx.plane_axis is not None:
            # Slices per 2D patch: with the minimum batch this gives nnU-Net's reference 2D batch.
            start[ctx.plane_axis] = float(max(1, min(start[ctx.plane_axis], SLICES_PER_2D_BATCH // MIN_BATCH)))
        if patch_limit is not None:
            start = [min(s, float(p)) for s, p in zip(start, patch_limit)]
        if user_shape is not None:
            start = [min(s, float(t)) for s, t in zip(start, user_shape)]
        patch, pools, kernels, shrunk, memory_warnings = _fit_memory(
            ctx, spacing, median, start, filters_for, levels_cap
        )
        notes.append(
            f"the resampled median shape {[round(m) for m in median]} rounded up to multiples of the "
            f"pooling product {divisor_of(pools)}"
        )
        if ctx.plane_axis is not None:
            notes.append(
                f"{patch[ctx.plane_axis]} slices per patch (x batch {MIN_BATCH} ~ nnU-Net's 2D batch of "
                f"{SLICES_PER_2D_BATCH})"
            )
        if shrunk:
            notes.append(
                f"shrunk from {shrunk} to fit the activation memory budget {ctx.memory_note}, the axis "
                "largest relative to the median shape first (nnU-Net)"
            )
    filters = filters_for(len(pools) + 1)
    divisor = divisor_of(pools)

    batch_note = ""
    if ctx.fixed("training.batch_size"):
        batch = int(ctx.get("training.batch_size"))
    else:
        batch, batch_note = plan_batch_size(
            ctx.kind, patch, filters, pools, ctx.memory_budget, float(np.prod(median)) * int(fp["num_cases"])
        )
    if batch_cap is not None and not ctx.fixed("training.batch_size") and batch > batch_cap:
        batch = batch_cap
        batch_note += f"; reduced to {batch_cap} to fit the time budget"

    grid_warnings: List[str] = []
    if user_shape is not None:
        target = [int(t) for t in user_shape]
        grid_note = "set by the user"
    else:
        target, grid_note, grid_warnings = _grid(ctx, spacing, divisor)
    if any(p > t for p, t in zip(patch, target)):
        patch = [min(p, t) for p, t in zip(patch, target)]
        notes.append(f"clipped to the grid {target}")
        if not ctx.fixed("training.pool_sizes"):
            pools, kernels = _topology(ctx, spacing, patch, len(pools) + 1)
            filters = filters_for(len(pools) + 1)
    return _Net(
        spacing=tuple(_round_list(spacing)),
        median_shape=tuple(float(m) for m in median),
        patch=tuple(int(p) for p in patch),
        filters=tuple(filters),
        pools=tuple(tuple(int(v) for v in p) for p in pools),
        kernels=tuple(tuple(int(v) for v in k) for k in kernels),
        batch=int(batch),
        target_shape=tuple(int(t) for t in target),
        patch_note="; ".join(notes),
        batch_note=batch_note,
        grid_note=grid_note,
        warnings=tuple(memory_warnings + grid_warnings),
    )


def plan_batch_size(
    kind: str,
    patch_size: Sequence[int],
    filters: Sequence[int],
    pool_sizes: Sequence[Sequence[int]],
    memory_budget: float,
    dataset_voxels: float,
) -> Tuple[int, str]:
    """Rule 5's batch size. CPU ("cpu"): nnU-Net's minimum of 2, since the step time grows about
    linearly with the batch and the time budget buys more from more steps. GPU: as many patches as
    the activation memory budget (bytes) holds, but one batch covers at most 5 % of the dataset's
    voxels (dataset_voxels = resampled median voxels x cases), and never below 2 (nnU-Net).

    Returns (batch size, reason).
    """
    if kind != "gpu":
        return MIN_BATCH, (
            f"nnU-Net's minimum of {MIN_BATCH}: on a CPU a larger batch costs proportionally more time "
            "per step and buys nothing the budget could not spend on more steps"
        )
    by_memory = int(memory_budget // activation_bytes(patch_size, filters, pool_sizes, 1))
    by_coverage = int(round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(patch_size, dtype=np.float64))))
    return max(MIN_BATCH, min(by_memory, by_coverage)), (
        f"as large as GPU memory allows ({by_memory}) but covering at most 5 % of the dataset's voxels "
        f"({by_coverage}), at least {MIN_BATCH} (nnU-Net)"
    )


def _fit_memory(ctx: _Context, spacing, median, start, filters_for, levels_cap):
    """Rule 4 (nnU-Net get_plans_for_configuration): start from `start` (the resampled median
    shape), recompute the topology (rule 3) and round the patch up to its pooling divisor; while
    the activation estimate for the minimum batch exceeds the memory budget, reduce the axis whose
    patch is largest relative to the median shape by its divisor, as nnU-Net does.

    Returns (patch, pools, kernels, the first patch when it had to shrink else None, warnings).
    """
    patch = [float(s) for s in start]
    first = None
    for _ in range(_MAX_SHRINK_ITERATIONS):
        pools, kernels = _topology(ctx, spacing, patch, levels_cap)
        divisor = divisor_of(pools)
        padded = round_up(patch, divisor)
        filters = filters_for(len(pools) + 1)
        if activation_bytes(padded, filters, pools, MIN_BATCH) <= ctx.memory_budget:
            return padded, pools, kernels, first, []
        floors = [1 if a == ctx.plane_axis else min(2 * MIN_FEATURE_MAP, padded[a]) for a in range(3)]
        shrinkable = [a for a in range(3) if padded[a] > floors[a]]
        if not shrinkable:
            return (
                padded,
                pools,
                kernels,
                first,
                [f"even the smallest patch {padded} exceeds the memory budget {ctx.memory_note}"],
            )
        first = first or padded
        axis = max(shrinkable, key=lambda a: padded[a] / max(median[a], 1.0))
        step = divisor[axis] if padded[axis] - divisor[axis] >= floors[axis] else max(1, padded[axis] // 2)
        patch = [float(p) for p in padded]
        patch[axis] = float(max(floors[axis], padded[axis] - step))
    return (
        padded,
        pools,
        kernels,
        first,
        [f"gave up shrinking the patch {padded} into the memory budget {ctx.memory_note}"],
    )


def _training_settings(ctx: _Context, net: _Net, mixed_precision: bool) -> dict:
    return {
        "in_channels": int(ctx.channels),
        "model": ctx.model,
        "slice_axis": int(ctx.slice_axis),
        "num_classes": int(ctx.num_classes),
        "patch_size": list(net.patch),
        "filters": list(net.filters),
        "pool_sizes": [list(p) for p in net.pools],
        "kernel_sizes": [list(k) for k in net.kernels],
        "batch_size": int(net.batch),
        "mixed_precision": bool(mixed_precision),
    }


class _StepMeter:
    """Calls the caller's step_seconds at most `limit` times, caching by the network settings;
    between measurements, predicts by scaling the latest measurement of the same precision with
    the analytic cost ratio (_relative_cost)."""

    def __init__(self, step_seconds: Callable[[dict], float], limit: int = MAX_STEP_MEASUREMENTS):
        self.fn = step_seconds
        self.limit = limit
        self.cache: Dict[str, float] = {}
        self.history: List[Tuple[dict, float]] = []

    @staticmethod
    def _key(settings: dict) -> str:
        return json.dumps({k: settings[k] for k in NETWORK_KEYS}, sort_keys=True)

    @property
    def calls(self) -> int:
        return len(self.history)

    def measured(self, settings: dict) -> Optional[float]:
        return self.cache.get(self._key(settings))

    def can_measure(self, reserve: int = 0) -> bool:
        return self.calls + reserve < self.limit

    def measure(self, settings: dict) -> float:
        key = self._key(settings)
        if key not in self.cache:
            seconds = float(self.fn(dict(settings)))
            if not seconds > 0:
                raise ValueError(f"step_seconds returned {seconds} for {settings}: expected a positive time")
            self.cache[key] = seconds
            self.history.append((dict(settings), seconds))
        return self.cache[key]

    def predict(self, settings: dict) -> float:
        cached = self.measured(settings)
        if cached is not None:
            return cached
        same = [(s, t) for s, t in self.history if s["mixed_precision"] == settings["mixed_precision"]]
        reference, seconds = (same or self.history)[-1]
        return seconds * _relative_cost(settings) / _relative_cost(reference)


# ------------------------------------------------------------------------------------------------
# Time budget


def eval_cases_for(num_cases: int) -> int:
    """Cases in the eval split: ImageExampleGen hashes patients 4:1 into train:eval."""
    return max(1, int(round(num_cases * EVAL_SHARE)))


def inference_minutes(cases: int, windows: int, step_seconds: float, batch_size: int, passes: int = 1) -> float:
    """Sliding-window inference time: cases x windows x passes forward passes, each a third of a
    training step of `batch_size` patches per window batch. Returns minutes."""
    return cases * windows * passes * step_seconds / (INFERENCE_SPEEDUP * batch_size) / 60.0


def split_budget(
    budget_minutes: float,
    step_seconds: float,
    batch_size: int,
    windows: int,
    val_dice_cases: int,
    epochs: Optional[int] = None,
    time_limit_minutes: Optional[float] = None,
    train_steps: Optional[int] = None,
) -> dict:
    """Rule 11: the Trainer's wall time = training + per-epoch validation + export.

    export = 1 min; validation = epochs x val_dice_cases x windows x step_seconds / (3 x batch)
    / 60; training = budget - export - validation; epochs = clamp(round(training / 3), 1, 20),
    solved as the largest epoch count consistent with that rule (validation grows with epochs),
    then raised to MIN_EPOCHS when their validation takes at most MIN_EPOCHS_VALIDATION_SHARE;
    train_steps = floor(training x 60 / step_seconds); time_limit_minutes = training. Overridden
    epochs / time limit / steps (the optional arguments) are used as given.

    Returns {"epochs", "training_minutes", "validation_minutes", "export_minutes", "train_steps",
    "affordable_steps"} (affordable_steps: what the training time allows).
    """
    available = budget_minutes - EXPORT_MINUTES

    def validation(e: int) -> float:
        return e * inference_minutes(val_dice_cases, windows, step_seconds, batch_size)

    if epochs is None:
        epochs = 1
        for candidate in range(MAX_EPOCHS, 0, -1):
            if candidate <= max(1, round((available - validation(candidate)) / MINUTES_PER_EPOCH)):
                epochs = candidate
                break
        if epochs < MIN_EPOCHS and validation(MIN_EPOCHS) <= MIN_EPOCHS_VALIDATION_SHARE * available:
            epochs = MIN_EPOCHS
    training = max(0.0, available - validation(epochs))
    if time_limit_minutes is not None:
        training = float(time_limit_minutes)
    affordable = int(math.floor(training * 60.0 / step_seconds + _EPS))
    return {
        "epochs": int(epochs),
        "training_minutes": training,
        "validation_minutes": validation(epochs),
        "export_minutes": EXPORT_MINUTES,
        "affordable_steps": affordable,
        "train_steps": int(train_steps) if train_steps is not None else affordable,
    }


def plan_mirror_axes(
    budget_minutes: float, eval_minutes_per_pass: float, spacing: Sequence[float], slice_axis: Optional[int]
) -> Tuple[List[int], str]:
    """Rule 13: test-time mirroring over all 3 axes (nnU-Net) unless the Evaluator's inference
    (eval cases x windows x 2^k passes) would exceed 15 % of the budget; then axes are dropped,
    the slice axis (unet2d) or the coarsest axis first.

    Returns (sorted axes, reason).
    """
    drop_order = sorted(range(3), key=lambda a: (a != slice_axis, -float(spacing[a]), -a))
    kept = list(range(3))
    limit = MAX_EVALUATION_SHARE * budget_minutes
    dropped = []
    while kept and eval_minutes_per_pass * 2 ** len(kept) > limit:
        axis = next(a for a in drop_order if a in kept)
        kept.remove(axis)
        dropped.append(axis)
    cost = eval_minutes_per_pass * 2 ** len(kept)
    if not dropped:
        return kept, (
            f"mirroring over all axes (nnU-Net): {2 ** len(kept)} passes per window cost ~{cost:.1f} min "
            f"of evaluation, within {MAX_EVALUATION_SHARE:.0%} of the budget"
        )
    return sorted(kept), (
        f"dropped axes {dropped} (coarsest/slice axis first) so evaluation inference "
        f"(~{cost:.1f} min) stays within {MAX_EVALUATION_SHARE:.0%} of the budget"
    )


# ------------------------------------------------------------------------------------------------
# Budget shrinking


def _structure_spacing_limit(fingerprint: dict) -> np.ndarray:
    """Per axis, the coarsest spacing at which every label's median bounding box spans
    MIN_STRUCTURE_VOXELS voxels (inf without label statistics)."""
    boxes = [stats.get("bbox_mm_median") for stats in (fingerprint.get("label_stats") or {}).values()]
    boxes = [np.asarray(b, np.float64) for b in boxes if b]
    if not boxes:
        return np.full(3, np.inf)
    return np.min(np.stack(boxes), axis=0) / MIN_STRUCTURE_VOXELS


def _coarser_spacing(spacing: Sequence[float], limit: np.ndarray) -> Optional[List[float]]:
    """Rule 12d (nnU-Net's 3d_lowres): x1.5 on the fine axes (more than 2x finer than the
    coarsest; all axes when none is), never beyond `limit` nor finer than now; None if stuck."""
    current = np.asarray(spacing, np.float64)
    ceiling = np.maximum(current, limit)
    fine = current * 2.0 < current.max() * (1 - _EPS)
    for axes in (fine, np.ones(3, bool)):
        if not axes.any():
            continue
        proposed = np.minimum(np.where(axes, current * LOWRES_SPACING_FACTOR, current), ceiling)
        if np.any(proposed > current * (1 + 1e-3)):
            return _round_list(proposed)
    return None


def _halved_patch(ctx: _Context, net: _Net, exhausted: set) -> Optional[Tuple[List[int], int]]:
    """Rule 12c: the patch halved along its largest axis relative to the median shape, not below
    SMALLEST_PATCH voxels where the data is larger (axes where it is not stay); slice axis of a
    2D plan down to one slice. Returns (patch limit, axis) or None."""
    floors = []
    for a in range(3):
        if a == ctx.plane_axis:
            floors.append(1)
        elif net.median_shape[a] > SMALLEST_PATCH:
            floors.append(SMALLEST_PATCH)
        else:
            floors.append(net.patch[a])
    candidates = [a for a in range(3) if net.patch[a] > floors[a] and a not in exhausted]
    if not candidates:
        return None
    axis = max(candidates, key=lambda a: net.patch[a] / max(net.median_shape[a], 1.0))
    limit = list(net.patch)
    limit[axis] = max(floors[axis], net.patch[axis] // 2)
    return limit, axis


# ------------------------------------------------------------------------------------------------
# The plan


def make_plan(
    fingerprint: dict,
    budget_minutes: float,
    machine: Machine,
    step_seconds: Callable[[dict], float],
    overrides: Optional[Dict[str, Any]] = None,
    min_steps: int = 800,
) -> dict:
    """The plan: every transform/training setting with its reason, estimates and warnings.

    Rules 1-14 are applied by the functions named in their docstrings; the order here is: classes
    (rule 8) -> intensity (7) -> target spacing (1) -> model (6) -> patch/topology/filters/batch/
    grid (4, 3, 5, 9) -> precision (10: measure both on a bf16 CPU or a GPU, keep the faster) ->
    budget (11) -> shrinking (12) -> test-time mirroring (13) -> fixed choices (14).

    Rule 14, fixed choices from nnU-Net: Adam at learning rate 3e-3 with polynomial (0.9) decay,
    Dice + cross-entropy loss, a third of the patches centred on foreground, sliding-window
    overlap 0.5 (nnU-Net's tile step of half a patch).

    Rule 12: when fewer than `min_steps` steps (or the user's train_steps) fit, shrink in this
    order until they fit: (a) filters capped lower (base halved down to 8, cap halved), (b) batch
    size to 2, (c) patch halved along its largest axis relative to the median shape (not below 32
    voxels where the data is larger), (d) coarser target spacing (x1.5 per round on the fine
    axes, nnU-Net's 3d_lowres idea) but never so coarse that any label's median bounding box spans
    fewer than 8 voxels along an axis. Each candidate's step time is predicted from the latest
    measurement scaled by the analytic cost ratio and re-measured when the prediction says it
    fits; if nothing fits the smallest plan is kept with a warning. Every shrink is recorded in
    the reasons. Overridden settings are never shrunk.

    Args:
      fingerprint: the dataset fingerprint (modules/plan/fingerprint.combine format).
      budget_minutes: the Trainer's wall time (training + validation + export), > 0.
      machine: see Machine / detect_machine.
      step_seconds: training settings (NETWORK_KEYS) -> measured seconds per step on this
        machine; called at most MAX_STEP_MEASUREMENTS times, cached by those settings.
      overrides: {"stage.key": value} for keys of SETTINGS_KEYS; they win, are recorded with
        origin "user", and later decisions use them.
      min_steps: fewest training steps before the plan shrinks.
    Returns:
      {"version", "budget_minutes", "machine", "settings": {"transform": {...}, "training": {...}},
       "decisions": [{"key", "value", "origin", "reason"}], "estimates": {...}, "warnings": [...]}
      (JSON-able).
    Raises:
      ValueError: unknown override key, labels with only background, non-positive budget, or a
        non-positive measured step time.
    """
    overrides = _check_overrides(overrides)
    if not budget_minutes > 0:
        raise ValueError(f"budget_minutes {budget_minutes}: expected > 0")
    fp = fingerprint
    warnings: List[str] = []
    values: Dict[str, Any] = {}
    reasons: Dict[str, str] = {}

    def decide(key: str, value: Any, reason: str) -> Any:
        """Records the plan's value and reason; an override replaces both. Returns the value used."""
        if key in overrides:
            values[key], reasons[key] = overrides[key], ""
        else:
            values[key], reasons[key] = value, reason
        return values[key]

    classes = num_classes_for(fp["labels"])
    classes = decide("training.num_classes", classes, f"largest label value + 1 (labels seen: {list(fp['labels'])})")
    modes, why, intensity_warnings = plan_intensity(fp)
    decide("transform.intensity_mode", modes, why)
    if "transform.intensity_mode" not in overrides:
        warnings.extend(intensity_warnings)
    spacing, spacing_reason = plan_target_spacing(fp)
    spacing = [float(s) for s in decide("transform.target_spacing", spacing, spacing_reason)]
    model, slice_axis, model_reason = choose_model(fp, spacing)
    model = decide("training.model", model, model_reason)
    if model == "unet3d":
        slice_reason = f"unused by unet3d; the coarsest axis {slice_axis}, where a 2D plan would slice"
    elif "training.model" in overrides and not model_reason.startswith(("thin", "very")):
        slice_reason = f"the coarsest axis {slice_axis}: the 2D U-Net the user chose slices perpendicular to it"
    else:
        slice_reason = f"2D slices perpendicular to axis {slice_axis} ({model_reason.split(':')[0]})"
    slice_axis = int(decide("training.slice_axis", slice_axis, slice_reason))
    if model == "resnet3d":
        raise ValueError("the planner plans segmentation U-Nets; model 'resnet3d' cannot be planned")
    ctx = _Context(fp, machine, overrides, model, slice_axis, int(classes))
    base, cap = FILTERS[ctx.kind]
    channel_names = ", ".join(f"{c.get('index', i)}: {c.get('modality', '?')}" for i, c in enumerate(fp["channels"]))
    channels_reason = f"every case has {ctx.channels} channel{'s' if ctx.channels > 1 else ''} ({channel_names})"
    decide("transform.channels", ctx.channels, channels_reason)
    decide("training.in_channels", ctx.channels, "the network takes Transform's channels")

    # Rule 10: precision.
    net = _design(ctx, spacing, base, cap, None, None)
    meter = _StepMeter(step_seconds)
    mixed_name = "mixed_float16" if ctx.kind == "gpu" else "mixed_bfloat16"
    calibration: Dict[str, float] = {}
    if ctx.fixed("training.mixed_precision"):
        mixed = bool(ctx.get("training.mixed_precision"))
        calibration[mixed_name if mixed else "float32"] = meter.measure(_training_settings(ctx, net, mixed))
        precision_reason = ""
    elif ctx.kind == "gpu" or machine.bf16:
        calibration["float32"] = meter.measure(_training_settings(ctx, net, False))
        calibration[mixed_name] = meter.measure(_training_settings(ctx, net, True))
        mixed = calibration[mixed_name] < calibration["float32"]
        precision_reason = (
            f"measured {calibration['float32']:.3g} s/step float32 vs {calibration[mixed_name]:.3g} s "
            f"{mixed_name} on this {'GPU' if ctx.kind == 'gpu' else 'bf16-capable CPU'}; kept the faster"
        )
    else:
        mixed = False
        calibration["float32"] = meter.measure(_training_settings(ctx, net, False))
        precision_reason = (
            "float32: this CPU has no native bfloat16 (no amx_bf16/avx512_bf16), so mixed precision only emulates it"
        )
    decide("training.mixed_precision", mixed, precision_reason)

    # Rule 11: budget, for a candidate network.
    overlap = float(overrides.get("training.sliding_window_overlap", OVERLAP))
    eval_cases = eval_cases_for(int(fp["num_cases"]))
    val_cases = int(overrides.get("training.val_dice_cases", min(MAX_VAL_DICE_CASES, eval_cases)))
    required = int(overrides.get("training.train_steps", min_steps))

    def timing(candidate: _Net, seconds: float) -> dict:
        return split_budget(
            budget_minutes,
            seconds,
            candidate.batch,
            sliding_windows(candidate.target_shape, candidate.patch, overlap),
            val_cases,
            epochs=overrides.get("training.epochs"),
            time_limit_minutes=overrides.get("training.time_limit_minutes"),
            train_steps=overrides.get("training.train_steps"),
        )

    def assess(candidate: _Net, final: bool = False) -> Tuple[dict, float]:
        settings = _training_settings(ctx, candidate, mixed)
        seconds = meter.predict(settings)
        split = timing(candidate, seconds)
        fits = split["affordable_steps"] >= required
        if meter.measured(settings) is None and (fits or final) and meter.can_measure(reserve=0 if final else 1):
            seconds = meter.measure(settings)
            split = timing(candidate, seconds)
        return split, seconds

    def fits(split: dict) -> bool:
        return split["affordable_steps"] >= required

    split, seconds = assess(net, final=True)
    initial = net
    shrinks: Dict[str, List[str]] = {"filters": [], "batch": [], "patch": [], "spacing": []}
    # The patch never grows back while shrinking (fewer filters would let the memory rule allow more).
    state: Dict[str, Any] = {
        "spacing": spacing,
        "base": base,
        "cap": cap,
        "batch_cap": None,
        "patch_limit": list(net.patch),
    }

    def attempt(what: str, note: str) -> bool:
        nonlocal net, split, seconds
        candidate = _design(
            ctx, state["spacing"], state["base"], state["cap"], state["batch_cap"], state["patch_limit"]
        )
        if candidate == net:
            return False
        net = candidate
        split, seconds = assess(net)
        shrinks[what].append(f"{note} ({split['affordable_steps']} steps fit)")
        return True

    if not fits(split):
        start_steps = split["affordable_steps"]
        done = False
        # (a) filters
        while not done and not ctx.fixed("training.filters") and state["base"] > SMALLEST_FILTER_BASE:
            state["base"], state["cap"] = state["base"] // 2, state["cap"] // 2
            attempt("filters", f"base {state['base']}, cap {state['cap']}")
            done = fits(split)
        # (b) batch
        if not done and not ctx.fixed("training.batch_size") and net.batch > MIN_BATCH:
            state["batch_cap"] = MIN_BATCH
            attempt("batch", f"batch {MIN_BATCH}")
            done = fits(split)
        # (c) patch
        exhausted: set = set()
        while not done and not ctx.fixed("training.patch_size"):
            halved = _halved_patch(ctx, net, exhausted)
            if halved is None:
                break
            state["patch_limit"], axis = halved
            if not attempt("patch", f"{list(net.patch)} -> axis {axis} halved"):
                exhausted.add(axis)
            done = fits(split)
        # (d) spacing
        limit = _structure_spacing_limit(fp)
        rounds = 0
        while not done and not ctx.fixed("transform.target_spacing") and rounds < MAX_SPACING_ROUNDS:
            coarser = _coarser_spacing(state["spacing"], limit)
            if coarser is None:
                break
            rounds += 1
            state["spacing"] = coarser
            attempt("spacing", f"{coarser} mm")
            done = fits(split)
        if meter.measured(_training_settings(ctx, net, mixed)) is None and meter.can_measure():
            split, seconds = assess(net, final=True)  # the chosen plan's time measured, not scaled
        if not fits(split):
            warnings.append(
                f"even the smallest plan allows only {split['affordable_steps']} training steps "
                f"(< {required}) within {budget_minutes:g} min: expect an undertrained model; "
                f"a larger budget would help (the initial plan allowed {start_steps})"
            )
    warnings.extend(net.warnings)
    if split["train_steps"] < 1:
        # Zero steps would export an untrained network: refuse with what would make it work.
        raise ValueError(
            f"a {budget_minutes:g}-minute budget leaves no training time after export "
            f"({split['export_minutes']:g} min) and validation ({split['validation_minutes']:.1f} min): "
            f"give --budget-minutes above {split['export_minutes'] + split['validation_minutes'] + 1:.0f}, "
            "or set training.train_steps"
        )

    # Transform decisions that depend on the final network.
    spacing_reason = reasons.get("transform.target_spacing", "")
    if shrinks["spacing"]:
        values["transform.target_spacing"] = list(net.spacing)
        spacing_reason += (
            "; then coarsened for the time budget (a low-resolution plan as nnU-Net's 3d_lowres, "
            f"no label's median box under {MIN_STRUCTURE_VOXELS} voxels per axis): " + "; ".join(shrinks["spacing"])
        )
        reasons["transform.target_spacing"] = spacing_reason
    decide("transform.target_shape", list(net.target_shape), net.grid_note)
    decide(
        "transform.spatial_mode",
        "fixed_shape",
        "every case is cropped/padded to target_shape, "
        "so batches stack and serving's sliding window covers one known grid",
    )

    patch_reason = initial.patch_note
    if shrinks["patch"]:
        patch_reason += "; halved for the time budget after the filters and batch: " + "; ".join(shrinks["patch"])
    if shrinks["spacing"] and net.patch != initial.patch:
        patch_reason += f"; {list(net.patch)} at the coarser spacing {list(net.spacing)} mm"
    decide("training.patch_size", list(net.patch), patch_reason)
    filters_reason = f"base {FILTERS[ctx.kind][0]} doubling per level capped at {FILTERS[ctx.kind][1]}" + (
        " (nnU-Net's GPU scheme)"
        if ctx.kind == "gpu"
        else ": on a CPU the compute per step grows with filters squared, so half nnU-Net's 32..320"
    )
    if shrinks["filters"]:
        filters_reason += "; capped lower for the time budget: " + "; ".join(shrinks["filters"])
    decide("training.filters", list(net.filters), filters_reason + f"; {len(net.filters)} levels from the pooling")
    decide(
        "training.pool_sizes",
        [list(p) for p in net.pools],
        f"nnU-Net's rule: pool an axis while its feature map stays >= {MIN_FEATURE_MAP} voxels and its spacing is "
        f"within 2x of the finest, at most {MAX_LEVELS[ctx.kind]} levels on a {ctx.kind.upper()}",
    )
    decide(
        "training.kernel_sizes",
        [list(k) for k in net.kernels],
        "nnU-Net's rule: kernel 1 along an axis more than 2x coarser than the finest at that level, else 3"
        + ("; 1 along the slice axis of the 2D U-Net" if model == "unet2d" else ""),
    )
    batch_reason = net.batch_note + ("; " + "; ".join(shrinks["batch"]) if shrinks["batch"] else "")
    decide("training.batch_size", int(net.batch), batch_reason)
    decide("training.learning_rate", LEARNING_RATE, "nnU-Net-style Adam at 3e-3 with polynomial (0.9) decay to 1 %")
    decide("training.loss", LOSS, "Dice + cross-entropy, nnU-Net's loss: robust to class imbalance yet smooth early on")

    windows = sliding_windows(net.target_shape, net.patch, overlap)
    steps_reason = (
        f"floor({split['training_minutes']:.1f} min x 60 / {seconds:.3g} s per step), the steps the "
        "training time allows"
    )
    decide("training.train_steps", int(split["train_steps"]), steps_reason)
    if "training.train_steps" in overrides and split["train_steps"] > split["affordable_steps"]:
        warnings.append(
            f"train_steps {split['train_steps']} exceeds the {split['affordable_steps']} steps the "
            f"budget allows: the time limit will stop training early"
        )
    decide(
        "training.epochs",
        int(split["epochs"]),
        f"round(training minutes / {MINUTES_PER_EPOCH:g}) within 1..{MAX_EPOCHS}: one validation Dice every "
        f"~{MINUTES_PER_EPOCH:g} min of training; at least {MIN_EPOCHS} when their validation takes at most "
        f"{MIN_EPOCHS_VALIDATION_SHARE:.0%} of the time, so the training curves show a trend",
    )
    decide(
        "training.time_limit_minutes",
        round(split["training_minutes"], 2),
        f"budget {budget_minutes:g} min minus export {EXPORT_MINUTES:g} min and per-epoch validation "
        f"{split['validation_minutes']:.1f} min",
    )
    eval_pass = inference_minutes(eval_cases, windows, seconds, net.batch)
    axes, tta_reason = plan_mirror_axes(
        budget_minutes, eval_pass, net.spacing, slice_axis if model == "unet2d" else None
    )
    axes = decide("training.tta_mirror_axes", axes, tta_reason)
    decide("training.sliding_window_overlap", OVERLAP, "half-patch steps, nnU-Net's tile step of 0.5")
    decide(
        "training.foreground_oversample",
        FOREGROUND_OVERSAMPLE,
        "a third of patches centred on foreground, as nnU-Net, so small structures are seen often",
    )
    decide(
        "training.val_dice_cases",
        min(MAX_VAL_DICE_CASES, eval_cases),
        f"min({MAX_VAL_DICE_CASES}, the ~{eval_cases} eval cases): per-epoch validation Dice stays affordable",
    )

    settings = {stage: {key: values[f"{stage}.{key}"] for key in keys} for stage, keys in SETTINGS_KEYS.items()}
    decisions = []
    for stage, keys in SETTINGS_KEYS.items():
        for key in keys:
            full = f"{stage}.{key}"
            user = full in overrides
            decisions.append(
                {
                    "key": full,
                    "value": values[full],
                    "origin": "user" if user else "plan",
                    "reason": "set by the user" if user else reasons[full],
                }
            )
    estimates = {
        "step_seconds": round(seconds, 4),
        "step_seconds_source": "measured"
        if meter.measured(_training_settings(ctx, net, mixed)) is not None
        else "scaled",
        "calibration": {k: round(v, 4) for k, v in calibration.items()},
        "measurements": meter.calls,
        "train_steps": int(values["training.train_steps"]),
        "training_minutes": round(split["training_minutes"], 2),
        "validation_minutes": round(split["validation_minutes"], 2),
        "export_minutes": EXPORT_MINUTES,
        "evaluation_minutes": round(eval_pass * 2 ** len(axes), 2),
        "windows_per_case": windows,
    }
    plan = {
        "version": PLAN_VERSION,
        "budget_minutes": float(budget_minutes),
        "machine": dataclasses.asdict(machine),
        "settings": settings,
        "decisions": decisions,
        "estimates": estimates,
        "warnings": warnings,
    }
    return json.loads(json.dumps(plan))  # plain JSON types only (no tuples, no numpy scalars)


def describe(plan: dict, reason_width: int = 70) -> str:
    """The plan as a terminal table (key | value | origin | reason, reasons wrapped at
    `reason_width` characters), then the estimates and the warnings."""
    rows = [
        (d["key"], json.dumps(d["value"], separators=(",", ":")), d["origin"], d["reason"]) for d in plan["decisions"]
    ]
    key_w = max(len("key"), *(len(r[0]) for r in rows))
    value_w = min(32, max(len("value"), *(len(r[1]) for r in rows)))
    origin_w = max(len("origin"), *(len(r[2]) for r in rows))
    lines = [
        f"{'key':<{key_w}} | {'value':<{value_w}} | {'origin':<{origin_w}} | reason",
        f"{'-' * key_w}-+-{'-' * value_w}-+-{'-' * origin_w}-+-{'-' * reason_width}",
    ]
    for key, value, origin, reason in rows:
        values = textwrap.wrap(value, value_w, break_on_hyphens=False) or [""]
        reasons = textwrap.wrap(reason, reason_width) or [""]
        for i in range(max(len(values), len(reasons))):
            lines.append(
                f"{key if i == 0 else '':<{key_w}} | {values[i] if i < len(values) else '':<{value_w}} | "
                f"{origin if i == 0 else '':<{origin_w}} | {reasons[i] if i < len(reasons) else ''}".rstrip()
            )
    lines.append("")
    lines.append(f"estimates (budget {plan['budget_minutes']:g} min on {plan['machine']['accelerator']}):")
    for key, value in plan["estimates"].items():
        lines.append(f"  {key}: {json.dumps(value)}")
    lines.append("warnings:" if plan["warnings"] else "warnings: none")
    for warning in plan["warnings"]:
        lines.extend(textwrap.wrap(warning, reason_width + 20, initial_indent="  - ", subsequent_indent="    "))
    return "\n".join(lines)
