"""TEST DOUBLE for TF Serving's gRPC PredictionService, plus the tiny exported model it serves.

The real tensorflow_model_server binary cannot run in the test environment, so
`ServingDouble` implements the same gRPC API (tensorflow-serving-api's generated
PredictionServiceServicer: Predict and GetModelMetadata) on loopback, loading SavedModels from
a TF Serving model base path the way the server's default policy does (the highest integer
version directory; non-integer names are ignored). It is NOT TF Serving: no batching, no
version policies beyond 'latest', no model reloading, no REST. What it does prove: requests
built by pipeline/client/predict.py are valid PredictRequests for the exported signatures, responses
are decoded correctly, message-size limits are set, and the client's retry logic works
(`fail_first` makes the first N calls fail with a chosen status code).

`exported_test_model()` builds, once per process, a small model exported by the project's own
modules.train.trainer.export from a real Transform graph (modules.transform.preprocessing over 4 phantoms via
TFT Beam): the network is an untrained, hand-set 1x1x1 convolution (three intensity bands ->
three classes) so masks are non-trivial and deterministic without spending test time training.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from concurrent import futures
from typing import Dict, Optional, Tuple

import grpc
import numpy as np
from tensorflow_serving.apis import prediction_service_pb2_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def latest_version_dir(base_path: str) -> Tuple[int, str]:
    """(version, path) of the highest integer child of `base_path`, as TF Serving picks it."""
    versions = [int(name) for name in os.listdir(base_path) if name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no integer version directory under {base_path}")
    version = max(versions)
    return version, os.path.join(base_path, str(version))


class ServingDouble(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService servicer over {model name: model base path} (Classify, Regress and
    MultiInference stay UNIMPLEMENTED, as inherited).

    fail_first: the first N Predict/GetModelMetadata calls abort with `fail_code` (transient
    failures for retry tests). calls counts every call received.
    """

    def __init__(
        self, models: Dict[str, str], fail_first: int = 0, fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ):
        import tensorflow as tf

        self._models = {}
        for name, base in models.items():
            version, path = latest_version_dir(base)
            self._models[name] = (version, path, tf.saved_model.load(path))
        self.fail_first, self.fail_code = fail_first, fail_code
        self.calls = 0
        self._lock = threading.Lock()

    def _maybe_fail(self, context) -> None:
        with self._lock:
            self.calls += 1
            failing = self.fail_first > 0
            if failing:
                self.fail_first -= 1
        if failing:
            context.abort(self.fail_code, "simulated transient failure (serving double)")

    def _model(self, model_spec, context):
        if model_spec.name not in self._models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        version, path, loaded = self._models[model_spec.name]
        if model_spec.HasField("version") and model_spec.version.value != version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"version {model_spec.version.value} not loaded")
        return version, path, loaded

    def Predict(self, request, context):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self._maybe_fail(context)
        version, _, loaded = self._model(request.model_spec, context)
        signature_name = request.model_spec.signature_name or "serving_default"
        if signature_name not in loaded.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature name: "{signature_name}" not found')
        fn = loaded.signatures[signature_name]
        expected = set(fn.structured_input_signature[1])
        if set(request.inputs) != expected:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs {sorted(request.inputs)} do not match the signature's {sorted(expected)}",
            )
        try:
            outputs = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def GetModelMetadata(self, request, context):
        from tensorflow.python.saved_model import loader_impl
        from tensorflow_serving.apis import get_model_metadata_pb2

        self._maybe_fail(context)
        version, path, _ = self._model(request.model_spec, context)
        meta_graph = loader_impl.parse_saved_model(path).meta_graphs[0]
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in meta_graph.signature_def.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signatures)
        return response


def start_server(servicer: ServingDouble, max_message_bytes: int = MAX_MESSAGE_BYTES):
    """Serves `servicer` on 127.0.0.1 with an ephemeral port. Returns (server, 'host:port');
    stop it with server.stop(None)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# The tiny exported model
# ---------------------------------------------------------------------------------------------


def phantom_examples(n: int = 4, seed: int = 11):
    """n labelled phantom cases encoded as ingestion does (canonical, compact dtype)."""
    from modules import features as es
    from modules.io.volume import Volume, compact_dtype, to_canonical
    from pipeline.tools.phantoms import make_phantom

    examples = []
    for i in range(n):
        p = make_phantom(i, seed)
        image, affine = to_canonical(p.image, p.affine)
        label, _ = to_canonical(p.label, p.affine)
        volume = Volume(compact_dtype(image), affine, p.modality, meta={"site": "phantom-site"})
        examples.append(es.encode_case(volume, label, p.name, f"hash{i}", "nifti"))
    return examples


def _analyze_transform(examples, transform_config: dict, out_dir: str) -> str:
    """Runs modules.transform.preprocessing's analyzers over `examples` (TFT Beam, in memory) and writes a
    transform graph directory as TFX's Transform does (transform_fn/, transformed_metadata/,
    metadata/ with the raw schema)."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx_bsl.public import tfxio

    from modules import features as es
    from modules.transform import preprocessing

    schema = es.tfmd_schema(include_voxels=True, require_label=True)
    record_tfxio = tfxio.TFExampleBeamRecord(
        physical_format="inmem", telemetry_descriptors=["medtfx-tests"], schema=schema
    )
    serialized = [e.SerializeToString() for e in examples]
    with tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
        with beam.Pipeline() as p:
            raw = p | beam.Create(serialized, reshuffle=False) | record_tfxio.BeamSource()
            transform_fn = (raw, record_tfxio.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
                functools.partial(preprocessing.preprocessing_fn, custom_config=transform_config)
            )
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema), os.path.join(out_dir, "metadata"))
    return out_dir


def band_model(input_shape, num_classes: int = 3):
    """Keras model (B, X, Y, Z, 1) -> (B, X, Y, Z, C) softmax of a hand-set 1x1x1 convolution:
    class 0 for normalised intensity below ~0.25, class 2 between ~0.25 and ~0.75, class 1 above."""
    import tensorflow as tf

    inputs = tf.keras.Input(list(input_shape) + [1])
    conv = tf.keras.layers.Conv3D(num_classes, 1, activation="softmax", name="bands")
    outputs = conv(inputs)
    kernel = np.zeros((1, 1, 1, 1, num_classes), np.float32)
    bias = np.zeros(num_classes, np.float32)
    kernel[..., 0], kernel[..., 1] = -8.0, 8.0
    bias[1] = -8.0
    if num_classes > 2:
        bias[2] = -2.0
    conv.set_weights([kernel, bias])
    return tf.keras.Model(inputs, outputs)


@functools.lru_cache(maxsize=None)
def exported_test_model() -> dict:
    """Exports the test model once per process. Returns {'model_dir', 'serving_base',
    'model_name', 'num_classes', 'examples'} where serving_base/<version>/ is a TF Serving
    model base path holding the same SavedModel."""
    import shutil

    import tensorflow_transform as tft

    from modules.train import trainer
    from pipeline.config import make_config

    cfg = make_config(["target_spacing=[2,2,2]"])  # 64 mm phantoms on the default 32^3 grid
    root = tempfile.mkdtemp(prefix="medtfx-test-model-")
    examples = phantom_examples()
    transform_dir = _analyze_transform(examples, cfg.transform.model_dump(mode="json"), os.path.join(root, "transform"))
    tf_transform_output = tft.TFTransformOutput(transform_dir)
    image_shape = tf_transform_output.transformed_feature_spec()["image"].shape
    model_dir = os.path.join(root, "model")
    trainer.export(band_model(image_shape, cfg.training.num_classes), tf_transform_output, model_dir)
    serving_base = os.path.join(root, "serving", cfg.serving.model_name)
    shutil.copytree(model_dir, os.path.join(serving_base, "1"))
    return {
        "model_dir": model_dir,
        "serving_base": serving_base,
        "model_name": cfg.serving.model_name,
        "num_classes": cfg.training.num_classes,
        "examples": tuple(examples),
        "root": root,
    }


def serving_double_for(
    model: dict,
    fail_first: int = 0,
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    servicer: Optional[ServingDouble] = None,
):
    """(server, target, servicer) serving the exported test model under its model name."""
    servicer = servicer or ServingDouble({model["model_name"]: model["serving_base"]}, fail_first, fail_code)
    server, target = start_server(servicer)
    return server, target, servicer
