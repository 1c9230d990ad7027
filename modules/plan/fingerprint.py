"""Dataset fingerprint: what the planner needs to know about the training cases.

As nnU-Net's fingerprint extraction: per case the voxel spacing, grid shape, label volumes and
bounding boxes, and a sample of foreground intensities; combined over cases into per-axis
spacing/shape statistics, per-label size statistics and pooled foreground intensity
percentiles. The planner derives the target spacing, patch size and intensity normalisation
from the combined fingerprint, so its format (see `combine`) is a contract.

Numpy and the standard library only: an ingested case arrives as an already-parsed
tf.train.Example (anything with ``.features.feature[name].bytes_list/int64_list/float_list``),
and TensorFlow is imported only to write to a remote (``scheme://``) directory.

Conventions: volumes are (X, Y, Z) arrays in canonical RAS+ voxel order; spacing is (3,) mm per
array axis; volumes are mm^3 in the JSON and ml in the markdown summary.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Iterable, List, Optional

import numpy as np

from modules import features

FINGERPRINT_VERSION = 1
JSON_NAME = "fingerprint.json"
MARKDOWN_NAME = "fingerprint.md"
# Little-endian voxel dtypes an ingested case may carry (features.IMAGE_DTYPE).
VOXEL_DTYPES = {"uint8": np.dtype("<u1"), "int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
DEFAULT_MAX_SAMPLES = 10000
# Median spacing ratio (coarsest / finest axis) above which the summary flags the dataset as
# anisotropic: beyond ~3 nnU-Net stops treating the slice axis like the in-plane axes.
ANISOTROPY_RATIO = 3.0


def _has_values(feature_map, name: str, kind: str) -> bool:
    # Indexing a protobuf map with a missing key inserts an empty entry, so test membership first.
    return name in feature_map and len(getattr(feature_map[name], kind).value) > 0


def decode_case(example):
    """Voxels and geometry of one ingested case (the inverse of features.encode_case).

    Args:
      example: a parsed tf.train.Example (or any object with the same
        ``.features.feature[name].{bytes,int64,float}_list.value`` structure) carrying the
        features named in modules.features: IMAGE_RAW, IMAGE_DTYPE, IMAGE_SHAPE, SPACING,
        MODALITY, CASE_ID and optionally LABEL_RAW.
    Returns:
      (image, label, spacing, modality, case_key):
        image: (X, Y, Z) float32 voxel values (exact for uint8/int16 sources); (X, Y, Z, C) for a
          case of C > 1 channels (IMAGE_CHANNELS).
        label: (X, Y, Z) uint8 label map, or None when the example has no label bytes (an empty
          LABEL_RAW also means "no label", as in a serving request).
        spacing: (3,) float64 voxel size in mm.
        modality: e.g. 'CT', 'MR'; one per channel joined by ',' ('MR,MR').
        case_key: the CASE_ID string.
    Raises:
      ValueError naming the case when a required feature is missing, the dtype is not one of
      VOXEL_DTYPES, the shape or spacing is not 3 positive values, or the image/label byte count
      disagrees with the shape.
    """
    f = example.features.feature
    case_key = (
        f[features.CASE_ID].bytes_list.value[0].decode("utf-8")
        if _has_values(f, features.CASE_ID, "bytes_list")
        else "<no case_id>"
    )
    required = (
        (features.IMAGE_RAW, "bytes_list"),
        (features.IMAGE_DTYPE, "bytes_list"),
        (features.IMAGE_SHAPE, "int64_list"),
        (features.SPACING, "float_list"),
        (features.MODALITY, "bytes_list"),
        (features.CASE_ID, "bytes_list"),
    )
    missing = [name for name, kind in required if not _has_values(f, name, kind)]
    if missing:
        raise ValueError(f"case {case_key}: missing feature(s) {missing}")

    dtype_name = f[features.IMAGE_DTYPE].bytes_list.value[0].decode("utf-8")
    if dtype_name not in VOXEL_DTYPES:
        raise ValueError(
            f"case {case_key}: unsupported image_dtype {dtype_name!r}, expected one of {sorted(VOXEL_DTYPES)}"
        )
    shape = tuple(int(v) for v in f[features.IMAGE_SHAPE].int64_list.value)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"case {case_key}: image_shape {shape} is not 3 positive sizes")
    spacing = np.array(f[features.SPACING].float_list.value, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"case {case_key}: spacing {spacing.tolist()} is not 3 positive mm values")

    dtype = VOXEL_DTYPES[dtype_name]
    num_voxels = int(np.prod(shape))
    channels = (
        int(f[features.IMAGE_CHANNELS].int64_list.value[0])
        if _has_values(f, features.IMAGE_CHANNELS, "int64_list")
        else 1
    )
    if channels < 1:
        raise ValueError(f"case {case_key}: image_channels {channels} is not a positive count")
    raw = f[features.IMAGE_RAW].bytes_list.value[0]
    if len(raw) != num_voxels * channels * dtype.itemsize:
        raise ValueError(
            f"case {case_key}: image_raw has {len(raw)} bytes but shape {shape} x {channels} channel(s) of "
            f"{dtype_name} needs {num_voxels * channels * dtype.itemsize}"
        )
    image = np.frombuffer(raw, dtype=dtype).reshape(shape + ((channels,) if channels > 1 else ())).astype(np.float32)

    label = None
    if _has_values(f, features.LABEL_RAW, "bytes_list") and f[features.LABEL_RAW].bytes_list.value[0]:
        label_raw = f[features.LABEL_RAW].bytes_list.value[0]
        if len(label_raw) != num_voxels:
            raise ValueError(
                f"case {case_key}: label_raw has {len(label_raw)} bytes but shape {shape} of uint8 needs {num_voxels}"
            )
        label = np.frombuffer(label_raw, dtype=np.uint8).reshape(shape).copy()
    modality = f[features.MODALITY].bytes_list.value[0].decode("utf-8")
    return image, label, spacing, modality, case_key


def _label_as_uint(label: np.ndarray, shape: tuple, case_key: str) -> np.ndarray:
    """The label map as a non-negative integer array, or ValueError naming the case."""
    label = np.asarray(label)
    if label.shape != shape:
        raise ValueError(f"case {case_key}: label shape {label.shape} != image shape {shape}")
    if label.dtype == bool:
        return label.astype(np.uint8)
    if np.issubdtype(label.dtype, np.floating):
        # NIfTI label maps are often stored as float; accept them when every value is integral.
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise ValueError(f"case {case_key}: label has non-integer values")
        label = label.astype(np.int64)
    elif not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"case {case_key}: label dtype {label.dtype} is not an integer type")
    if label.size and label.min() < 0:
        raise ValueError(f"case {case_key}: label has negative values")
    return label


def _presence_along_axes(label: np.ndarray, num_values: int) -> list:
    """For each axis a, a (label.shape[a], num_values) bool array: value v occurs in slice i.

    One bincount per slice keeps the cost at three passes over the volume whatever the number
    of labels (a mask per label would cost a pass per label).
    """
    presence = []
    for axis in range(3):
        per_slice = np.zeros((label.shape[axis], num_values), dtype=bool)
        for index in range(label.shape[axis]):
            values = np.take(label, index, axis=axis).ravel()
            per_slice[index] = np.bincount(values, minlength=num_values) > 0
        presence.append(per_slice)
    return presence


def _extent_voxels(present: np.ndarray) -> int:
    """Number of slices from the first to the last True in a 1D bool array (0 if none)."""
    indices = np.flatnonzero(present)
    return int(indices[-1] - indices[0] + 1) if indices.size else 0


def strided_sample(values: np.ndarray, max_samples: int) -> np.ndarray:
    """At most `max_samples` of a 1D array by a regular stride ceil(n / max_samples) from the
    first element: the same deterministic rule as volume_ops.foreground_sample in Transform."""
    stride = max(-(-values.size // max_samples), 1)
    return values[::stride]


def case_fingerprint(
    image: np.ndarray,
    label: Optional[np.ndarray],
    spacing,
    modality: str,
    case_key: str,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> dict:
    """Fingerprint of one case.

    Args:
      image: (X, Y, Z) voxel values (any real dtype), canonical RAS+ order; (X, Y, Z, C) for a
        case of C channels.
      label: (X, Y, Z) non-negative integer label map on the same grid (integral floats are
        accepted), or None for an image-only case.
      spacing: (3,) voxel size in mm along X, Y, Z.
      modality: 'CT', 'MR', ...; one per channel joined by ',' for several channels.
      case_key: the case identifier.
      max_samples: cap on the number of intensity samples kept (>= 1).
    Returns:
      A JSON-ready dict: case, spacing [mm]*3, shape [int]*3, modality, integer_valued (every
      voxel value is a whole number), labels (sorted values present, including 0; [] without a
      label map), label_voxels {"v": count} and label_bbox_mm {"v": [x, y, z]} (bounding-box size
      in mm, (last - first + 1) voxels * spacing) for each foreground value v, foreground_bbox_mm
      (the same for all foreground voxels together; [0, 0, 0] if none), foreground_sample (at
      most max_samples image values at label > 0 in C order, by a regular stride; the whole
      image when there is no label map or no foreground). integer_valued and foreground_sample
      describe channel 0; a case of C > 1 channels adds extra_channels: [{"modality",
      "integer_valued", "foreground_sample"}] for channels 1..C-1 (the same foreground voxels).
    Raises:
      ValueError naming the case when the image is not a non-empty 3D array of finite values,
      the spacing is not 3 positive values, the label does not match the image or is not a
      non-negative integer map, or max_samples < 1.
    """
    image = np.asarray(image)
    if image.ndim not in (3, 4) or image.size == 0:
        raise ValueError(
            f"case {case_key}: image must be a non-empty (X, Y, Z) or (X, Y, Z, C) array, got shape {image.shape}"
        )
    channels = [image] if image.ndim == 3 else [image[..., c] for c in range(image.shape[3])]
    try:
        modalities = features.channel_modalities(modality, len(channels))
    except ValueError as exc:
        raise ValueError(f"case {case_key}: {exc}") from None
    image = channels[0]
    if not all(np.all(np.isfinite(c)) for c in channels):
        raise ValueError(f"case {case_key}: image contains NaN or Inf voxels")
    spacing = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"case {case_key}: spacing {spacing.tolist()} is not 3 positive mm values")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")

    labels, label_voxels, label_bbox_mm = [], {}, {}
    foreground_bbox_mm = [0.0, 0.0, 0.0]
    foreground = None
    if label is not None:
        label = _label_as_uint(label, image.shape, case_key)
        counts = np.bincount(label.ravel())
        labels = [int(v) for v in np.flatnonzero(counts)]
        presence = _presence_along_axes(label, counts.size)
        for value in labels:
            if value == 0:
                continue
            label_voxels[str(value)] = int(counts[value])
            label_bbox_mm[str(value)] = [_extent_voxels(presence[a][:, value]) * float(spacing[a]) for a in range(3)]
        if counts.size > 1:
            foreground_bbox_mm = [_extent_voxels(presence[a][:, 1:].any(axis=1)) * float(spacing[a]) for a in range(3)]
        if counts[1:].sum() > 0:
            foreground = label.ravel() > 0
    described = [_channel_fingerprint(c, foreground, max_samples) for c in channels]
    for entry, name in zip(described, modalities):
        entry["modality"] = name
    out = {
        "case": str(case_key),
        "spacing": [float(s) for s in spacing],
        "shape": [int(n) for n in image.shape],
        "modality": str(modality),
        "integer_valued": described[0]["integer_valued"],
        "labels": labels,
        "label_voxels": label_voxels,
        "label_bbox_mm": label_bbox_mm,
        "foreground_bbox_mm": foreground_bbox_mm,
        "foreground_sample": described[0]["foreground_sample"],
    }
    if len(described) > 1:
        out["extra_channels"] = described[1:]
    return out


def _channel_fingerprint(image: np.ndarray, foreground: Optional[np.ndarray], max_samples: int) -> dict:
    """{"integer_valued", "foreground_sample"} of one (X, Y, Z) channel; foreground: flat bool
    mask of label > 0, or None for the whole image."""
    integer_valued = bool(np.issubdtype(image.dtype, np.integer) or np.all(image == np.round(image)))
    values = image.ravel() if foreground is None else image.ravel()[foreground]
    sample = strided_sample(values, max_samples)
    return {"integer_valued": integer_valued, "foreground_sample": [float(v) for v in sample]}


def case_fingerprint_from_example(example, max_samples: int = DEFAULT_MAX_SAMPLES) -> dict:
    """case_fingerprint of a parsed tf.train.Example (see decode_case; same Raises)."""
    image, label, spacing, modality, case_key = decode_case(example)
    return case_fingerprint(image, label, spacing, modality, case_key, max_samples)


def _per_axis(rows: np.ndarray, q: float) -> list:
    """Per-axis percentile q of (N, 3) rows, numpy's linear interpolation, as floats."""
    return [float(v) for v in np.percentile(rows, q, axis=0)]


def _most_common(counts: collections.Counter) -> str:
    # Ties go to the alphabetically first modality so the result does not depend on case order.
    return min(counts, key=lambda name: (-counts[name], name))


def combine(case_fingerprints: Iterable[dict]) -> dict:
    """The dataset fingerprint from per-case fingerprints (case_fingerprint outputs).

    Returns (all values plain Python ints/floats/strings/lists/dicts, json.dumps-able):
      {"version": 1, "num_cases": N,
       "channels": [{"index": c, "modality": most common (ties: alphabetical first),
                     "modality_counts": {modality: n}, "integer_valued": every case integral,
                     "foreground_intensity": {"mean", "std", "min", "max", "p00_5", "p50", "p99_5"}
                       over the pooled foreground samples (std with ddof=0)}] per channel,
       "spacing": {"median", "p10", "p90", "min", "max"}: per axis over cases, mm,
       "shape": {"median", "p90" (floats), "min", "max" (ints)}: per axis over cases, voxels,
       "extent_mm": {"median", "max"}: per axis of shape * spacing over cases,
       "labels": sorted union of label values (including 0),
       "label_stats": {"v": {"cases", "voxels_median", "volume_mm3_median", "volume_mm3_min",
                             "bbox_mm_median"}} per foreground value, over the cases containing it,
       "foreground_bbox_mm_max": per axis max over cases,
       "cases": [{"case", "spacing", "shape", "modality", "label_voxels"}] sorted by case}
      Percentiles use numpy's default linear interpolation.
    Raises:
      ValueError when there are no cases, a case key repeats, cases have different channel
      counts, or no intensity sample exists.
    """
    cases = sorted(case_fingerprints, key=lambda c: c["case"])
    if not cases:
        raise ValueError("cannot fingerprint a dataset of zero cases")
    keys = [c["case"] for c in cases]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"case keys appear more than once: {repeated}")

    spacing = np.array([c["spacing"] for c in cases], dtype=np.float64)  # (N, 3) mm
    shape = np.array([c["shape"] for c in cases], dtype=np.int64)  # (N, 3) voxels
    extent = shape * spacing
    voxel_volume = np.prod(spacing, axis=1)  # (N,) mm^3

    counts = collections.Counter(1 + len(c.get("extra_channels", [])) for c in cases)
    if len(counts) > 1:
        raise ValueError(
            "cases have different channel counts ("
            + ", ".join(f"{n} case(s) with {k}" for k, n in sorted(counts.items()))
            + "): every case needs the same channels"
        )
    channels = [_combine_channel(cases, index) for index in range(next(iter(counts)))]

    label_values = sorted({int(v) for c in cases for v in c["labels"]})
    label_stats = {}
    for value in label_values:
        if value == 0:
            continue
        key = str(value)
        having = [i for i, c in enumerate(cases) if c["label_voxels"].get(key, 0) > 0]
        voxels = np.array([cases[i]["label_voxels"][key] for i in having], dtype=np.float64)
        volumes = voxels * voxel_volume[having]
        bboxes = np.array([cases[i]["label_bbox_mm"][key] for i in having], dtype=np.float64)
        label_stats[key] = {
            "cases": len(having),
            "voxels_median": float(np.median(voxels)),
            "volume_mm3_median": float(np.median(volumes)),
            "volume_mm3_min": float(np.min(volumes)),
            "bbox_mm_median": _per_axis(bboxes, 50.0),
        }

    return {
        "version": FINGERPRINT_VERSION,
        "num_cases": len(cases),
        "channels": channels,
        "spacing": {
            "median": _per_axis(spacing, 50.0),
            "p10": _per_axis(spacing, 10.0),
            "p90": _per_axis(spacing, 90.0),
            "min": [float(v) for v in spacing.min(axis=0)],
            "max": [float(v) for v in spacing.max(axis=0)],
        },
        "shape": {
            "median": _per_axis(shape, 50.0),
            "p90": _per_axis(shape, 90.0),
            "min": [int(v) for v in shape.min(axis=0)],
            "max": [int(v) for v in shape.max(axis=0)],
        },
        "extent_mm": {"median": _per_axis(extent, 50.0), "max": [float(v) for v in extent.max(axis=0)]},
        "labels": label_values,
        "label_stats": label_stats,
        "foreground_bbox_mm_max": [
            float(v) for v in np.max(np.array([c["foreground_bbox_mm"] for c in cases], dtype=np.float64), axis=0)
        ],
        "cases": [
            {
                "case": c["case"],
                "spacing": [float(s) for s in c["spacing"]],
                "shape": [int(n) for n in c["shape"]],
                "modality": c["modality"],
                "label_voxels": {k: int(n) for k, n in c["label_voxels"].items()},
            }
            for c in cases
        ],
    }


def _combine_channel(cases: List[dict], index: int) -> dict:
    """The dataset-level description of channel `index` (see combine). Raises ValueError when no
    case has an intensity sample of it."""
    described = [c if index == 0 else c["extra_channels"][index - 1] for c in cases]
    samples = np.concatenate([np.asarray(c["foreground_sample"], dtype=np.float64) for c in described])
    if samples.size == 0:
        raise ValueError("no foreground intensity samples in any case")
    p00_5, p50, p99_5 = np.percentile(samples, [0.5, 50.0, 99.5])
    channel_count = 1 + len(cases[0].get("extra_channels", []))
    names = [features.channel_modalities(c["modality"], channel_count)[index] for c in cases]
    modality_counts = collections.Counter(names)
    return {
        "index": index,
        "modality": _most_common(modality_counts),
        "modality_counts": {name: int(modality_counts[name]) for name in sorted(modality_counts)},
        "integer_valued": all(bool(c["integer_valued"]) for c in described),
        "foreground_intensity": {
            "mean": float(samples.mean()),
            "std": float(samples.std()),
            "min": float(samples.min()),
            "max": float(samples.max()),
            "p00_5": float(p00_5),
            "p50": float(p50),
            "p99_5": float(p99_5),
        },
    }


def _fmt(values, digits: int = 2) -> str:
    return " x ".join(f"{v:.{digits}f}" for v in values)


def to_markdown(fingerprint: dict) -> str:
    """A short human-readable summary of a combined fingerprint (markdown text).

    Cases and modalities, a per-axis spacing table (median/p10/p90/min/max), grid shape, field
    of view, foreground intensities, per-label cases / median volume (ml) / median bounding box,
    and a note when the median spacing is anisotropic (coarsest / finest > ANISOTROPY_RATIO).
    """
    channel = fingerprint["channels"][0]
    spacing = fingerprint["spacing"]
    shape = fingerprint["shape"]
    intensity = channel["foreground_intensity"]
    modalities = ", ".join(f"{name} ({n})" for name, n in channel["modality_counts"].items())
    if len(fingerprint["channels"]) > 1:
        modalities = "; ".join(
            f"channel {c['index']}: " + ", ".join(f"{name} ({n})" for name, n in c["modality_counts"].items())
            for c in fingerprint["channels"]
        )
    lines = [
        "# Dataset fingerprint",
        "",
        f"- Cases: {fingerprint['num_cases']}",
        f"- Modalities: {modalities}; integer-valued voxels: {'yes' if channel['integer_valued'] else 'no'}",
        f"- Labels: {', '.join(str(v) for v in fingerprint['labels']) or 'none'}",
        "",
        "## Voxel spacing (mm)",
        "",
        "| axis | median | p10 | p90 | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for axis, name in enumerate("XYZ"):
        lines.append(
            f"| {name} | "
            + " | ".join(f"{spacing[k][axis]:.3g}" for k in ("median", "p10", "p90", "min", "max"))
            + " |"
        )
    median_spacing = spacing["median"]
    ratio = max(median_spacing) / min(median_spacing)
    if ratio > ANISOTROPY_RATIO:
        coarse = "XYZ"[int(np.argmax(median_spacing))]
        lines += [
            "",
            f"**Anisotropic**: the median spacing along {coarse} is {ratio:.1f} times the "
            "finest axis; expect thick-slice handling (e.g. in-plane-only pooling early).",
        ]
    lines += [
        "",
        "## Grid and field of view",
        "",
        f"- Shape (voxels): median {_fmt(shape['median'], 1)}, min {_fmt(shape['min'], 0)}, "
        f"max {_fmt(shape['max'], 0)}",
        f"- Field of view (mm): median {_fmt(fingerprint['extent_mm']['median'], 1)}, "
        f"max {_fmt(fingerprint['extent_mm']['max'], 1)}",
        f"- Largest foreground bounding box (mm): {_fmt(fingerprint['foreground_bbox_mm_max'], 1)}",
        "",
        "## Foreground intensity",
        "",
        f"mean {intensity['mean']:.4g}, std {intensity['std']:.4g}, range [{intensity['min']:.4g}, "
        f"{intensity['max']:.4g}], percentiles 0.5/50/99.5: {intensity['p00_5']:.4g} / "
        f"{intensity['p50']:.4g} / {intensity['p99_5']:.4g}",
    ]
    if fingerprint["label_stats"]:
        lines += [
            "",
            "## Labels",
            "",
            "| label | cases | median volume (ml) | min volume (ml) | median bbox (mm) |",
            "|---|---|---|---|---|",
        ]
        for value, stats in fingerprint["label_stats"].items():
            lines.append(
                f"| {value} | {stats['cases']} | {stats['volume_mm3_median'] / 1000.0:.3g} | "
                f"{stats['volume_mm3_min'] / 1000.0:.3g} | {_fmt(stats['bbox_mm_median'], 1)} |"
            )
    return "\n".join(lines) + "\n"


def write(fingerprint: dict, directory: str) -> dict:
    """Writes fingerprint.json and fingerprint.md into `directory` (created if needed).

    Local paths use plain files; a URI (anything containing '://', e.g. gs://) goes through
    tf.io.gfile, with TensorFlow imported only then.
    Returns:
      {"json": path of fingerprint.json, "markdown": path of fingerprint.md}.
    """
    texts = {
        "json": (JSON_NAME, json.dumps(fingerprint, indent=1) + "\n"),
        "markdown": (MARKDOWN_NAME, to_markdown(fingerprint)),
    }
    paths = {}
    if "://" in directory:
        import tensorflow as tf

        tf.io.gfile.makedirs(directory)
        for kind, (name, text) in texts.items():
            paths[kind] = directory.rstrip("/") + "/" + name
            with tf.io.gfile.GFile(paths[kind], "w") as out:
                out.write(text)
        return paths
    os.makedirs(directory, exist_ok=True)
    for kind, (name, text) in texts.items():
        paths[kind] = os.path.join(directory, name)
        with open(paths[kind], "w", encoding="utf-8") as out:
            out.write(text)
    return paths
