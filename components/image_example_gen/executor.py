"""Beam executor of ImageExampleGen: cases -> tf.Examples, plus the inventory report.

Thin on purpose: finding and reading cases lives in cases.py; splitting by patient is TFX's own
partitioning on the `patient_hash` feature (output_config.split_config.partition_feature_name).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.types import artifact_utils, standard_component_specs

from components.dashboard import artifacts as dashboard
from components.dashboard import render
from components.image_example_gen import cases, pacs_source
from modules.io import dicomweb

_log = logging.getLogger(__name__)

INVENTORY_FILE = "inventory.json"
INVENTORY_REPORT_KEY = "inventory_report"  # output: the inventory as the dashboard shows it
_REPORT_DIR = "_inventory_parts"
# exec_properties keys (parameters of ImageExampleGenSpec).
SALT_ENV_KEY = "salt_env"
DEFAULT_SALT_KEY = "default_salt"
REQUIRE_LABELS_KEY = "require_labels"
_REPORT_URI_KEY = "_report_uri"  # private: set by Do() for the Beam transform
_PACS_CACHE_KEY = "_pacs_cache"  # private: where a PACS dataset is materialised (removed after)


def patient_salt(exec_properties: Dict[str, Any]) -> str:
    """The salt for patient hashes: from the environment variable named in the config when set
    (keep real salts out of pipeline metadata), else the configured default."""
    env_name = exec_properties.get(SALT_ENV_KEY) or ""
    return os.environ.get(env_name, "") or exec_properties.get(DEFAULT_SALT_KEY) or ""


class _ProcessCase(beam.DoFn):
    """CaseSpec -> tf.Example (main output) and a report record (tagged 'report')."""

    def __init__(self, salt: str, label_set):
        self._salt = salt
        self._label_set = label_set

    def process(self, spec: cases.CaseSpec):
        example, record = cases.process_case(spec, self._salt, self._label_set)
        if example is not None:
            yield example
        else:
            _log.warning("quarantined case %s: %s", record["case_id"], record["reason"])
        yield beam.pvalue.TaggedOutput("report", json.dumps(record))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImagesToExample(
    pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    """Reads every case under input_base; quarantine records go to the report directory."""
    del split_pattern  # the whole dataset folder is one input split; we split by patient
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    require_labels = bool(exec_properties.get(REQUIRE_LABELS_KEY, 1))
    if dicomweb.is_dicomweb_url(input_base):  # a PACS: cases materialised in the cache first
        specs, info = pacs_source.find_cases(input_base, exec_properties[_PACS_CACHE_KEY], require_labels)
    else:
        specs, info = cases.find_cases(input_base, require_labels=require_labels)
    _log.info("found %d candidate cases in %s (%s layout)", len(specs), input_base, info.layout)
    for warning in getattr(info, "warnings", []):
        _log.warning("%s: %s", input_base, warning)
    label_set = set(info.labels) if info.labels else None
    outputs = (
        pipeline
        | "CaseSpecs" >> beam.Create(specs, reshuffle=True)
        | "ReadCases"
        >> beam.ParDo(_ProcessCase(patient_salt(exec_properties), label_set)).with_outputs("report", main="examples")
    )
    _ = outputs.report | "WriteReport" >> beam.io.WriteToText(
        os.path.join(exec_properties[_REPORT_URI_KEY], "part"), file_name_suffix=".jsonl"
    )
    return outputs.examples


def merge_report(report_dir: str, out_path: str) -> List[dict]:
    """Joins the per-worker report shards into {"cases": [...]} sorted by case_id."""
    records: List[dict] = []
    for path in sorted(tf.io.gfile.glob(os.path.join(report_dir, "part*"))):
        with tf.io.gfile.GFile(path) as fh:
            records.extend(json.loads(line) for line in fh if line.strip())
    records.sort(key=lambda r: (r["status"] != "quarantined", r["case_id"]))
    with tf.io.gfile.GFile(out_path, "w") as fh:
        json.dump({"cases": records}, fh, indent=1)
    tf.io.gfile.rmtree(report_dir)
    return records


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Writes tf.Examples per split and `inventory.json` at the root of the examples artifact."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ImagesToExample

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        report_dir = os.path.join(examples.uri, _REPORT_DIR)
        # The PACS cache is local: Beam's workers read its files (DirectRunner, or one machine).
        pacs_cache = tempfile.mkdtemp(prefix="medtfx-pacs-")
        exec_properties = dict(exec_properties, **{_REPORT_URI_KEY: report_dir, _PACS_CACHE_KEY: pacs_cache})
        try:
            super().Do(input_dict, output_dict, exec_properties)
        finally:
            shutil.rmtree(pacs_cache, ignore_errors=True)  # the examples hold the voxels now
        records = merge_report(report_dir, os.path.join(examples.uri, INVENTORY_FILE))
        dashboard.write_file(output_dict, INVENTORY_REPORT_KEY, render.inventory_markdown(records))
        _log.info(
            "ImageExampleGen: %s; report at %s", cases.summarise(records), os.path.join(examples.uri, INVENTORY_FILE)
        )
        if not any(r["status"] == "ok" for r in records):
            raise RuntimeError(
                f"no usable case in {exec_properties['input_base']}: see {os.path.join(examples.uri, INVENTORY_FILE)}"
            )
