"""ImageExampleGen: a file-based ExampleGen over medical image folders (Beam executor)."""

from __future__ import annotations

from typing import Dict, Optional

from tfx import types
from tfx.components.example_gen import utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.dashboard import artifacts as dashboard
from components.image_example_gen import executor
from components.image_example_gen.driver import ImageExampleGenDriver


class ImageExampleGenSpec(types.ComponentSpec):
    """FileBasedExampleGen's spec plus the ingestion policy parameters."""

    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        executor.REQUIRE_LABELS_KEY: ExecutionParameter(type=int),
        executor.SALT_ENV_KEY: ExecutionParameter(type=str),
        executor.DEFAULT_SALT_KEY: ExecutionParameter(type=str),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {
        **standard_component_specs.FileBasedExampleGenSpec.OUTPUTS,
        executor.INVENTORY_REPORT_KEY: ChannelParameter(type=dashboard.Markdown),
    }


class ImageExampleGen(FileBasedExampleGen):
    """Reads a Decathlon folder, a DICOM tree or a manifest CSV (see cases.py) into tf.Examples.

    Outputs the `examples` artifact with train/eval splits and `inventory.json` listing every
    input case as ingested or quarantined (with the reason), and `inventory_report`, its
    summary as the Kubeflow dashboard shows it (Markdown).
    """

    SPEC_CLASS = ImageExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = ImageExampleGenDriver  # FileBasedDriver; PACS and object stores fingerprinted by listing

    def __init__(
        self,
        input_base: str,
        output_config: example_gen_pb2.Output,
        require_labels: bool = True,
        salt_env: str = "MEDTFX_PATIENT_SALT",
        default_salt: str = "",
        input_config: Optional[example_gen_pb2.Input] = None,
    ):
        input_config = input_config or utils.make_default_input_config()
        spec = ImageExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            require_labels=int(require_labels),
            salt_env=salt_env,
            default_salt=default_salt,
            examples=types.Channel(type=standard_artifacts.Examples),
            inventory_report=types.Channel(type=dashboard.Markdown),
        )
        # Skip FileBasedExampleGen.__init__ (it builds its own spec); keep its type.
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
