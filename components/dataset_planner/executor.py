"""DatasetPlanner executor: fingerprint of the train split (Beam), then the plan. Thin: the
fingerprint is modules/plan/fingerprint.py, the rules modules/plan/planner.py."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.dashboard import artifacts as dashboard
from components.dashboard import render
from components.dataset_planner import artifacts
from modules.plan import calibrate, fingerprint, planner, planning
from modules.settings import PlanningSettings

EXAMPLES_KEY = "examples"
FINGERPRINT_KEY = "fingerprint"
PLAN_REPORT_KEY = "plan_report"  # output: fingerprint and plan as the dashboard shows them
SETTINGS_KEY = "settings"  # JSON: {stage: settings dict} as configured
USER_OVERRIDES_KEY = "user_overrides"  # JSON: {"stage.key": value} the user set
PLANNING_KEY = "planning"  # JSON: PlanningSettings
# Optional float minutes overriding planning.budget_minutes (a run parameter on Kubeflow).
BUDGET_MINUTES_KEY = "budget_minutes"
SPLIT = "train"


def _case_fingerprint(serialized: bytes) -> dict:
    example = tf.train.Example.FromString(serialized)
    image, label, spacing, modality, case_key = fingerprint.decode_case(example)
    return fingerprint.case_fingerprint(image, label, spacing, modality, case_key)


def _write_text(path: str, text: str) -> None:
    # Only TFX's local launcher creates output directories first; KFP's does not.
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as fh:
        fh.write(text)


class Executor(base_beam_executor.BaseBeamExecutor):
    """examples (train split) -> fingerprint (fingerprint.json/.md) -> plan (plan.json/.md)."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        examples = input_dict[EXAMPLES_KEY]
        pattern = io_utils.all_files_pattern(artifact_utils.get_split_uri(examples, SPLIT))
        fingerprint_uri = artifact_utils.get_single_uri(output_dict[FINGERPRINT_KEY])
        cases_path = os.path.join(fingerprint_uri, "cases")
        with self._make_beam_pipeline() as pipeline:
            _ = (
                pipeline
                | "ReadExamples"
                >> beam.io.ReadFromTFRecord(pattern, compression_type=beam.io.filesystem.CompressionTypes.GZIP)
                | "FingerprintCase" >> beam.Map(_case_fingerprint)
                | "ToJson" >> beam.Map(json.dumps)
                | "WriteCases" >> beam.io.WriteToText(cases_path, file_name_suffix=".jsonl")
            )
        case_fingerprints: List[Dict[str, Any]] = []
        for path in sorted(tf.io.gfile.glob(cases_path + "*.jsonl")):
            with tf.io.gfile.GFile(path) as fh:
                case_fingerprints.extend(json.loads(line) for line in fh if line.strip())
            tf.io.gfile.remove(path)
        dataset = fingerprint.combine(case_fingerprints)
        fingerprint.write(dataset, fingerprint_uri)
        logging.info("fingerprint of %d cases written to %s", dataset["num_cases"], fingerprint_uri)

        settings = json.loads(exec_properties[SETTINGS_KEY])
        planning_settings = PlanningSettings.model_validate(json.loads(exec_properties[PLANNING_KEY]))
        if exec_properties.get(BUDGET_MINUTES_KEY) is not None:
            # Validated like --set planning.budget_minutes (positive).
            planning_settings = PlanningSettings.model_validate(
                {**planning_settings.model_dump(), "budget_minutes": float(exec_properties[BUDGET_MINUTES_KEY])}
            )
        timer = calibrate.step_timer(settings["training"], planning_settings.calibration_steps)
        plan = planning.build_plan(
            dataset, settings, json.loads(exec_properties[USER_OVERRIDES_KEY]), planning_settings, timer
        )
        plan_uri = artifact_utils.get_single_uri(output_dict[artifacts.PLAN_KEY])
        table = planner.describe(plan)
        _write_text(os.path.join(plan_uri, artifacts.PLAN_FILE), json.dumps(plan, indent=2))
        _write_text(os.path.join(plan_uri, "plan.md"), "```\n" + table + "\n```\n")
        logging.info("plan written to %s:\n%s", plan_uri, table)
        dashboard.write_file(
            output_dict, PLAN_REPORT_KEY, render.plan_markdown(fingerprint.to_markdown(dataset), table)
        )
