"""TFX's Transform executor with the plan's settings, plus preview.png (a few cases before/after normalisation) written
into the transform_graph artifact after the normal run, and progress over the cases as they are
transformed and written. Thin: drawing lives in preview.py."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional
from unittest import mock

import apache_beam as beam
from tfx import types
from tfx.components.transform import executor as transform_executor
from tfx.types import artifact_utils, standard_component_specs

from components.dataset_planner import artifacts
from components.image_example_gen import inventory
from components.transform import preview
from modules import progress

PREVIEW_CASES = 4
# TFX's own processor, kept before Do swaps the module's name for a counting subclass.
_TFX_PROCESSOR = transform_executor.TransformProcessor
# One Progress per worker process for all splits of one run (keyed by the run's graph folder):
# Beam builds a DoFn instance per split and bundle, the count belongs to the run.
_PROGRESS: Dict[str, progress.Progress] = {}


class _CountCases(beam.DoFn):
    """Passes (RecordBatch, passthrough) elements through, counting their rows (cases)."""

    def __init__(self, key: str, total: int):
        self._key, self._total = key, total

    def process(self, element):
        bar = _PROGRESS.get(self._key)
        if bar is None:
            bar = _PROGRESS[self._key] = progress.Progress(self._total or None, "Transform: cases written")
        bar.update(element[0].num_rows)
        yield element


class _CountThenWrite(beam.PTransform):
    """Counts the transformed cases (progress), then TFX's own encode-and-write."""

    def __init__(self, write: beam.PTransform, key: str, total: int):
        super().__init__()
        self._write, self._key, self._total = write, key, total

    def expand(self, pcoll):
        return pcoll | "CountCases" >> beam.ParDo(_CountCases(self._key, self._total)) | "Write" >> self._write


def counting_processor(key: str, total: int) -> type:
    """TFX's TransformProcessor whose writer of transformed cases first counts them (progress
    under `key`, `total` cases expected)."""

    class CountingProcessor(transform_executor.TransformProcessor):  # read before Do swaps the name
        @staticmethod
        def _EncodeAndWrite(schema, file_format, output_path):
            write = _TFX_PROCESSOR._EncodeAndWrite(schema=schema, file_format=file_format, output_path=output_path)
            return _CountThenWrite(write, key, total)

    return CountingProcessor


class Executor(transform_executor.Executor):
    """Transform (custom_config = the plan's transform settings when there is a plan), then
    `<transform_graph>/preview.png` from the first analysed split."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        stock_inputs, exec_properties = artifacts.with_plan(
            input_dict,
            exec_properties,
            standard_component_specs.CUSTOM_CONFIG_KEY,
            lambda plan: json.dumps(plan["settings"]["transform"]),
        )
        examples = input_dict[standard_component_specs.EXAMPLES_KEY]
        graph_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.TRANSFORM_GRAPH_KEY])
        # TFX's Executor.Do builds its Beam pipeline in a TransformProcessor it names at module
        # level and offers no hook on the records; swapped for the call only, to count the cases.
        processor = counting_processor(graph_uri, _transformed_count(examples, exec_properties))
        try:
            with mock.patch.object(transform_executor, "TransformProcessor", processor):
                super().Do(stock_inputs, output_dict, exec_properties)
        finally:
            bar: Optional[progress.Progress] = _PROGRESS.pop(graph_uri, None)
            if bar is not None:
                bar.close()
        split = (
            "train"
            if "train" in artifact_utils.decode_split_names(examples[0].split_names)
            else artifact_utils.decode_split_names(examples[0].split_names)[0]
        )
        try:
            path = preview.write_preview(
                artifact_utils.get_split_uri(examples, split),
                graph_uri,
                PREVIEW_CASES,
                title=f"Transform preview ({split} split)",
                label_names=inventory.read_label_names(examples[0].uri),
            )
            logging.info("wrote Transform preview %s", path)
        except Exception:  # a picture must never fail a training run; say why it is missing
            logging.exception("could not write the Transform preview into %s", graph_uri)


def _transformed_count(examples: List[types.Artifact], exec_properties: Dict[str, Any]) -> int:
    """Cases of the splits Transform writes (all splits unless splits_config says otherwise);
    0 when they cannot be counted (the progress then shows counts and rate without an ETA)."""
    from tfx.proto import transform_pb2
    from tfx.utils import io_utils, proto_utils

    try:
        splits = artifact_utils.decode_split_names(examples[0].split_names)
        config_json = exec_properties.get(standard_component_specs.SPLITS_CONFIG_KEY)
        if config_json:
            config = proto_utils.json_to_proto(config_json, transform_pb2.SplitsConfig())
            if config.transform:
                splits = list(config.transform)
        uris = [uri for split in splits for uri in artifact_utils.get_split_uris(examples, split)]
        return progress.count_records([io_utils.all_files_pattern(uri) for uri in uris])
    except Exception:  # a progress total is a convenience, never a reason to fail Transform
        logging.warning("could not count the cases to transform", exc_info=True)
        return 0
