"""ExampleSchemaGen: writes the code-defined tf.Example schema (example_schema.py) as a Schema
artifact. SchemaGen infers a schema from statistics, and statistics skip voxel bytes (tfx#1622),
so Transform needs this one to parse the voxels.

(No `from __future__ import annotations`: TFX parses the real type hints.)"""

import os

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Schema

SCHEMA_FILE = "schema.pbtxt"


@component
def ExampleSchemaGen(schema: OutputArtifact[Schema], require_labels: Parameter[int] = 1):
    """Writes <schema.uri>/schema.pbtxt (the only file there, as TFX readers expect)."""
    import tensorflow as tf
    from google.protobuf import text_format

    from modules.features import tfmd_schema

    proto = tfmd_schema(include_voxels=True, require_label=bool(require_labels))
    tf.io.gfile.makedirs(schema.uri)
    with tf.io.gfile.GFile(os.path.join(schema.uri, SCHEMA_FILE), "w") as fh:
        fh.write(text_format.MessageToString(proto))
