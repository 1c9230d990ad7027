"""The embedded default runner: the whole DAG in this process (LocalDagRunner, SQLite metadata,
Beam DirectRunner), and reading back what a local run produced."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline


def _local_or_url(data_root: str) -> str:
    """A PACS URL (dicomweb+http...) or object-store URL (s3://, gs://) as given; a local folder
    made absolute."""
    from modules.io import dicomweb, storage

    return data_root if dicomweb.is_dicomweb_url(data_root) else storage.abspath(data_root)


def run_local(cfg: PipelineConfig, until: Optional[str] = None) -> None:
    """Runs the whole DAG (or the part up to node `until`) in this process, the Beam components
    on the configured `runner.beam_profile` (DirectRunner by default; 'portable' for Beam's
    portable runner with several SDK worker processes), metadata in <workdir>/metadata.sqlite."""
    from tfx import v1 as tfx

    os.makedirs(cfg.workdir, exist_ok=True)
    pipeline = create_pipeline(
        cfg,
        pipeline_root=os.path.abspath(cfg.pipeline_root),
        data_root=_local_or_url(cfg.data_root),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.abspath(cfg.metadata_path)
        ),
        beam_args=cfg.beam_pipeline_args(),
        until=until,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)


def latest_artifacts(metadata_path: str) -> Dict[str, object]:
    """The newest artifact of each type in a local run's MLMD store: {type name: Artifact}
    ('Examples' is ExampleGen's output)."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    latest: Dict[str, object] = {}
    for type_name in (
        "Examples",
        "ModelEvaluation",
        "ModelBlessing",
        "PushedModel",
        "Model",
        "ModelRun",
        "TransformGraph",
        "medtfx.Plan",
        "medtfx.DatasetFingerprint",
        "system.HTML",
    ):
        artifacts = store.get_artifacts_by_type(type_name)
        if type_name == "Examples":  # ExampleGen's (input-fingerprinted), not Transform's output
            artifacts = [a for a in artifacts if "input_fingerprint" in a.custom_properties]
        if artifacts:
            latest[type_name] = max(artifacts, key=lambda a: a.id)
    return latest


def read_dice(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """{slice name: {metric name: value}} for the Dice metrics of a TFMA evaluation."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri)
    out = {}
    for slice_key, metrics in result.slicing_metrics:
        name = "overall" if not slice_key else ",".join(f"{k}={v}" for k, v in slice_key)
        values = {}
        for by_output in metrics.values():
            for by_subkey in by_output.values():
                for metric, value in by_subkey.items():
                    if "dice" in metric and "doubleValue" in value:
                        values[metric] = float(value["doubleValue"])
        out[name] = values
    return out


def run_summary(cfg: PipelineConfig) -> dict:
    """What the last local run produced: inventory counts, Dice, blessing, pushed model path, the
    report's pictures and the TensorBoard command for the training logs."""
    latest = latest_artifacts(os.path.abspath(cfg.metadata_path))
    summary: dict = {"pushed_to": None}
    examples = latest.get("Examples")
    inventory = os.path.join(examples.uri, "inventory.json") if examples else ""
    if inventory and os.path.exists(inventory):
        with open(inventory) as fh:
            records = json.load(fh)["cases"]
        summary["cases_ok"] = sum(r["status"] == "ok" for r in records)
        summary["cases_quarantined"] = len(records) - summary["cases_ok"]
        summary["inventory"] = inventory
    if "ModelEvaluation" in latest:
        summary["evaluation"] = latest["ModelEvaluation"].uri
        summary["dice"] = read_dice(latest["ModelEvaluation"].uri)
        for key, name in (
            ("evaluation_summary", "summary.md"),
            ("dice_plot", "dice_per_label.png"),
            ("training_curves", "training_curves.png"),
            ("dice_per_case", "dice_per_case.png"),
            ("cases_best_worst", "cases_best_worst.png"),
        ):
            if os.path.exists(os.path.join(latest["ModelEvaluation"].uri, name)):
                summary[key] = os.path.join(latest["ModelEvaluation"].uri, name)
    # The Evaluator's report as the Kubeflow dashboard shows it (one HTML file, pictures embedded).
    if "system.HTML" in latest and os.path.isfile(latest["system.HTML"].uri):
        summary["report_html"] = latest["system.HTML"].uri
    # The Trainer's TensorBoard logs (loss, Dice per label, learning rate per epoch).
    if "ModelRun" in latest and os.path.isdir(os.path.join(latest["ModelRun"].uri, "logs")):
        summary["tensorboard"] = f"tensorboard --logdir {os.path.join(latest['ModelRun'].uri, 'logs')}"
    if "TransformGraph" in latest and os.path.exists(os.path.join(latest["TransformGraph"].uri, "preview.png")):
        summary["transform_preview"] = os.path.join(latest["TransformGraph"].uri, "preview.png")
    for type_name, key, name in (
        ("medtfx.Plan", "plan", "plan.json"),
        ("medtfx.DatasetFingerprint", "fingerprint", "fingerprint.md"),
    ):
        if type_name in latest and os.path.exists(os.path.join(latest[type_name].uri, name)):
            summary[key] = os.path.join(latest[type_name].uri, name)
    if "ModelBlessing" in latest:
        summary["blessed"] = os.path.exists(os.path.join(latest["ModelBlessing"].uri, "BLESSED"))
    pushed = latest.get("PushedModel")
    if pushed is not None and pushed.custom_properties["pushed"].int_value == 1:
        summary["pushed_to"] = pushed.custom_properties["pushed_destination"].string_value
    return summary
