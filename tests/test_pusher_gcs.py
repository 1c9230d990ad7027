"""push_model to gs:// through TensorFlow's BUILT-IN GCS filesystem (no tensorflow-io), against a
GCS emulator behind a TLS-intercepting proxy (tests/gcs_double.py), all inside a loopback-only
network namespace.

The pytest process only starts the child (`unshare -n python -m tests.test_pusher_gcs WORKDIR`)
and asserts on the JSON report it writes. The child (TensorFlow) and its own child (emulator +
proxy) live in a network namespace that has nothing but `lo`, so no request can reach a real
Google host. Finding recorded by the request log: TF has no GcsFileSystem::CopyFile, so
tf.io.gfile.copy gs->gs is a client-side download + resumable upload, not a server-side rewrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse

import pytest

from tests import gcs_double
from tests.conftest import REPO
from tests.tiny_saved_model import files_under, save_affine_model

BUCKET = "medtfx-test"
PREFIX = "models/seg"
BASE = f"gs://{BUCKET}/{PREFIX}"
INPUT = [[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]]  # (2, 3) batch for the tiny model


def _uploaded_names(log: list) -> list:
    """Object names of the resumable-upload sessions TF started, in request order."""
    names = []
    for method, _, path, _ in log:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        if method == "POST" and query.get("uploadType") == ["resumable"] and "upload_id" not in query:
            names.append(query["name"][0])
    return names


def _scenario(workdir: str) -> dict:
    """Runs INSIDE the loopback-only namespace: two pushes and a load from gs://. Returns the
    report the test asserts on."""
    gcs_double.enter_loopback_only()
    with gcs_double.GcsDoubleProcess(workdir, [BUCKET]) as gcs:
        # Before TensorFlow is imported: its GCS client reads these when it first touches gs://.
        os.environ.update(gcs.environment())
        import tensorflow as tf

        from components.atomic_pusher import push

        src = save_affine_model(workdir)
        local_out = tf.saved_model.load(src).signatures["serving_default"](x=tf.constant(INPUT))["y"]
        local_out = local_out.numpy().tolist()
        t0 = time.monotonic()
        first = push.push_model(src, BASE)
        second = push.push_model(src, BASE)
        push_s = time.monotonic() - t0
        objects = gcs_double.list_objects(gcs.emulator_port, BUCKET, PREFIX + "/")
        remote = {
            name: hashlib.sha256(gcs_double.read_object(gcs.emulator_port, BUCKET, name)).hexdigest()
            for name in objects
        }
        push_log = gcs.log()
        loaded = tf.saved_model.load(second["path"])
        remote_out = loaded.signatures["serving_default"](tf.constant(INPUT))["y"].numpy().tolist()
        # TF's curl really verifies the proxy's certificate: trusting another CA must fail.
        os.makedirs(os.path.join(workdir, "other_ca"))
        other_ca = gcs_double.make_ca_and_server_cert(os.path.join(workdir, "other_ca"))["ca"]
        os.environ["CURL_CA_BUNDLE"] = other_ca
        try:
            tf.io.gfile.exists(f"{BASE}/no-such-object")
            wrong_ca_error = ""
        except tf.errors.OpError as exc:
            wrong_ca_error = str(exc)
        local = {rel: hashlib.sha256(data).hexdigest() for rel, data in files_under(src).items()}
        return {
            "first": first,
            "second": second,
            "push_s": push_s,
            "local": local,
            "remote": remote,
            "local_out": local_out,
            "remote_out": remote_out,
            "push_log": push_log,
            "log": gcs.log(),
            "wrong_ca_error": wrong_ca_error,
        }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The child's report (runs the whole scenario once for all assertions below)."""
    ok, why = gcs_double.loopback_netns_available()
    if not ok:
        pytest.skip(f"needs a loopback-only network namespace so TF's GCS client cannot reach Google: {why}")
    workdir = str(tmp_path_factory.mktemp("gcs_push"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = gcs_double.run_in_loopback_netns(
        [sys.executable, "-m", "tests.test_pusher_gcs", workdir], timeout_s=240, env=env, cwd=REPO
    )
    path = os.path.join(workdir, "report.json")
    assert proc.returncode == 0 and os.path.exists(path), (
        f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    with open(path) as f:
        return json.load(f)


def test_every_file_published_byte_identical_under_the_version(report):
    for result in (report["first"], report["second"]):
        assert result["strategy"] == "copy"
        assert result["path"] == f"{BASE}/{result['version']}"
        assert result["stale"] == []
        version_prefix = f"{PREFIX}/{result['version']}/"
        published = {
            name[len(version_prefix) :]: digest
            for name, digest in report["remote"].items()
            if name.startswith(version_prefix)
        }
        assert "saved_model.pb" in published
        assert published == report["local"]  # same files, same bytes


def test_second_push_is_a_larger_version_and_nothing_else_is_left(report):
    v1, v2 = int(report["first"]["version"]), int(report["second"]["version"])
    assert v2 > v1
    expected = {f"{PREFIX}/{v}/{rel}" for v in (v1, v2) for rel in report["local"]}
    assert set(report["remote"]) == expected  # nothing stray ...
    assert not [name for name in report["remote"] if "/.medtfx-push-" in name]  # ... no temporaries


def test_saved_model_pb_is_the_last_object_written_under_each_version(report):
    uploads = _uploaded_names(report["push_log"])
    for result in (report["first"], report["second"]):
        version_prefix = f"{PREFIX}/{result['version']}/"
        final = [name for name in uploads if name.startswith(version_prefix)]
        assert sorted(final) == sorted(version_prefix + rel for rel in report["local"])
        assert final[-1] == version_prefix + "saved_model.pb"
        # Every temporary upload of this push happened before the first write under <version>/.
        first_final = uploads.index(final[0])
        temps = [i for i, name in enumerate(uploads) if name.startswith(f"{PREFIX}/.medtfx-push-{result['version']}-")]
        assert len(temps) == len(report["local"]) and max(temps) < first_final


def test_all_traffic_went_to_the_google_api_hosts_through_the_proxy(report):
    hosts = {host for _, host, _, _ in report["log"]}
    assert hosts == set(gcs_double.GOOGLE_HOSTS)  # JSON API + storage.googleapis.com reads
    assert all(status != 403 for *_, status in report["log"])  # no refused CONNECT elsewhere
    assert all(status < 500 for *_, status in report["log"])


def test_tf_verifies_the_certificate_chain(report):
    assert "SSL certificate problem" in report["wrong_ca_error"], report["wrong_ca_error"]
    assert any(method == "TLS" and "unknown ca" in path.lower() for method, _, path, _ in report["log"])


def test_loopback_guard_refuses_a_namespace_with_other_interfaces():
    if [name for _, name in socket.if_nameindex()] == ["lo"]:
        pytest.skip("this process already runs where loopback is the only interface")
    with pytest.raises(RuntimeError, match="not in a loopback-only network namespace"):
        gcs_double.enter_loopback_only()


def test_model_loaded_from_gcs_gives_the_local_outputs(report):
    # Same graph, same variables, same CPU kernels: bit-identical outputs.
    assert report["remote_out"] == report["local_out"]


if __name__ == "__main__":
    _workdir = sys.argv[1]
    _report = _scenario(_workdir)
    with open(os.path.join(_workdir, "report.json"), "w") as _f:
        json.dump(_report, _f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip TF's static destructors; the servers are daemon threads
