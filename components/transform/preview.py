"""Before/after-normalisation preview of a few cases: numpy + matplotlib, no TFX.

`collect_cases` runs a transform graph on a few raw examples (eager TF); `render` draws, per case,
the middle axial slice of the raw (canonical) image and of the network input, each with its
label overlaid, plus both intensity histograms, into one PNG.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import List, Optional

import numpy as np

from modules import features as es

PREVIEW_FILE = "preview.png"


@dataclasses.dataclass
class PreviewCase:
    """One case before and after Transform. Volumes are (X, Y, Z) in canonical RAS+ voxel order."""

    name: str
    modality: str
    raw_image: np.ndarray
    raw_label: Optional[np.ndarray]
    raw_spacing: np.ndarray  # (3,) mm
    image: np.ndarray  # network input
    label: Optional[np.ndarray]
    spacing: np.ndarray  # (3,) mm of the network grid


def read_examples(split_uri: str, limit: int = 64) -> List[bytes]:
    """Up to `limit` serialized tf.Examples from an Examples split folder (GZIP TFRecords)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(split_uri, "*")))
    out: List[bytes] = []
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            out.append(record.numpy())
            if len(out) >= limit:
                return out
    return out


def pick_by_modality(serialized: List[bytes], count: int) -> List[bytes]:
    """Up to `count` examples, taking modalities in turn so a mixed dataset shows each."""
    import tensorflow as tf

    groups: dict = {}
    for record in serialized:
        example = tf.train.Example.FromString(record)
        modality = example.features.feature[es.MODALITY].bytes_list.value[0].decode()
        groups.setdefault(modality, []).append(record)
    picked: List[bytes] = []
    while len(picked) < count and any(groups.values()):
        for modality in sorted(groups):
            if groups[modality] and len(picked) < count:
                picked.append(groups[modality].pop(0))
    return picked


def collect_cases(serialized: List[bytes], transform_graph_uri: str) -> List[PreviewCase]:
    """Runs the transform graph at `transform_graph_uri` on serialized raw examples."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from modules.transform.preprocessing import GRID_SHAPE, GRID_SPACING, IMAGE, LABEL

    if not serialized:
        return []
    output = tft.TFTransformOutput(transform_graph_uri)
    parsed = tf.io.parse_example(tf.constant(serialized), output.raw_feature_spec())
    transformed = output.transform_raw_features(parsed)
    cases = []
    for i, record in enumerate(serialized):
        raw = es.decode_case(tf.train.Example.FromString(record))
        shape = transformed[GRID_SHAPE][i].numpy()

        def volume(key, i=i, shape=shape):
            if key not in transformed:
                return None
            value = transformed[key][i]
            value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            value = value.reshape(tuple(shape) + (-1,)) if value.ndim == 1 else value  # whole_volume: flattened
            return value[..., 0] if value.ndim == 4 else value  # several channels: the first is shown

        cases.append(
            PreviewCase(
                name=raw["case_id"],
                modality=raw["modality"],
                raw_image=(raw["image"][..., 0] if raw["image"].ndim == 4 else raw["image"]).astype(np.float32),
                raw_label=raw["label"],
                raw_spacing=np.linalg.norm(raw["affine"][:3, :3], axis=0),
                image=volume(IMAGE),
                label=volume(LABEL),
                spacing=transformed[GRID_SPACING][i].numpy(),
            )
        )
    return cases


def _axial(volume: np.ndarray) -> np.ndarray:
    """Middle axial (X, Y) slice, transposed for imshow (rows = Y = anterior up with origin lower)."""
    return volume[:, :, volume.shape[2] // 2].T


def _show(ax, image, label, spacing, title):
    extent = (0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1])
    ax.imshow(_axial(image), cmap="gray", origin="lower", extent=extent, interpolation="nearest")
    if label is not None:
        overlay = np.ma.masked_equal(_axial(label).astype(np.int32), 0)
        ax.imshow(
            overlay,
            cmap="autumn",
            alpha=0.45,
            origin="lower",
            extent=extent,
            interpolation="nearest",
            vmin=1,
            vmax=max(int(np.max(label)), 1),
        )
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("R (mm)", fontsize=7)
    ax.set_ylabel("A (mm)", fontsize=7)
    ax.tick_params(labelsize=6)


def render(cases: List[PreviewCase], title: str = "") -> bytes:
    """PNG bytes: one row per case (raw slice, network-input slice, intensity histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.4 * rows), squeeze=False)
    for row, case in zip(axes, cases):
        shape_in = "x".join(map(str, case.raw_image.shape))
        shape_out = "x".join(map(str, case.image.shape))
        sp_in = "x".join(f"{s:.2f}" for s in case.raw_spacing)
        sp_out = "x".join(f"{s:.2f}" for s in case.spacing)
        _show(
            row[0],
            case.raw_image,
            case.raw_label,
            case.raw_spacing,
            f"{case.name} ({case.modality}) raw\n{shape_in} @ {sp_in} mm",
        )
        _show(row[1], case.image, case.label, case.spacing, f"network input\n{shape_out} @ {sp_out} mm")
        raw_values = case.raw_image.ravel()
        row[2].hist(raw_values, bins=80, color="tab:gray", alpha=0.8)
        row[2].set_xlabel("raw intensity", fontsize=7, color="tab:gray")
        row[2].tick_params(labelsize=6)
        twin = row[2].twiny()
        twin.hist(case.image.ravel(), bins=80, color="tab:blue", alpha=0.5)
        twin.set_xlabel("normalised intensity", fontsize=7, color="tab:blue")
        twin.tick_params(labelsize=6)
        row[2].set_yscale("log")
        row[2].set_title(
            f"raw [{raw_values.min():.0f}, {raw_values.max():.0f}] -> "
            f"mean {case.image.mean():.2f}, std {case.image.std():.2f}",
            fontsize=8,
        )
    if not cases:
        axes[0][0].text(0.5, 0.5, "no examples", ha="center")
    fig.suptitle(title or "Transform preview: middle axial slices before / after normalisation", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def write_preview(split_uri: str, transform_graph_uri: str, count: int = 4, title: str = "") -> str:
    """Renders `count` cases of the raw examples in `split_uri` into
    <transform_graph_uri>/preview.png; returns the path."""
    import tensorflow as tf

    cases = collect_cases(pick_by_modality(read_examples(split_uri), count), transform_graph_uri)
    path = os.path.join(transform_graph_uri, PREVIEW_FILE)
    with tf.io.gfile.GFile(path, "wb") as fh:
        fh.write(render(cases, title))
    return path
