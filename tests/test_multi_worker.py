"""training.distribution=multi_worker on one machine: two worker processes on loopback ports
(TF_CONFIG) run the Trainer's fit path (modules/train/training.py) through
MultiWorkerMirroredStrategy, and their model scores like one worker's trained with the same
seed, steps and global batch (tests/multi_worker_fit.py is the worker)."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
TIMEOUT_S = 600


def _free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(out_dir, distribution, tf_config=None):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(os.path.join(out_dir, f"log-{len(os.listdir(out_dir))}.txt"), "w")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.multi_worker_fit", out_dir, distribution, str(STEPS)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _finish(processes, out_dir):
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    names = sorted(name for name in os.listdir(out_dir) if name.startswith("log"))
    logs = "".join(open(os.path.join(out_dir, name)).read()[-3000:] for name in names)
    assert codes == [0] * len(processes), logs


def _results(out_dir):
    return {
        name[len("result-") : -len(".json")]: json.load(open(os.path.join(out_dir, name)))
        for name in os.listdir(out_dir)
        if name.startswith("result-")
    }


def test_two_workers_train_a_model_as_good_as_one(tmp_path):
    single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
    single_dir.mkdir()
    multi_dir.mkdir()
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    # The single worker runs at the same time: the two-worker pair waits on its collectives anyway.
    processes = [_start(str(single_dir), "default")] + [
        _start(str(multi_dir), "multi_worker", {"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    _finish(processes[1:], str(multi_dir))
    _finish(processes[:1], str(single_dir))

    single = _results(str(single_dir))["single-0"]
    multi = _results(str(multi_dir))
    assert set(multi) == {"worker-0", "worker-1"}
    assert [multi[w]["replicas"] for w in ("worker-0", "worker-1")] == [2, 2]
    # Worker 0 is the chief (no "chief" task in TF_CONFIG): it alone writes the run's history.
    assert [multi[w]["chief"] for w in ("worker-0", "worker-1")] == [True, False]
    assert (multi_dir / "run" / "history.json").exists()
    assert not [p for p in (multi_dir / "run").rglob("*") if "workertemp" in str(p)]
    # Mirrored variables: both workers hold the same model.
    assert multi["worker-0"]["dice"] == pytest.approx(multi["worker-1"]["dice"], abs=1e-6)
    # Well above chance: 40 steps reach about 0.87 here, on one worker and on two.
    assert single["mean_dice"] > 0.6 and multi["worker-0"]["mean_dice"] > 0.6, (single, multi)
    assert multi["worker-0"]["mean_dice"] == pytest.approx(single["mean_dice"], abs=0.05), (single, multi)
