"""Object stores on loopback for tests: moto's S3 server and gcp-storage-emulator, each with a
bucket, the environment pointing boto3 / google-cloud-storage (modules/io/storage.py) at it, and
an upload of a local folder."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from modules.io import storage

BUCKET = "medtfx-data"

# Inherited settings that could point either SDK somewhere other than the loopback server.
CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class Store:
    """A running store: `url` is the bucket's root (s3://BUCKET or gs://BUCKET); `env` the
    variables that make the SDKs use it (already in os.environ while the store runs)."""

    def __init__(self, url: str, env: dict, put):
        self.url = url
        self.env = env
        self._put = put

    def upload(self, local_dir: str, prefix: str) -> str:
        """Every file below local_dir as objects under <url>/<prefix>/; returns that URL."""
        for dirpath, _, filenames in os.walk(local_dir):
            for name in filenames:
                path = os.path.join(dirpath, name)
                key = f"{prefix}/{os.path.relpath(path, local_dir)}"
                with open(path, "rb") as fh:
                    self._put(key, fh.read())
        return f"{self.url}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)


@contextlib.contextmanager
def _environment(values: dict) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in (*CLEARED, *values)}
    for name in CLEARED:
        os.environ.pop(name, None)
    os.environ.update(values)
    storage._store.cache_clear()  # clients are made per environment
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        storage._store.cache_clear()


@contextlib.contextmanager
def moto_s3() -> Iterator[Store]:
    """moto's S3 server on 127.0.0.1 (port chosen by the OS) with BUCKET."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    try:
        with _environment(env):
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield Store(f"s3://{BUCKET}", env, lambda key, data: client.put_object(Bucket=BUCKET, Key=key, Body=data))
    finally:
        server.stop()
        werkzeug_log.setLevel(level)


@contextlib.contextmanager
def gcs_emulator() -> Iterator[Store]:
    """gcp-storage-emulator on 127.0.0.1 (tests/gcs_double.py) with BUCKET."""
    from google.cloud import storage as gcs

    from tests.gcs_double import Emulator

    with Emulator(buckets=[BUCKET]) as emulator:
        env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{emulator.port}"}
        with _environment(env):
            bucket = gcs.Client().bucket(BUCKET)
            yield Store(f"gs://{BUCKET}", env, lambda key, data: bucket.blob(key).upload_from_string(data))
