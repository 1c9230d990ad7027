"""What each ingested case looks like, for inventory.json: geometry, intensities and label volumes
(no patient data: no names, IDs, dates or voxels), plus the dataset at a glance from those rows: a
short text table and a PNG. Pure numpy + matplotlib (Agg); no TFX, no TensorFlow.

A row of inventory.json for an ingested case carries, besides case_id/inputs/status/reason:
  modality      'CT', 'MR', ... ('' when unknown)
  spacing_mm    [x, y, z] voxel size in mm (canonical RAS+ axes)
  shape         [X, Y, Z] voxels (the channel axis of a multi-channel volume is not included)
  channels      1 for a 3D volume, C for an (X, Y, Z, C) channels-last one
  intensity     one {p1, p50, p99, mean, std} per channel, over the whole image
  foreground_intensity  the same over the voxels whose label is not 0 (absent without label
                or when the label is empty)
  labels        {"<k>": {"voxels": n, "ml": volume in millilitres}} for each label k > 0 present
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

INVENTORY_FILE = "inventory.json"  # at the root of the Examples artifact
INVENTORY_PNG = "inventory.png"
# Percentiles are taken on at most this many voxels (an evenly strided sample): a 512x512x300 CT
# has 78 M voxels, and sorting them all per case would cost seconds for no visible difference.
PERCENTILE_SAMPLE = 1_000_000
_PERCENTILES = (1, 50, 99)


def _sample(values: np.ndarray, limit: int = PERCENTILE_SAMPLE) -> np.ndarray:
    """Every k-th element of the 1D `values`, k chosen so at most `limit` remain."""
    step = max(1, math.ceil(values.size / limit))
    return values[::step]


def intensity_summary(values: np.ndarray) -> Dict[str, Optional[float]]:
    """{p1, p50, p99, mean, std} of the finite `values` (any shape), rounded to 4 significant digits;
    percentiles on an evenly strided sample (PERCENTILE_SAMPLE), mean and std on all of them.
    Every value is None when no value is finite."""
    flat = np.asarray(values).ravel()
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return {name: None for name in ("p1", "p50", "p99", "mean", "std")}
    p1, p50, p99 = np.percentile(_sample(flat).astype(np.float64), _PERCENTILES)
    mean, std = float(np.mean(flat, dtype=np.float64)), float(np.std(flat, dtype=np.float64))
    summary = {"p1": p1, "p50": p50, "p99": p99, "mean": mean, "std": std}
    return {name: float(f"{v:.4g}") for name, v in summary.items()}


def facts(volume, label: Optional[np.ndarray] = None) -> dict:
    """The inventory facts of one case (see the module docstring for the keys).

    Args:
      volume: a modules.io.volume.Volume: array (X, Y, Z) or channels-last (X, Y, Z, C), affine
        (4, 4) in mm, modality.
      label: (X, Y, Z) integer label map on the same grid, or None.
    Raises:
      ValueError: the array is not 3D or 4D, or the label's shape is not the image's (X, Y, Z).
    """
    array = np.asarray(volume.array)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected an (X, Y, Z) or (X, Y, Z, C) volume, got shape {array.shape}")
    channels = 1 if array.ndim == 3 else int(array.shape[-1])
    per_channel = array[..., None] if array.ndim == 3 else array
    spacing = [float(s) for s in np.asarray(volume.spacing, dtype=np.float64)]
    out: dict = {
        "modality": str(getattr(volume, "modality", "") or ""),
        "spacing_mm": [round(s, 4) for s in spacing],
        "shape": [int(s) for s in array.shape[:3]],
        "channels": channels,
        "intensity": [intensity_summary(per_channel[..., c]) for c in range(channels)],
    }
    if label is None:
        return out
    label = np.asarray(label)
    if label.shape != array.shape[:3]:
        raise ValueError(f"label shape {label.shape} differs from the image's {array.shape[:3]}")
    counts = np.bincount(label.ravel().astype(np.int64))
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> ml
    out["labels"] = {
        str(k): {"voxels": int(n), "ml": float(f"{n * voxel_ml:.4g}")} for k, n in enumerate(counts) if k > 0 and n > 0
    }
    foreground = label > 0
    if foreground.any():
        out["foreground_intensity"] = [intensity_summary(per_channel[..., c][foreground]) for c in range(channels)]
    return out


def read_label_names(examples_uri: str) -> Dict[int, str]:
    """{label value: name} from the inventory.json of an Examples artifact: the names the dataset
    declares (dataset.json), {} when it declares none or there is no inventory (older runs)."""
    import json

    import tensorflow as tf

    path = examples_uri.rstrip("/") + "/" + INVENTORY_FILE
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as fh:
        names = json.loads(fh.read()).get("label_names") or {}
    return {int(k): str(v) for k, v in names.items()}


# --------------------------------------------------------------------------------------------
# The dataset at a glance
# --------------------------------------------------------------------------------------------


def ingested(records: Sequence[dict]) -> List[dict]:
    """The records of ingested cases that carry facts (older inventories have none)."""
    return [r for r in records if r.get("status") == "ok" and "shape" in r]


def label_volumes(records: Sequence[dict]) -> Dict[int, List[float]]:
    """{label k: [ml of k in each case where it is present]} over the ingested records."""
    out: Dict[int, List[float]] = {}
    for r in ingested(records):
        for k, v in (r.get("labels") or {}).items():
            out.setdefault(int(k), []).append(float(v["ml"]))
    return dict(sorted(out.items()))


def _range(values: Sequence[Optional[float]], digits: int = 3) -> List[str]:
    """[min, median, max] of the values that are not None, with `digits` significant digits."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return ["n/a"] * 3
    # Large values in full ('26080', not '2.608e+04'): intensities of uint16 MR reach 1e5.
    return [f"{v:.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}" for v in (a.min(), np.median(a), a.max())]


def table(records: Sequence[dict], label_names: Optional[Mapping[int, str]] = None) -> List[str]:
    """The dataset at a glance: lines of a text table with min / median / max over the ingested
    cases of spacing, shape, channels, intensity percentiles (channel 0) and each label's volume
    (ml, with the number of cases holding it). [] when no ingested record carries facts."""
    rows = ingested(records)
    if not rows:
        return []
    modalities: Dict[str, int] = {}
    for r in rows:
        modalities[r.get("modality") or "unknown"] = modalities.get(r.get("modality") or "unknown", 0) + 1
    body: List[List[str]] = []
    for axis, name in enumerate("xyz"):
        body.append([f"spacing {name} (mm)", *_range([r["spacing_mm"][axis] for r in rows])])
    for axis, name in enumerate("XYZ"):
        body.append([f"size {name} (voxels)", *_range([r["shape"][axis] for r in rows], 6)])
    body.append(["channels", *_range([r["channels"] for r in rows])])
    for key in ("p1", "p50", "p99"):
        body.append([f"intensity {key}", *_range([r["intensity"][0][key] for r in rows], 4)])
    for k, volumes in label_volumes(records).items():
        label_name = (label_names or {}).get(k)
        body.append([f"label {k}{f' {label_name}' if label_name else ''} (ml, {len(volumes)} cases)", *_range(volumes)])
    header = ["", "min", "median", "max"]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])

    by_modality = ", ".join(f"{n} {m}" for m, n in sorted(modalities.items()))
    return [f"{len(rows)} ingested cases ({by_modality})", fmt(header), *(fmt(row) for row in body)]


def _counted_scatter(ax, x: np.ndarray, y: np.ndarray, color, label: str) -> None:
    """One marker per distinct (x, y), its area growing with the number of cases there and that
    number written beside it when above one: datasets often share one grid, and jitter would
    invent a spread the data does not have."""
    points, counts = np.unique(np.round(np.stack([x, y], axis=1), 3), axis=0, return_counts=True)
    ax.scatter(points[:, 0], points[:, 1], s=18 + 10 * np.sqrt(counts - 1), alpha=0.7, color=color, label=label)
    for (px, py), n in zip(points, counts):
        if n > 1:
            ax.annotate(f"{n}", (px, py), xytext=(4, 4), textcoords="offset points", fontsize=7, color=color)


def plot(records: Sequence[dict], path: str, label_names: Optional[Mapping[int, str]] = None) -> None:
    """Three panels into the PNG `path`: voxel spacing (in-plane vs slice, mm), volume size
    (in-plane vs slices, voxels), one point per ingested case, coloured by modality; and a
    histogram of each label's volume (ml) over the cases holding it.

    Raises:
      ValueError: no ingested record carries facts.
    """
    rows = ingested(records)
    if not rows:
        raise ValueError("no ingested case with facts to plot")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and pods
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    fig, (ax_sp, ax_size, ax_vol) = plt.subplots(1, 3, figsize=(13.5, 4.2))
    modalities = sorted({r.get("modality") or "unknown" for r in rows})
    for i, modality in enumerate(modalities):
        members = [r for r in rows if (r.get("modality") or "unknown") == modality]
        color = colormaps["tab10"](i % 10)
        sp = np.array([r["spacing_mm"] for r in members], dtype=np.float64)
        size = np.array([r["shape"] for r in members], dtype=np.float64)
        label = f"{modality} (n={len(members)})"
        _counted_scatter(ax_sp, np.sqrt(sp[:, 0] * sp[:, 1]), sp[:, 2], color, label)
        _counted_scatter(ax_size, np.sqrt(size[:, 0] * size[:, 1]), size[:, 2], color, label)
    ax_sp.set_xlabel("in-plane spacing (mm, geometric mean of x and y)")
    ax_sp.set_ylabel("slice spacing z (mm)")
    ax_sp.set_title("voxel spacing per case", fontsize=10)
    ax_size.set_xlabel("in-plane size (voxels, geometric mean of X and Y)")
    ax_size.set_ylabel("slices Z (voxels)")
    ax_size.set_title("volume size per case", fontsize=10)
    for ax in (ax_sp, ax_size):
        legend = ax.legend(fontsize=8)
        for handle in legend.legend_handles:  # one marker size in the legend, whatever the counts
            handle.set_sizes([20])
    for ax in (ax_sp, ax_size):
        ax.grid(alpha=0.3)
        ax.margins(0.15)

    volumes = label_volumes(records)
    if volumes:
        values = np.concatenate([np.asarray(v) for v in volumes.values()])
        positive = values[values > 0]
        log = positive.size > 0 and positive.max() > 20 * positive.min()  # organs and lesions together
        if log:
            bins = np.geomspace(positive.min() * 0.9, positive.max() * 1.1, 25)
            ax_vol.set_xscale("log")
        else:
            bins = np.linspace(values.min() * 0.9, values.max() * 1.1 + 1e-9, 25)
        for k, v in volumes.items():
            name = (label_names or {}).get(k)
            ax_vol.hist(
                v,
                bins=bins,
                alpha=0.6,
                color=colormaps["tab10"]((k - 1) % 10),
                label=f"label {k}{f' {name}' if name else ''} (n={len(v)})",
            )
        ax_vol.legend(fontsize=8)
        ax_vol.set_xlabel("label volume (ml)" + (", log scale" if log else ""))
        ax_vol.set_ylabel("cases")
        ax_vol.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole cases
    else:
        ax_vol.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax_vol.transAxes)
    ax_vol.set_title("label volume per case", fontsize=10)
    ax_vol.grid(alpha=0.3)
    fig.suptitle(f"Dataset inventory: {len(rows)} ingested of {len(records)} cases", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
