"""TFX's Transform executor with the plan's settings, plus preview.png (a few cases before/after normalisation) written
into the transform_graph artifact after the normal run. Thin: drawing lives in preview.py."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List

from tfx import types
from tfx.components.transform import executor as transform_executor
from tfx.types import artifact_utils, standard_component_specs

from components.dataset_planner import artifacts
from components.transform import preview

PREVIEW_CASES = 4


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
        super().Do(stock_inputs, output_dict, exec_properties)
        examples = input_dict[standard_component_specs.EXAMPLES_KEY]
        graph_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.TRANSFORM_GRAPH_KEY])
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
            )
            logging.info("wrote Transform preview %s", path)
        except Exception:  # a picture must never fail a training run; say why it is missing
            logging.exception("could not write the Transform preview into %s", graph_uri)
