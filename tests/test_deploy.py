"""`medtfx deploy` against a stub KFP API server on loopback (127.0.0.1, ephemeral port).

The stub answers the minimal v2beta1 JSON kfp.Client 2.5 needs and records every request, so
the tests see exactly what a deploy sends: nothing for --dry-run; healthz, pipeline lookup,
pipeline creation (if absent), version upload (the package bytes), experiment, run otherwise.
"""

import datetime
import email.parser
import email.policy
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from pipeline import cli
from pipeline.config import make_config
from pipeline.runners import deploy

API = "/apis/v2beta1"
IMAGE = "registry.example/medtfx-pipeline@sha256:" + "1" * 64
PIPELINE_ROOT = "s3://medtfx-ci/pipeline-root"
MAX_REQUESTS = 50  # the stub refuses more: a retry loop in the client cannot spin forever


class _KfpStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, existing_pipeline: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.existing_pipeline = existing_pipeline
        self.requests = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # seconds per connection: a stuck client cannot hang the test

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {
            "method": method,
            "path": url.path,
            "query": query,
            "body": body,
            "content_type": self.headers.get("Content-Type", ""),
        }
        with self.server.lock:
            self.server.requests.append(record)
            too_many = len(self.server.requests) > MAX_REQUESTS
        status, reply = (429, {"error": "stub: too many requests"}) if too_many else self._route(record)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, r):
        key = (r["method"], r["path"])
        if key == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if key == ("GET", f"{API}/pipelines"):
            name = json.loads(r["query"]["filter"])["predicates"][0]["stringValue"]
            return 200, (
                {"pipelines": [{"pipeline_id": "pipe-old", "display_name": name}], "total_size": 1}
                if self.server.existing_pipeline
                else {}
            )
        if key == ("POST", f"{API}/pipelines"):
            return 200, {"pipeline_id": "pipe-new", **json.loads(r["body"])}
        if key == ("POST", f"{API}/pipelines/upload_version"):
            return 200, {
                "pipeline_id": r["query"]["pipelineid"],
                "pipeline_version_id": "ver-1",
                "display_name": r["query"]["name"],
            }
        if key == ("GET", f"{API}/experiments"):
            return 200, {}
        if key == ("POST", f"{API}/experiments"):
            return 200, {"experiment_id": "exp-1", **json.loads(r["body"])}
        if key == ("POST", f"{API}/runs"):
            return 200, {"run_id": "run-1", **json.loads(r["body"])}
        return 404, {"error": f"stub: {key} not stubbed"}

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture(params=[False, True], ids=["new-pipeline", "existing-pipeline"])
def kfp_stub(request):
    server = _KfpStub(existing_pipeline=request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def _uploaded_file(record) -> bytes:
    """The `uploadfile` part of a multipart/form-data upload."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + record["content_type"].encode() + b"\r\n\r\n" + record["body"]
    )
    parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
    assert len(parts) == 1
    return parts[0].get_payload(decode=True)


def _deploy_args(url, tmp_path, *extra):
    return [
        "deploy",
        "--endpoint",
        url,
        "--output-dir",
        str(tmp_path),
        "--experiment",
        "medtfx-ci",
        "--set",
        "trainer_accelerator=nvidia.com/gpu",
        "--set",
        f"kubeflow_pipeline_root={PIPELINE_ROOT}",
        "--set",
        "patient_salt_secret=medtfx-patient-salt",
        *extra,
    ]


def _printed(out: str) -> dict:
    """The `key: value` lines of deploy.describe() in the command's output."""
    shown = {}
    for line in out.splitlines():
        key, sep, value = line.partition(": ")
        if sep and line.startswith(" "):  # describe() right-aligns its keys
            shown[key.strip()] = value.strip()
    return shown


def test_dry_run_sends_nothing(kfp_stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(deploy.IMAGE_ENV, IMAGE)
    assert cli.main(_deploy_args(kfp_stub.url, tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert kfp_stub.requests == []
    shown = _printed(out)
    package = tmp_path / "medtfx.yaml"
    assert shown["endpoint"] == kfp_stub.url and shown["pipeline"] == "medtfx"
    assert shown["image"] == IMAGE and shown["experiment"] == "medtfx-ci"
    assert shown["package"] == str(package) and shown["parameters"] == "{}"
    assert shown["package sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert re.fullmatch(r"medtfx-\d{8}-\d{6}-[0-9a-f]{12}", shown["version"])
    assert shown["version"].endswith(shown["package sha256"][:12])
    assert "dry run: nothing sent" in out
    # The package carries the image from $MEDTFX_IMAGE and the Trainer's GPU.
    spec = next(yaml.safe_load_all(package.read_text()))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}


def test_deploy_uploads_a_version_and_starts_a_run(kfp_stub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(deploy.IMAGE_ENV, raising=False)
    assert cli.main(_deploy_args(kfp_stub.url, tmp_path, "--image", IMAGE, "--pipeline-name", "medtfx-gpu")) == 0
    shown = _printed(capsys.readouterr().out)
    calls = [(r["method"], r["path"]) for r in kfp_stub.requests]
    create = [("POST", f"{API}/pipelines")] if not kfp_stub.existing_pipeline else []
    assert calls == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"),
        *create,
        ("POST", f"{API}/pipelines/upload_version"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    by_call = {(r["method"], r["path"]): r for r in kfp_stub.requests}
    pipeline_id = "pipe-old" if kfp_stub.existing_pipeline else "pipe-new"
    if create:
        assert json.loads(by_call[create[0]]["body"])["display_name"] == "medtfx-gpu"
    upload = by_call[("POST", f"{API}/pipelines/upload_version")]
    assert upload["query"]["pipelineid"] == pipeline_id
    assert upload["query"]["name"] == shown["version"]
    uploaded = _uploaded_file(upload)
    package = tmp_path / "medtfx-gpu.yaml"
    assert uploaded == package.read_bytes()
    assert hashlib.sha256(uploaded).hexdigest() == shown["package sha256"]
    spec = next(yaml.safe_load_all(uploaded.decode()))
    assert spec["pipelineInfo"]["name"] == "medtfx-gpu"
    trainer = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert trainer["image"] == IMAGE and trainer["resources"]["accelerator"]["type"] == "nvidia.com/gpu"
    experiment = json.loads(by_call[("POST", f"{API}/experiments")]["body"])
    assert experiment["display_name"] == "medtfx-ci"
    run = json.loads(by_call[("POST", f"{API}/runs")]["body"])
    assert run["experiment_id"] == "exp-1" and run["display_name"] == f"run-{shown['version']}"
    assert run["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": "ver-1"}
    assert run["runtime_config"]["pipeline_root"] == PIPELINE_ROOT
    assert "pipeline_spec" not in run  # the run references the uploaded version, no inline spec


def test_image_precedence():
    cfg = make_config(["image=from-config:1"])
    assert deploy.resolve_image("from-flag:1", cfg, {deploy.IMAGE_ENV: "from-env:1"}) == "from-flag:1"
    assert deploy.resolve_image(None, cfg, {deploy.IMAGE_ENV: "from-env:1"}) == "from-env:1"
    assert deploy.resolve_image(None, cfg, {}) == "from-config:1"


def test_version_name_is_timestamp_and_hash():
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert deploy.version_name("medtfx", "ab" * 32, now) == "medtfx-20260102-030405-abababababab"


def test_empty_endpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["deploy", "--endpoint", "", "--dry-run", "--output-dir", str(tmp_path)]) == 2
    assert "KFP_ENDPOINT" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "patient_salt_secret=s"], "placeholder kubeflow_pipeline_root=gs://medtfx-pipeline-root"),
        (["--set", f"kubeflow_pipeline_root={PIPELINE_ROOT}"], "no patient salt Secret"),
    ],
)
def test_deploy_refuses_placeholders_and_the_default_salt(kfp_stub, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv(deploy.IMAGE_ENV, IMAGE)
    args = ["deploy", "--endpoint", kfp_stub.url, "--output-dir", str(tmp_path), *extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert kfp_stub.requests == []  # refused before any connection
