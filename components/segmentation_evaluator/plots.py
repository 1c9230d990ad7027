"""Pictures of the evaluation report: pure functions of plain data (numpy arrays, dicts of lists)
drawn with matplotlib's Agg backend into PNG files. No TFX, no TensorFlow.

Each picture shows one Dice definition and names it in its title:
  training_curves.png   loss, val_loss, per-label validation Dice and learning rate per epoch
                        (DICE_NETWORK_GRID: what the Trainer's PerLabelDice callback logs)
  dice_per_case.png     per-case Dice of each label, box and points, n per label (DICE_NATIVE_GRID)
  dice_per_label.png    mean DICE_NATIVE_GRID per label in each slice of the eval split (overall,
                        modality=..., site=..., spacing_bin=...), n cases per slice
  cases_best_worst.png  the worst and the best eval case (mean DICE_NATIVE_GRID over labels):
                        truth and prediction contours on three orthogonal slices through the
                        structure
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

TRAINING_CURVES = "training_curves.png"
DICE_PER_CASE = "dice_per_case.png"
DICE_PER_SLICE = "dice_per_label.png"
CASES_BEST_WORST = "cases_best_worst.png"

DICE_NETWORK_GRID = "validation Dice, network grid (whole cases, sliding window, mean over cases)"
DICE_NATIVE_GRID = "Dice on each case's own grid (served model's mask vs ingested label)"

_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and pods
    import matplotlib.pyplot as plt

    return plt


def _label_color(label: int):
    """One colour per label id, the same in every picture."""
    from matplotlib import colormaps

    return colormaps["tab10"]((int(label) - 1) % 10)


def _label_text(label: int, label_names: Optional[Mapping[int, str]]) -> str:
    name = (label_names or {}).get(int(label))
    return f"{label} {name}" if name else f"label {label}"


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def dice_label_ids(history: Mapping[str, Sequence[float]]) -> List[int]:
    """Label ids k of the val_dice_label_<k> series in a Keras history, ascending."""
    prefix = "val_dice_label_"
    return sorted(int(key[len(prefix) :]) for key in history if key.startswith(prefix) and key[len(prefix) :].isdigit())


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str, label_names: Optional[Mapping[int, str]] = None
) -> None:
    """Three panels over epochs (1-based), nnU-Net's progress.png as the model: loss and val_loss;
    val_dice_label_<k> per label and val_mean_dice (DICE_NETWORK_GRID); learning rate (log scale
    when it spans more than a decade).

    Args:
      history: Keras History.history, i.e. {metric: one value per epoch}, optionally with 'epoch'
        (0-based epoch numbers) and 'lr' (learning rate at the end of each epoch). Missing series
        leave their panel with a note; NaN values are gaps.
      path: PNG file to write.
    Raises:
      ValueError: `history` has no 'loss' series (nothing was trained).
    """
    if not history.get("loss"):
        raise ValueError("training history has no 'loss' series")
    plt = _pyplot()
    n = len(history["loss"])
    epochs = np.asarray(history.get("epoch") or range(n), dtype=float)[:n] + 1
    marker = "o" if n <= 30 else None  # single epochs stay visible as points
    fig, (ax_loss, ax_dice, ax_lr) = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True)

    for key, style in (("loss", "-"), ("val_loss", "--")):
        if history.get(key):
            ax_loss.plot(epochs, np.asarray(history[key], dtype=float)[:n], style, marker=marker, ms=3, label=key)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"Training curves ({n} epoch{'s' if n != 1 else ''})")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.grid(alpha=0.3)

    labels = dice_label_ids(history)
    for k in labels:
        values = np.asarray(history[f"val_dice_label_{k}"], dtype=float)[:n]
        ax_dice.plot(epochs, values, marker=marker, ms=3, color=_label_color(k), label=_label_text(k, label_names))
    if history.get("val_mean_dice"):
        values = np.asarray(history["val_mean_dice"], dtype=float)[:n]
        ax_dice.plot(epochs, values, "k--", marker=marker, ms=3, label="mean over labels")
    if labels or history.get("val_mean_dice"):
        ax_dice.legend(loc="lower right", fontsize=8)
    else:
        ax_dice.text(0.5, 0.5, "no validation Dice logged", ha="center", va="center", transform=ax_dice.transAxes)
    ax_dice.set_ylim(0, 1.02)
    ax_dice.set_ylabel("Dice")
    ax_dice.set_title(DICE_NETWORK_GRID, fontsize=9)
    ax_dice.grid(alpha=0.3)

    lr = np.asarray(history.get("lr") or [], dtype=float)[:n]
    if lr.size:
        ax_lr.plot(epochs[: lr.size], lr, marker=marker, ms=3, color="tab:purple")
        positive = lr[np.isfinite(lr) & (lr > 0)]
        if positive.size and positive.max() > 10 * positive.min():
            ax_lr.set_yscale("log")
    else:
        ax_lr.text(0.5, 0.5, "learning rate not logged", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # shared by the three panels
    ax_lr.set_xlim(0.5, float(np.max(epochs)) + 0.5)  # whole epochs, a single one included
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Per-case Dice
# --------------------------------------------------------------------------------------------


def per_case_dice(records: Sequence[dict], labels: Sequence[int]) -> Dict[int, List[float]]:
    """{label: finite per-case Dice values} from the report's case records (a case where the label
    is absent from truth and prediction has no Dice and is left out)."""
    out: Dict[int, List[float]] = {int(k): [] for k in labels}
    for record in records:
        for k in out:
            value = record["labels"].get(str(k), {}).get("dice")
            if value is not None and math.isfinite(value):
                out[k].append(float(value))
    return out


def case_mean_dice(record: dict, labels: Sequence[int]) -> float:
    """Mean over labels of one case record's finite Dice values; NaN when it has none."""
    values = per_case_dice([record], labels)
    finite = [v for vs in values.values() for v in vs]
    return float(np.mean(finite)) if finite else float("nan")


def plot_dice_per_case(
    records: Sequence[dict],
    labels: Sequence[int],
    path: str,
    label_names: Optional[Mapping[int, str]] = None,
    seed: int = 0,
) -> None:
    """Box plot with every case as a point (jittered sideways), one column per label, n under each
    label; Dice is DICE_NATIVE_GRID.

    Args:
      records: the report's per-case records ({'case_id', 'labels': {'<k>': {'dice': ...}}}).
      labels: foreground label ids; path: PNG file to write; seed: jitter only.
    Raises:
      ValueError: no records.
    """
    if not records:
        raise ValueError("no evaluated cases to plot")
    plt = _pyplot()
    values = per_case_dice(records, labels)
    ids = [int(k) for k in labels]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(ids) + 2.5), 4.6))
    rng = np.random.default_rng(seed)
    non_empty = [i for i, k in enumerate(ids) if values[k]]
    if non_empty:
        ax.boxplot(
            [values[ids[i]] for i in non_empty],
            positions=[i + 1 for i in non_empty],
            widths=0.5,
            showfliers=False,  # every case is drawn as a point already
            medianprops={"color": "black"},
        )
    for i, k in enumerate(ids):
        v = np.asarray(values[k])
        ax.scatter(
            i + 1 + rng.uniform(-0.15, 0.15, v.size), v, s=24, alpha=0.8, color=_label_color(k), edgecolor="none"
        )
    ax.set_xticks(range(1, len(ids) + 1))
    ax.set_xticklabels([f"{_label_text(k, label_names)}\nn={len(values[k])}" for k in ids])
    ax.set_xlim(0.4, len(ids) + 0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice per case")
    ax.set_title(f"Dice per case and label ({len(records)} eval cases)\n{DICE_NATIVE_GRID}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_dice_per_slice(
    slices: Mapping[str, dict],
    labels: Sequence[int],
    path: str,
    label_names: Optional[Mapping[int, str]] = None,
) -> None:
    """Grouped bars: per label, the mean Dice over the cases of each slice (DICE_NATIVE_GRID only;
    the TFMA network-grid Dice that the blessing gates is in summary.md), slices named with their
    number of cases. A slice where the label has no Dice (absent everywhere) leaves a gap.

    Args:
      slices: {slice name: {'cases': n, 'labels': {'<k>': {'dice': {'mean': float | None}}}}},
        the report's surface.slices ('overall' first, then 'modality=CT', ...).
      labels: foreground label ids; path: PNG file to write.
    Raises:
      ValueError: no slices.
    """
    if not slices:
        raise ValueError("no slices to plot")
    plt = _pyplot()
    names = list(slices)
    ids = [int(k) for k in labels]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.0 + 0.35 * len(ids) * len(names)) + 3.2, 4.0))
    width = 0.8 / len(names)
    x = np.arange(len(ids))
    colors = _slice_colors(len(names))
    for i, name in enumerate(names):
        means = [(slices[name]["labels"].get(str(k), {}).get("dice") or {}).get("mean") for k in ids]
        values = [np.nan if v is None else float(v) for v in means]
        bars = ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            values,
            width,
            color=colors[i],
            label=f"{name} (n={slices[name]['cases']})",
        )
        if len(ids) * len(names) <= 24:  # values readable on the bars while there are few
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels([_label_text(k, label_names) for k in ids])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mean Dice over the slice's cases")
    ax.set_title(f"Dice per label and slice (eval split)\n{DICE_NATIVE_GRID}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="slice", title_fontsize=7
    )
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _slice_colors(n: int) -> list:
    """Greys-to-blues for slices: kept apart from the label colours (tab10) of the other plots."""
    from matplotlib import colormaps

    if n == 1:
        return ["0.35"]
    return ["0.35"] + [colormaps["viridis"](v) for v in np.linspace(0.15, 0.85, n - 1)]


# --------------------------------------------------------------------------------------------
# Best and worst case overlays
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CaseVolumes:
    """One eval case for an overlay: image, truth and prediction (X, Y, Z) on the case's canonical
    (RAS+) grid, spacing (3,) mm, and its mean DICE_NATIVE_GRID over labels."""

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    spacing: Tuple[float, float, float]
    mean_dice: float


def structure_box(truth: np.ndarray, prediction: np.ndarray, margin: float = 0.5, min_margin: int = 8):
    """(slice per axis, centre (3,) voxel indices) of the foreground of truth and prediction (X, Y,
    Z), grown by `margin` times its extent (at least `min_margin` voxels) and clipped to the
    volume. The centre's index on each axis is the slice holding the most truth foreground (the
    prediction's when truth is empty; the middle one of equals): unlike the centre of mass, it
    lies in a structure even when several are apart. An empty case gives the whole volume and
    its middle."""
    shape = np.asarray(truth.shape)
    union = (truth > 0) | (prediction > 0)
    if not union.any():
        return tuple(slice(0, int(s)) for s in shape), tuple(int(s) // 2 for s in shape)
    nonzero = np.argwhere(union)
    low, high = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    grow = np.maximum(min_margin, np.ceil(margin * (high - low))).astype(int)
    low, high = np.maximum(0, low - grow), np.minimum(shape, high + grow)
    foreground = (truth > 0) if (truth > 0).any() else union
    densest_slices = []
    for axis in range(3):
        counts = foreground.sum(axis=tuple(a for a in range(3) if a != axis))
        densest = np.flatnonzero(counts == counts.max())
        densest_slices.append(int(densest[len(densest) // 2]))
    centre = tuple(densest_slices)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high)), centre


# (title, fixed axis, (row axis, column axis)) of the three orthogonal views of a RAS+ volume.
_VIEWS = (("sagittal", 0, (2, 1)), ("coronal", 1, (2, 0)), ("axial", 2, (1, 0)))


def _view(volume: np.ndarray, axis: int, index: int, rows_cols: Tuple[int, int]) -> np.ndarray:
    plane = np.take(volume, index, axis=axis)
    remaining = [a for a in range(3) if a != axis]
    return np.transpose(plane, [remaining.index(rows_cols[0]), remaining.index(rows_cols[1])])


def plot_case_overlays(
    cases: Sequence[Tuple[str, CaseVolumes]],
    labels: Sequence[int],
    path: str,
    label_names: Optional[Mapping[int, str]] = None,
) -> None:
    """One row per case (e.g. ('worst', case), ('best', case)): sagittal, coronal and axial slices
    through the structure's centre, cropped around it, with truth (solid) and prediction (dashed)
    contours per label; pixels drawn with the voxel spacing's aspect ratio, superior and anterior
    up, patient right on the left (radiological).

    Raises:
      ValueError: no cases, or a case whose image, truth and prediction shapes differ.
    """
    if not cases:
        raise ValueError("no cases to draw")
    for _, case in cases:
        if not (case.image.shape == case.truth.shape == case.prediction.shape) or case.image.ndim != 3:
            raise ValueError(
                f"case {case.case_id}: image {case.image.shape}, truth {case.truth.shape} and prediction "
                f"{case.prediction.shape} must be the same 3D shape"
            )
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(len(cases), 3, figsize=(10.5, 4.0 * len(cases) + 0.9), squeeze=False)
    for row, (role, case) in enumerate(cases):
        box, centre = structure_box(case.truth, case.prediction)
        image, truth, prediction = (np.asarray(v)[box] for v in (case.image, case.truth, case.prediction))
        centre = [c - b.start for c, b in zip(centre, box)]
        finite = image[np.isfinite(image)].astype(np.float64)
        low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
        for col, (title, axis, (r, c)) in enumerate(_VIEWS):
            ax = axes[row, col]
            aspect = float(case.spacing[r]) / float(case.spacing[c])
            ax.imshow(
                _view(image, axis, centre[axis], (r, c)),
                cmap="gray",
                vmin=low,
                vmax=high if high > low else low + 1,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            for k in labels:
                for mask, style in ((truth, "solid"), (prediction, "dashed")):
                    plane = _view(mask, axis, centre[axis], (r, c)) == int(k)
                    if plane.any() and not plane.all():
                        ax.contour(plane, levels=[0.5], colors=[_label_color(k)], linestyles=style, linewidths=1.4)
            if c == 0:  # RAS+ x grows toward the patient's right, which radiologists see on the left
                ax.invert_xaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title} slice {box[axis].start + centre[axis]}", fontsize=9)
        axes[row, 0].set_ylabel(
            f"{role}: {case.case_id}\nmean Dice {case.mean_dice:.3f}" if math.isfinite(case.mean_dice) else role,
            fontsize=9,
        )
    handles = [
        Line2D([], [], color="black", linestyle="solid", label="truth"),
        Line2D([], [], color="black", linestyle="dashed", label="prediction"),
    ]
    handles += [Line2D([], [], color=_label_color(k), label=_label_text(k, label_names)) for k in labels]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"Worst and best eval cases by mean {DICE_NATIVE_GRID}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=2.0)  # row titles clear of the row above
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
