"""The Pusher against a real S3 API: push_model -> tensorflow-io 0.37.1's s3 filesystem plugin ->
moto's S3 server on 127.0.0.1 (components/atomic_pusher/push.py). Every request goes to loopback."""

import json
import logging
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from components.atomic_pusher import push
from tests.tiny_saved_model import files_under, save_affine_model

BUCKET = "medtfx-models"
MODEL_NAME = "medtfx-seg"
X = [[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]]  # (2, 3) float32 input of the tiny model


def _plugin_env(endpoint: str) -> dict:
    """Environment for tensorflow-io 0.37.1's s3 plugin (names from its libtensorflow_io_plugins.so).

    S3_ENDPOINT must carry the scheme: 0.37.1 does not read S3_USE_HTTPS, and a bare host:port is
    spoken to over TLS. Paths are bucket/key (the plugin disables virtual-host addressing), which is
    what moto expects for an IP endpoint. A region (or AWS_EC2_METADATA_DISABLED) keeps the AWS SDK
    from asking the EC2 metadata service at 169.254.169.254 for one."""
    return {
        "S3_ENDPOINT": endpoint,
        "S3_VERIFY_SSL": "0",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


# Inherited settings that could point the SDK or boto3 elsewhere than the emulator.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "S3_USE_HTTPS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (OS-chosen port) with BUCKET created, and os.environ set for the
    s3 plugin (push_model's child process inherits it). Yields {'client', 'endpoint'}."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in _CLEARED:
                mp.delenv(name, raising=False)
            for name, value in _plugin_env(endpoint).items():
                mp.setenv(name, value)
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            client.create_bucket(Bucket=BUCKET)
            yield {"client": client, "endpoint": endpoint}
    finally:
        server.stop()
        werkzeug_log.setLevel(level)


def _keys(client, prefix: str = "") -> dict:
    """{key: bytes} of every object in BUCKET under `prefix`."""
    keys = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return keys


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real SavedModel (tests/tiny_saved_model.py): signature, variables/ and an asset."""
    model_dir = save_affine_model(str(tmp_path_factory.mktemp("tiny")))
    files = files_under(model_dir)
    assert {"saved_model.pb", "assets/labels.txt", "variables/variables.index"} <= set(files)
    return model_dir


def test_push_publishes_every_file_under_an_integer_version(s3, tiny_model):
    base = f"s3://{BUCKET}/models/{MODEL_NAME}"
    local = files_under(tiny_model)

    first = push.push_model(tiny_model, base)
    assert first["strategy"] == "copy" and first["stale"] == []
    assert first["path"] == f"{base}/{first['version']}" and first["version"].isdigit()
    prefix = f"models/{MODEL_NAME}/"
    stored = _keys(s3["client"], prefix)
    # Exactly the model's files, byte for byte, under <version>/; no temporary left behind.
    assert stored == {f"{prefix}{first['version']}/{rel}": data for rel, data in local.items()}
    assert not any(push.TEMP_PREFIX in key for key in stored)

    second = push.push_model(tiny_model, base)
    assert int(second["version"]) > int(first["version"])
    after = _keys(s3["client"], prefix)
    assert {k: v for k, v in after.items() if k.startswith(f"{prefix}{first['version']}/")} == stored
    assert {k: v for k, v in after.items() if k.startswith(f"{prefix}{second['version']}/")} == {
        f"{prefix}{second['version']}/{rel}": data for rel, data in local.items()
    }
    assert len(after) == 2 * len(local)


# What TF Serving does with a model base path: take the largest integer child, load it, run the
# default signature. In a child process that leaves with os._exit: the s3 plugin aborts the
# interpreter at exit (tensorflow/io#2039).
_SERVE_LATEST = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    try:
        import tensorflow as tf
        import tensorflow_io  # noqa: F401  (registers s3://)
        base = sys.argv[1]
        version = max(int(c.rstrip("/")) for c in tf.io.gfile.listdir(base) if c.rstrip("/").isdigit())
        loaded = tf.saved_model.load(f"{base}/{version}")
        x = tf.constant(np.asarray(json.loads(sys.argv[2]), np.float32))
        out = {"version": version, "y": loaded.signatures["serving_default"](x=x)["y"].numpy().tolist()}
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    os._exit(0)
""")


def test_pushed_version_loads_and_serves_from_s3(s3, tiny_model):
    import tensorflow as tf

    base = f"s3://{BUCKET}/models/serve-check"
    pushed = push.push_model(tiny_model, base)
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE_LATEST, base, json.dumps(X)], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"loader exited {proc.returncode}: {proc.stderr[-2000:]}"
    served = json.loads(lines[-1])
    assert "error" not in served, served["error"]
    assert served["version"] == int(pushed["version"])
    local = tf.saved_model.load(tiny_model).signatures["serving_default"](x=tf.constant(X))["y"].numpy()
    np.testing.assert_array_equal(np.asarray(served["y"], np.float32), local)
    assert local.shape == (2, 2)


def test_push_to_a_missing_bucket_fails_and_names_the_destination(s3, tiny_model):
    before = _keys(s3["client"])
    buckets = [b["Name"] for b in s3["client"].list_buckets()["Buckets"]]  # other tests may share the server
    base = "s3://medtfx-no-such-bucket/models/medtfx-seg"
    with pytest.raises(RuntimeError, match=f"to {re.escape(base)} failed"):
        push.push_model(tiny_model, base)
    assert _keys(s3["client"]) == before
    assert [b["Name"] for b in s3["client"].list_buckets()["Buckets"]] == buckets  # no bucket created


def test_a_model_with_an_empty_file_is_published_whole(s3, tmp_path):
    """tensorflow-io 0.37.1's s3 CopyFile refuses zero-byte objects ("Source is a directory or empty
    file"); an exported model can hold one (an empty vocabulary asset), so the push writes those
    instead of copying them, in both phases."""
    src = tmp_path / "model"
    (src / "variables").mkdir(parents=True)
    (src / "assets").mkdir()
    files = {
        "saved_model.pb": b"graph" * 50,
        "fingerprint.pb": b"fp",
        "variables/variables.index": b"index",
        "variables/variables.data-00000-of-00001": b"w" * 99,
        "assets/empty_vocabulary.txt": b"",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    base = f"s3://{BUCKET}/models/with-empty-file"
    pushed = push.push_model(str(src), base)
    prefix = f"models/with-empty-file/{pushed['version']}/"
    assert _keys(s3["client"], "models/with-empty-file/") == {prefix + rel: data for rel, data in files.items()}
