"""The artifact types the Kubeflow Pipelines dashboard renders, and writing them from an executor.

KFP's UI picks an artifact's viewer by its MLMD type name: `system.Markdown` and `system.HTML`
are shown as a page read from the artifact URI (one file, as KFP's SDK writes to
`artifact.path`), `system.Metrics` as a table of the artifact's custom properties, lined up
across runs in the compare view; all three only when the artifact has a `display_name`. TFX's
KubeflowV2DagRunner compiles a custom type's TYPE_NAME as its schema title, which KFP registers
as the type name: hence the TYPE_NAMEs below. TFX's container entrypoint imports an artifact's
class by that title, so pods map the titles to these classes first (TITLE_TO_CLASS_PATH,
pipeline/runners/kfp_entrypoint.py).

Locally (LocalDagRunner) the same file is written at the same place, the artifact URI.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Union

from tfx import types
from tfx.types import artifact_utils

DISPLAY_NAME = "display_name"  # the custom property KFP's UI names (and requires on) a visualisation


class Markdown(types.Artifact):
    """One markdown file at the artifact URI."""

    TYPE_NAME = "system.Markdown"


class HTML(types.Artifact):
    """One self-contained HTML file (pictures embedded) at the artifact URI."""

    TYPE_NAME = "system.HTML"


class Metrics(types.Artifact):
    """Scalar metrics as float custom properties (KFP: the artifact's metadata), also written as
    JSON at the artifact URI."""

    TYPE_NAME = "system.Metrics"


# Schema title -> import path, what TFX's entrypoint needs to import these types by title.
TITLE_TO_CLASS_PATH = {cls.TYPE_NAME: f"{cls.__module__}.{cls.__qualname__}" for cls in (Markdown, HTML, Metrics)}


def write_file(output_dict: Mapping[str, List[types.Artifact]], key: str, content: Union[str, bytes]) -> str:
    """Writes `content` as the file at the URI of output `key` and names the artifact `key` for
    the dashboard. Returns the URI.

    TFX's local launcher creates every output URI as an empty directory before the executor
    runs; KFP's creates only its parent. The empty directory is replaced by the file.

    Raises:
        ValueError: the URI is a directory that is not empty (it would be another artifact's data).
    """
    import tensorflow as tf

    artifact = artifact_utils.get_single_instance(list(output_dict[key]))
    uri = artifact.uri
    if tf.io.gfile.isdir(uri):
        if tf.io.gfile.listdir(uri):
            raise ValueError(f"{uri}: output {key!r} must be a file, but a directory with files is there")
        tf.io.gfile.rmtree(uri)
    tf.io.gfile.makedirs(os.path.dirname(uri.rstrip("/")))
    with tf.io.gfile.GFile(uri, "wb" if isinstance(content, bytes) else "w") as fh:
        fh.write(content)
    artifact.set_string_custom_property(DISPLAY_NAME, key)
    return uri


def write_metrics(output_dict: Mapping[str, List[types.Artifact]], key: str, metrics: Mapping[str, float]) -> str:
    """Records `metrics` ({name: finite number}) as float custom properties of output `key` (what
    KFP's launcher stores and the UI tables) and as JSON at its URI. Returns the URI.

    Raises:
        ValueError: a value that is not a finite number (KFP's metadata is JSON: no NaN or inf).
    """
    import math

    values: Dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {name!r} = {value!r}: not a finite number")
        values[name] = float(value)
    uri = write_file(output_dict, key, json.dumps(values, indent=1, sort_keys=True) + "\n")
    artifact = artifact_utils.get_single_instance(list(output_dict[key]))
    for name, value in values.items():
        artifact.set_float_custom_property(name, value)
    return uri
