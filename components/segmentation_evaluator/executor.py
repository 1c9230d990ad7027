"""Executor: TFX's Evaluator executor (TFMA metrics, validation, blessing), then the
segmentation report (report.py) written into the same evaluation directory."""

from __future__ import annotations

from typing import Any, Dict, List

from absl import logging
from google.protobuf import json_format
from tfx import types
from tfx.components.evaluator import executor as tfx_evaluator_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, json_utils, path_utils

from components.dashboard import artifacts as dashboard
from components.dataset_planner import artifacts
from components.segmentation_evaluator import eval_config, report
from modules.settings import EvaluationSettings

SETTINGS_KEY = "settings"  # EvaluationSettings JSON
NUM_CLASSES_KEY = "num_classes"  # as configured; a plan's wins
ANOMALIES_KEY = standard_component_specs.ANOMALIES_KEY  # optional ExampleValidator output
# Outputs the Kubeflow dashboard renders (system.Markdown, system.HTML, system.Metrics).
SUMMARY_KEY = "summary"
REPORT_KEY = "report"
METRICS_KEY = "metrics"


def _single_uri_or_none(input_dict, key):
    artifacts = input_dict.get(key) or []
    return artifacts[0].uri if artifacts else None


def _write_dashboard(output_dict, summary: str, html: str, metrics: Dict[str, float]) -> None:
    dashboard.write_file(output_dict, SUMMARY_KEY, summary)
    dashboard.write_file(output_dict, REPORT_KEY, html)
    dashboard.write_metrics(output_dict, METRICS_KEY, metrics)


class Executor(tfx_evaluator_executor.Executor):
    """Runs the stock Evaluator, then writes segmentation_report.json, summary.md and the pictures
    (report.write_report) into the ModelEvaluation artifact, and the dashboard's summary, HTML
    report and metrics into their own outputs. A report failure fails the component
    (an evaluation without its report should not silently bless a model)."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        settings = EvaluationSettings.model_validate_json(exec_properties[SETTINGS_KEY])
        plan = artifacts.read_plan(input_dict)
        num_classes = int(exec_properties[NUM_CLASSES_KEY])
        if plan is not None:  # the metrics follow the labels the plan found in the data
            num_classes = int(plan["settings"]["training"]["num_classes"])
        config_json = json_format.MessageToJson(
            eval_config.eval_config(settings, num_classes), preserving_proto_field_name=True
        )
        exec_properties = {**exec_properties, standard_component_specs.EVAL_CONFIG_KEY: config_json}
        stock_inputs = {k: v for k, v in artifacts.without_plan(input_dict).items() if k != ANOMALIES_KEY}
        stock_outputs = {k: v for k, v in output_dict.items() if k not in (SUMMARY_KEY, REPORT_KEY, METRICS_KEY)}
        super().Do(stock_inputs, stock_outputs, exec_properties)
        anomalies = report.read_anomalies(_single_uri_or_none(input_dict, ANOMALIES_KEY))
        if settings.task != "segmentation":
            note = report.dashboard_markdown(None, anomalies, settings.task)
            _write_dashboard(output_dict, note, report.dashboard_html(note, {}), {})
            return
        labels = list(range(1, num_classes))
        thresholds = {"min_mean_dice": settings.min_mean_dice, "max_dice_drop": settings.max_dice_drop}
        evaluation_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.EVALUATION_KEY])
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        baseline_uri = _single_uri_or_none(input_dict, standard_component_specs.BASELINE_MODEL_KEY)
        splits = json_utils.loads(exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY, "null")) or ["eval"]

        def serialized():
            for split in splits:
                for uri in artifact_utils.get_split_uris(input_dict[standard_component_specs.EXAMPLES_KEY], split):
                    yield from report.read_serialized_examples(io_utils.all_files_pattern(uri))

        extremes = report.ExtremeCases(labels)  # the worst and best case's volumes, for overlays
        records = report.evaluate_cases(
            report.saved_model_predictor(model_dir),
            serialized(),
            labels,
            settings.surface_tolerance_mm,
            settings.report_max_cases,
            on_case=extremes.add,
        )
        result = report.build_report(
            records,
            labels,
            settings.surface_tolerance_mm,
            report.tfma_metrics(evaluation_uri),
            report.validation_summary(evaluation_uri),
            baseline_uri,
            model.uri,
            thresholds,
        )
        paths = report.write_report(result, evaluation_uri, report.read_history(model_dir), extremes)
        logging.info("segmentation report (%d eval cases): %s", len(records), paths)
        summary = report.dashboard_markdown(result, anomalies)
        _write_dashboard(output_dict, summary, report.dashboard_html(summary, paths), report.dashboard_metrics(result))
