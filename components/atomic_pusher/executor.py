"""TFX Pusher executor with an atomic publish step (components/atomic_pusher/push.py).

Use it through the stock component:
    tfx.components.Pusher(..., custom_executor_spec=executor_spec.ExecutorClassSpec(Executor))
Blessing checks, the archive copy into the PushedModel artifact and the `pushed`,
`pushed_destination`, `pushed_version` custom properties are those of TFX's Pusher; only the
copy into the serving base path differs (TFX's copies in place, so TF Serving can see a
half-written version directory).
"""

from __future__ import annotations

from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.atomic_pusher import push

# Optional run-time overrides of PushDestination.filesystem.base_directory (see push_base).
SERVING_BASE_KEY = "serving_base"
MODEL_NAME_KEY = "model_name"
SERVING_ROOT_KEY = "serving_root"


def push_base(destination_base: str, serving_base: str = "", model_name: str = "", serving_root: str = "") -> str:
    """The TF Serving model base path to publish into.

    serving_base when non-empty; else <serving_root>/<model_name> when both are non-empty
    (a Kubeflow run that only renames the model); else the compiled destination_base.

    Raises:
        ValueError: if the chosen path is empty.
    """
    if serving_base:
        base = serving_base
    elif serving_root and model_name:
        base = serving_root.rstrip("/") + "/" + model_name
    else:
        base = destination_base
    if not base:
        raise ValueError("no serving base path: set push_destination, serving_base or serving_root + model_name")
    return base


class Executor(tfx_pusher_executor.Executor):
    """Pushes the blessed model to <base_directory>/<version> via push.atomic_push."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("the atomic pusher supports filesystem destinations only")
        versioning = destination.filesystem.versioning
        if versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"unsupported versioning {versioning}")
        base = push_base(
            destination.filesystem.base_directory,
            exec_properties.get(SERVING_BASE_KEY) or "",
            exec_properties.get(MODEL_NAME_KEY) or "",
            exec_properties.get(SERVING_ROOT_KEY) or "",
        )
        result = push.push_model(model_path, base)
        logging.info(
            "Model published to %s (strategy %s).",
            result["path"],
            "atomic rename" if result["strategy"] == "rename" else "copy, saved_model.pb last",
        )
        if result["stale"]:
            logging.warning("leftover temporary push directories (ignored by TF Serving): %s", result["stale"])
        io_utils.copy_dir(model_path, model_push.uri)  # archive copy, as TFX's Pusher does
        self._MarkPushed(model_push, pushed_destination=result["path"], pushed_version=result["version"])
