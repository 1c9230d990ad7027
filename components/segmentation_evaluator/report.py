"""The segmentation evaluation report: surface metrics on native grids, a per-label Dice plot
and a short summary, written beside TFMA's output. No TFX here (the executor is a thin shell).

Files written into the evaluation directory (the Evaluator's ModelEvaluation artifact):
  segmentation_report.json  every number below, per case and aggregated per slice
  summary.md                a short human-readable summary (blessing, Dice, HD95, surface Dice)
  dice_per_label.png        per-label Dice: TFMA (network grid) and native grid, per slice
  training_curves.png       loss, validation Dice per label and learning rate per epoch, from the
                            model's assets.extra/history.json (absent for models without it)
  dice_per_case.png         per-case native-grid Dice of each label (box and points, n per label)
  cases_best_worst.png      worst and best eval case: truth and prediction contours, three views
(the pictures are drawn by plots.py; summary.md links them).
For the Kubeflow dashboard (dashboard_*, written as the Evaluator's own outputs by
components/dashboard): the summary without picture links plus ExampleValidator's anomalies
(Markdown), the same page with the pictures embedded (HTML), and the per-label numbers (Metrics).

Why two Dice: TFMA's Dice (modules/metrics/tfma_dice.py) compares on the network grid, which is what the
blessing thresholds gate. The surface report runs the exported `serving_examples` signature,
i.e. exactly what a client gets, on each eval case's own grid, where millimetre tolerances mean
something (spacing from the example).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from components.dashboard import render
from components.segmentation_evaluator import plots
from modules import features as es
from modules.metrics import surface_metrics

REPORT_JSON = "segmentation_report.json"
SUMMARY_MD = "summary.md"
DICE_PLOT = "dice_per_label.png"
HISTORY_FILE = "history.json"  # modules/train/training.py HISTORY_FILE, in the model's assets.extra
SLICE_FEATURES = (es.MODALITY, es.SITE, es.SPACING_BIN)
OVERALL = "overall"
# Per-case metrics of surface_metrics.label_metrics that are summarised per slice.
SURFACE_REPORT_METRICS = ("dice", "hd95_mm", "msd_mm", "surface_dice")


def read_serialized_examples(file_pattern: str) -> Iterator[bytes]:
    """Serialized tf.Examples of GZIP TFRecord files matching `file_pattern` (ExampleGen output)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(file_pattern))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        yield record.numpy()


def _bytes_feature(example, name: str, default: str = "") -> str:
    values = example.features.feature[name].bytes_list.value if name in example.features.feature else []
    return values[0].decode("utf-8") if values else default


def case_info(example) -> dict:
    """Identifiers, slice keys and geometry of one ingested tf.Example (no voxels).

    Returns {'case_id', 'modality', 'site', 'spacing_bin', 'spacing' (3,) mm, 'shape' (3,)}.
    """
    f = example.features.feature
    spacing = np.array(f[es.SPACING].float_list.value, dtype=np.float64)
    return {
        "case_id": _bytes_feature(example, es.CASE_ID),
        es.MODALITY: _bytes_feature(example, es.MODALITY, "unknown"),
        es.SITE: _bytes_feature(example, es.SITE, "unknown"),
        # Older examples lack the bin: derive it so slices stay comparable.
        es.SPACING_BIN: _bytes_feature(example, es.SPACING_BIN) or es.spacing_bin(spacing),
        "spacing": spacing.tolist(),
        "shape": [int(v) for v in f[es.IMAGE_SHAPE].int64_list.value],
    }


def evaluate_cases(
    predict: Callable[[List[bytes]], Sequence[np.ndarray]],
    serialized: Iterable[bytes],
    labels: Sequence[int],
    tolerance_mm: float,
    max_cases: int = 0,
    on_case: Optional[Callable[[dict, np.ndarray, np.ndarray, np.ndarray], None]] = None,
) -> List[dict]:
    """Runs `predict` on labelled examples and scores each case on its own grid.

    Args:
      predict: serialized examples (list of n) -> n masks, each (X, Y, Z) integer on that
        example's grid (see `saved_model_predictor`).
      serialized: serialized tf.Examples as ingested (image, label, geometry).
      labels: foreground label ids; tolerance_mm: surface Dice tolerance.
      max_cases: stop after this many labelled cases (0 = all).
      on_case: called as on_case(record, image, truth, prediction) after each case (volumes
        (X, Y, Z) on the case's grid), e.g. ExtremeCases.add; the volumes are not kept otherwise.
    Returns:
      One record per case: case_info plus {'labels': {id: metrics}}, metrics as returned by
      surface_metrics.label_metrics ('dice', 'hd95_mm', 'msd_mm', 'surface_dice').
      Cases without a label map are skipped.
    """
    import tensorflow as tf

    records = []
    for raw in serialized:
        example = tf.train.Example.FromString(raw)
        decoded = es.decode_case(example)
        if decoded["label"] is None:
            continue
        info = case_info(example)
        mask = np.asarray(predict([raw])[0])
        if mask.shape != decoded["label"].shape:
            raise ValueError(
                f"case {info['case_id']}: predicted mask shape {mask.shape} differs "
                f"from the label's {decoded['label'].shape}"
            )
        metrics = surface_metrics.label_metrics(mask, decoded["label"], info["spacing"], labels, tolerance_mm)
        records.append({**info, "labels": {str(k): v for k, v in metrics.items()}})
        if on_case is not None:
            on_case(records[-1], decoded["image"], decoded["label"], mask)
        if max_cases and len(records) >= max_cases:
            break
    return records


class ExtremeCases:
    """Keeps the volumes of the worst and the best case seen (by plots.case_mean_dice, the mean
    native-grid Dice over labels), two cases at most, for plots.plot_case_overlays. Cases
    without any Dice (no label in truth or prediction) are not candidates."""

    def __init__(self, labels: Sequence[int]):
        self.labels = [int(k) for k in labels]
        self.worst: Optional[plots.CaseVolumes] = None
        self.best: Optional[plots.CaseVolumes] = None

    def add(self, record: dict, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        """evaluate_cases' on_case: record as it returns, volumes (X, Y, Z) on the case's grid."""
        mean = plots.case_mean_dice(record, self.labels)
        if math.isnan(mean):
            return
        image = np.asarray(image)
        if image.ndim == 4:  # several channels: the overlays show the first
            image = image[..., 0]
        case = plots.CaseVolumes(
            record["case_id"], image, np.asarray(truth), np.asarray(prediction), record["spacing"], mean
        )
        if self.worst is None or mean < self.worst.mean_dice:
            self.worst = case
        if self.best is None or mean > self.best.mean_dice:
            self.best = case

    def cases(self) -> List[tuple]:
        """[('worst', case), ('best', case)], one row when they are the same case, [] when none."""
        if self.worst is None or self.best is None:
            return []
        if self.worst is self.best:
            return [("worst and best", self.best)]
        return [("worst", self.worst), ("best", self.best)]


def saved_model_predictor(model_dir: str) -> Callable[[List[bytes]], List[np.ndarray]]:
    """predict(serialized examples) -> masks cropped to each case's shape, via the exported
    model's `serving_examples` signature (modules/train/trainer.py)."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_examples"]

    def predict(serialized: List[bytes]) -> List[np.ndarray]:
        out = signature(examples=tf.constant(serialized))
        masks, shapes = out["mask"].numpy(), out["mask_shape"].numpy()
        return [m[: s[0], : s[1], : s[2]] for m, s in zip(masks, shapes)]

    return predict


def aggregate(
    records: List[dict], labels: Sequence[int], slice_features: Sequence[str] = SLICE_FEATURES
) -> Dict[str, dict]:
    """{slice name: {'cases': n, 'labels': {id: {metric: surface_metrics.summarise(...)}}}} for the
    overall slice and one slice per value of each slice feature ('modality=CT', ...)."""
    groups: Dict[str, List[dict]] = {OVERALL: list(records)}
    for feature in slice_features:
        for r in records:
            groups.setdefault(f"{feature}={r[feature]}", []).append(r)
    out = {}
    for name, members in groups.items():
        per_label = {}
        for k in labels:
            per_label[str(k)] = {
                metric: surface_metrics.summarise(m["labels"][str(k)][metric] for m in members)
                for metric in SURFACE_REPORT_METRICS
            }
        out[name] = {"cases": len(members), "labels": per_label}
    return out


def _slice_name(slice_key) -> str:
    if not slice_key:
        return OVERALL
    return ",".join(f"{k}={v}" for k, v in slice_key)


def tfma_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """{slice: {metric: value}} of the candidate model, read from TFMA's MetricsForSlice records.
    With a baseline, TFMA also stores the baseline's values and the candidate-minus-baseline
    diffs (MetricKey.is_diff): they appear as '<metric>_baseline' and '<metric>_diff'."""
    import tensorflow as tf
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2
    from tensorflow_model_analysis.slicer import slicer_lib

    out: Dict[str, Dict[str, float]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(evaluation_uri, "metrics*"))):
        for record in tf.data.TFRecordDataset([path]):
            proto = metrics_for_slice_pb2.MetricsForSlice.FromString(record.numpy())
            name = _slice_name(slicer_lib.deserialize_slice_key(proto.slice_key))
            values = out.setdefault(name, {})
            for kv in proto.metric_keys_and_values:
                key = kv.key
                which = kv.value.WhichOneof("type")
                if which == "double_value":
                    value = kv.value.double_value.value
                elif which == "bounded_value":
                    value = kv.value.bounded_value.value.value
                else:
                    continue
                suffix = "_diff" if key.is_diff else "_baseline" if key.model_name == "baseline" else ""
                values[key.name + suffix] = float(value)
    return out


def validation_summary(evaluation_uri: str) -> dict:
    """{'ok': bool, 'failures': [text]} from TFMA's validation result (what decided the blessing),
    or {'ok': None, ...} when TFMA wrote none (no thresholds)."""
    import tensorflow as tf
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    if not tf.io.gfile.glob(os.path.join(evaluation_uri, "validations*")):
        return {"ok": None, "failures": []}
    result = tfma.load_validation_result(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        slice_name = _slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        for failure in per_slice.failures:
            failures.append(
                f"{slice_name}: {failure.metric_key.name}"
                f"{' (change vs baseline)' if failure.metric_key.is_diff else ''} = "
                f"{failure.metric_value.double_value.value:.4f} violates {failure.metric_threshold}".replace("\n", " ")
            )
    return {"ok": bool(result.validation_ok), "failures": failures}


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def build_report(
    records: List[dict],
    labels: Sequence[int],
    tolerance_mm: float,
    tfma: Dict[str, Dict[str, float]],
    validation: dict,
    baseline_model: Optional[str],
    candidate_model: str,
    thresholds: dict,
) -> dict:
    """The JSON-ready report (see the module docstring)."""
    return {
        "candidate_model": candidate_model,
        "baseline_model": baseline_model,
        "blessed": validation.get("ok"),
        "validation_failures": validation.get("failures", []),
        "thresholds": thresholds,
        "tfma": tfma,
        "surface": {
            "tolerance_mm": float(tolerance_mm),
            "labels": [int(k) for k in labels],
            "slices": aggregate(records, labels),
        },
        "cases": records,
    }


def summary_markdown(report: dict) -> str:
    """A short markdown summary of `report`."""
    labels = report["surface"]["labels"]
    overall_tfma = report["tfma"].get(OVERALL, {})
    lines = ["# Segmentation evaluation", ""]
    blessed = report["blessed"]
    lines.append(f"- blessed: **{'yes' if blessed else 'no' if blessed is not None else 'not validated'}**")
    lines.append(f"- baseline model: {report['baseline_model'] or 'none (first model: change threshold not applied)'}")
    t = report.get("thresholds") or {}
    if t:
        lines.append(f"- thresholds: {', '.join(f'{k}={v}' for k, v in t.items())}")
    for failure in report["validation_failures"]:
        lines.append(f"- failed: {failure}")
    if "mean_dice" in overall_tfma:
        diff, base = overall_tfma.get("mean_dice_diff"), overall_tfma.get("mean_dice_baseline")
        lines.append(
            f"- mean Dice (TFMA, network grid): {_fmt(overall_tfma['mean_dice'])}"
            + (f"; baseline {_fmt(base)}" if base is not None else "")
            + (
                f"; change {diff:+.4f} (gate: >= {-t['max_dice_drop']:+.4f})"
                if diff is not None and "max_dice_drop" in t
                else f"; change {diff:+.4f}"
                if diff is not None
                else ""
            )
        )
    lines += [
        "",
        f"Native-grid metrics of the served model (surface Dice tolerance "
        f"{report['surface']['tolerance_mm']:g} mm; mean over cases):",
        "",
        "| slice | cases | label | Dice | HD95 (mm) | surface Dice |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["surface"]["slices"].items():
        for k in labels:
            m = s["labels"][str(k)]
            inf = m["hd95_mm"]["n_infinite"]
            lines.append(
                f"| {name} | {s['cases']} | {k} | {_fmt(m['dice']['mean'])} | "
                f"{_fmt(m['hd95_mm']['mean'], 2)}{f' ({inf} missed)' if inf else ''} | "
                f"{_fmt(m['surface_dice']['mean'])} |"
            )
    pictures = report.get("pictures") or {}
    if pictures:
        lines += ["", "## Pictures", ""]
        for name, caption in pictures.items():
            lines += [f"- [{name}]({name}): {caption}", "", f"  ![{name}]({name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# What each picture shows, with the one Dice definition it uses (summary.md, report JSON).
PICTURE_CAPTIONS = {
    DICE_PLOT: "mean Dice per label; bars name their definition (TFMA on the network grid, which the "
    "blessing gates, or native grid per slice)",
    plots.TRAINING_CURVES: f"loss and val_loss, {plots.DICE_NETWORK_GRID} per label, learning rate; per epoch",
    plots.DICE_PER_CASE: f"one point per eval case and label, box = quartiles; {plots.DICE_NATIVE_GRID}",
    plots.CASES_BEST_WORST: "worst and best eval case by mean Dice over labels (native grid): truth (solid) "
    "and prediction (dashed) contours on sagittal, coronal and axial slices through the structure",
}


def plot_dice(report: dict, path: str) -> None:
    """Bar chart: per label, TFMA Dice (network grid) and native-grid Dice for every slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["surface"]["labels"]
    slices = list(report["surface"]["slices"])
    series = []  # (legend, [value per label])
    overall_tfma = report["tfma"].get(OVERALL, {})
    if any(f"dice_label_{k}" in overall_tfma for k in labels):
        series.append(("TFMA overall (network grid)", [overall_tfma.get(f"dice_label_{k}", np.nan) for k in labels]))
    for name in slices:
        means = [report["surface"]["slices"][name]["labels"][str(k)]["dice"]["mean"] for k in labels]
        series.append((f"{name} (native grid)", [np.nan if v is None else v for v in means]))
    fig, ax = plt.subplots(figsize=(4.0 + 0.25 * len(labels) * max(1, len(series)) + 3.0, 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (legend, values) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=legend)
    threshold = (report.get("thresholds") or {}).get("min_mean_dice")
    if threshold is not None:
        ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"min mean Dice {threshold}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"label {k}" for k in labels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title("Dice per label (eval split)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    report: dict,
    output_dir: str,
    history: Optional[dict] = None,
    extremes: Optional[ExtremeCases] = None,
) -> Dict[str, str]:
    """Writes the JSON, markdown and pictures into `output_dir` (any tf.io.gfile path).

    Args:
      report: as build_report returns; gets a 'pictures' entry {file name: caption}.
      history: the Trainer's history.json (Keras History per epoch plus 'lr'), or None: no
        training curves.
      extremes: the worst and best cases kept while evaluating, or None: no overlays.
    Returns:
      {kind: path} for 'json', 'summary', 'plot' and each picture drawn ('training_curves',
      'dice_per_case', 'cases_best_worst').
    """
    import tempfile

    import tensorflow as tf

    labels = report["surface"]["labels"]
    drawings = {"plot": (DICE_PLOT, lambda path: plot_dice(report, path))}
    if history and history.get("loss"):
        drawings["training_curves"] = (plots.TRAINING_CURVES, lambda path: plots.plot_training_curves(history, path))
    if report["cases"]:
        drawings["dice_per_case"] = (
            plots.DICE_PER_CASE,
            lambda path: plots.plot_dice_per_case(report["cases"], labels, path),
        )
    if extremes is not None and extremes.cases():
        drawings["cases_best_worst"] = (
            plots.CASES_BEST_WORST,
            lambda path: plots.plot_case_overlays(extremes.cases(), labels, path),
        )
    report = {**report, "pictures": {name: PICTURE_CAPTIONS[name] for name, _ in drawings.values()}}
    paths = {
        "json": os.path.join(output_dir, REPORT_JSON),
        "summary": os.path.join(output_dir, SUMMARY_MD),
        **{kind: os.path.join(output_dir, name) for kind, (name, _) in drawings.items()},
    }
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(paths["json"], "w") as fh:
        # inf/nan are valid in Python's JSON dialect but not in strict JSON: write them as null.
        fh.write(json.dumps(_json_safe(report), indent=1))
    with tf.io.gfile.GFile(paths["summary"], "w") as fh:
        fh.write(summary_markdown(report))
    with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes local files; copy to any fs
        for kind, (name, draw) in drawings.items():
            local = os.path.join(tmp, name)
            draw(local)
            tf.io.gfile.copy(local, paths[kind], overwrite=True)
    return paths


# --- the Kubeflow dashboard's view of the report (components/dashboard) ----------------------
# ExampleValidator's file per split (tfx.components.example_validator.executor.DEFAULT_FILE_NAME).
ANOMALIES_FILE = "SchemaDiff.pb"


def read_anomalies(anomalies_uri: Optional[str]) -> Optional[Dict[str, List[Tuple[str, str]]]]:
    """{split: [(feature, "short description: description"), ...]} from an ExampleAnomalies
    artifact directory (Split-<name>/SchemaDiff.pb), dataset-level anomalies as "(dataset)";
    None when there is no such artifact (a DAG without ExampleValidator)."""
    if not anomalies_uri:
        return None
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out: Dict[str, List[Tuple[str, str]]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(anomalies_uri, "Split-*", ANOMALIES_FILE))):
        split = os.path.basename(os.path.dirname(path))[len("Split-") :]
        with tf.io.gfile.GFile(path, "rb") as fh:
            proto = anomalies_pb2.Anomalies.FromString(fh.read())
        infos = sorted(proto.anomaly_info.items()) + (
            [("(dataset)", proto.dataset_anomaly_info)] if proto.HasField("dataset_anomaly_info") else []
        )
        out[split] = [(feature, f"{info.short_description}: {info.description}") for feature, info in infos]
    return out


def dashboard_metrics(report: dict) -> Dict[str, float]:
    """The numbers KFP's compare view lines up across runs: per label the overall slice's mean
    native-grid Dice, surface Dice and HD95 (mm) as in summary.md ('dice_label_1',
    'surface_dice_label_1', 'hd95_mm_label_1', ...) and TFMA's mean Dice on the network grid
    (what the blessing gates) as 'tfma_mean_dice'. Undefined values (no case, all missed) are
    left out."""
    overall = report["surface"]["slices"].get(OVERALL, {"labels": {}})["labels"]
    values: Dict[str, Optional[float]] = {}
    for k in report["surface"]["labels"]:
        metrics = overall.get(str(k), {})
        for name, key in (("dice", "dice"), ("surface_dice", "surface_dice"), ("hd95_mm", "hd95_mm")):
            values[f"{name}_label_{k}"] = metrics.get(key, {}).get("mean")
    values["tfma_mean_dice"] = report["tfma"].get(OVERALL, {}).get("mean_dice")
    return render.finite_metrics(values)


def dashboard_markdown(
    report: Optional[dict], anomalies: Optional[Dict[str, List[Tuple[str, str]]]], task: str = "segmentation"
) -> str:
    """summary.md's text without its picture links (the dashboard cannot follow them; the HTML
    report embeds the pictures), followed by ExampleValidator's anomalies. report None (a task
    without the segmentation report): a line saying so instead of the summary."""
    if report is None:
        summary = f"# Evaluation\n\nTask {task}: no segmentation report; TFMA's metrics are in the evaluation.\n"
    else:
        summary = summary_markdown({k: v for k, v in report.items() if k != "pictures"})
    return summary + "\n" + render.anomalies_markdown(anomalies)


def dashboard_html(markdown_text: str, paths: Dict[str, str]) -> str:
    """The HTML report: `markdown_text` and every picture write_report drew (`paths`, as it
    returns them), embedded, with its caption."""
    import tensorflow as tf

    pictures = []
    for path in paths.values():
        name = os.path.basename(path)
        if name in PICTURE_CAPTIONS:
            with tf.io.gfile.GFile(path, "rb") as fh:
                pictures.append((name, PICTURE_CAPTIONS[name], fh.read()))
    return render.html_page("Segmentation evaluation", markdown_text, pictures)


def read_history(model_dir: str) -> Optional[dict]:
    """The Trainer's training history (assets.extra/history.json of an exported model), or None
    for models exported without one."""
    import tensorflow as tf

    path = os.path.join(model_dir, "assets.extra", HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as fh:
        return json.loads(fh.read())


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
