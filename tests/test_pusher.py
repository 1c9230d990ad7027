"""Atomic push into a TF Serving model base path (components/atomic_pusher)."""

import os

import pytest

from components.atomic_pusher import push


def _fake_saved_model(root):
    """A SavedModel-shaped directory (file contents do not matter to the push)."""
    os.makedirs(os.path.join(root, "variables"))
    os.makedirs(os.path.join(root, "assets"))
    files = {
        "saved_model.pb": b"graph" * 100,
        "fingerprint.pb": b"fp",
        "variables/variables.index": b"index",
        "variables/variables.data-00000-of-00001": b"w" * 1000,
        "assets/vocab.txt": b"a\nb\n",
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as fh:
            fh.write(data)
    return files


def _visible_versions_are_complete(base, files):
    """What a TF Serving poll would see: every integer directory must hold the whole model."""
    if not os.path.exists(base):
        return True
    for name in os.listdir(base):
        if name.isdigit():
            present = {
                os.path.relpath(os.path.join(d, f), os.path.join(base, name))
                for d, _, fs in os.walk(os.path.join(base, name))
                for f in fs
            }
            if present != set(files):
                return False
    return True


def _checking_copy(base, files, log, fail_at=None, check=True):
    """A copy function that checks the visibility invariant before and after every file copy
    (when `check`), and raises on copy number `fail_at` (a simulated crash mid-push)."""
    import shutil

    def copy(src, dst):
        assert not check or _visible_versions_are_complete(base, files), f"half-written version before {dst}"
        if fail_at is not None and len(log) == fail_at:
            raise IOError("simulated failure mid-copy")
        shutil.copyfile(src, dst)
        log.append(os.path.relpath(dst, base))
        assert not check or _visible_versions_are_complete(base, files), f"half-written version after {dst}"

    return copy


def test_local_push_publishes_complete_version_by_rename(tmp_path):
    src, base = str(tmp_path / "model"), str(tmp_path / "serving" / "seg")
    files = _fake_saved_model(src)
    log = []
    out = push.atomic_push(src, base, version=17, copy=_checking_copy(base, files, log))
    assert out == os.path.join(base, "17")
    assert _visible_versions_are_complete(base, files) and push.integer_versions(base) == [17]
    # Files went into a temporary sibling TF Serving ignores, saved_model.pb last.
    assert all(p.startswith(push.TEMP_PREFIX) for p in log) and log[-1].endswith("saved_model.pb")
    assert not push.stale_temporaries(base)
    with open(os.path.join(out, "variables", "variables.data-00000-of-00001"), "rb") as fh:
        assert fh.read() == files["variables/variables.data-00000-of-00001"]


@pytest.mark.parametrize(
    "strategy,fail_at", [("rename", 0), ("rename", 2), ("rename", 4), ("copy", 2), ("copy", 5), ("copy", 8)]
)
def test_failure_mid_push_leaves_nothing_half_written(tmp_path, strategy, fail_at):
    """Failures while uploading the temporary (copies 0-4) or, for the object-store strategy,
    while copying it into the version directory (copies 5-9). The rename strategy keeps the
    invariant at every step; the copy strategy only guarantees the end state."""
    src, base = str(tmp_path / "model"), str(tmp_path / "serving")
    files = _fake_saved_model(src)
    push.atomic_push(src, base, version=1)  # a previous good version stays served
    log = []
    with pytest.raises(IOError, match="simulated"):
        push.atomic_push(
            src,
            base,
            version=2,
            strategy=strategy,
            copy=_checking_copy(base, files, log, fail_at=fail_at, check=strategy == "rename"),
        )
    assert push.integer_versions(base) == [1]
    assert _visible_versions_are_complete(base, files)
    assert not push.stale_temporaries(base)  # the temporary was cleaned up


def test_copy_strategy_writes_saved_model_pb_last_in_the_version_dir(tmp_path):
    """The object-store path (forced on a local dir): the version directory receives every file
    and saved_model.pb only after all others."""
    src, base = str(tmp_path / "model"), str(tmp_path / "serving")
    files = _fake_saved_model(src)
    log = []

    def copy(s, d):
        import shutil

        shutil.copyfile(s, d)
        log.append(os.path.relpath(d, base))

    out = push.atomic_push(src, base, version=5, strategy="copy", copy=copy)
    final = [p for p in log if p.startswith("5" + os.sep)]
    assert len(final) == len(files) and final[-1] == os.path.join("5", "saved_model.pb")
    assert _visible_versions_are_complete(base, files) and not push.stale_temporaries(base)
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))


def test_versions_increase_and_existing_versions_are_never_overwritten(tmp_path):
    src, base = str(tmp_path / "model"), str(tmp_path / "serving")
    _fake_saved_model(src)
    push.atomic_push(src, base, version=2_000_000_000)  # a version "from the future"
    assert push.next_version(base, now=1_700_000_000) == 2_000_000_001
    assert push.next_version(str(tmp_path / "empty"), now=1_700_000_000.7) == 1_700_000_000
    with pytest.raises(FileExistsError):
        push.atomic_push(src, base, version=2_000_000_000)
    os.makedirs(os.path.join(base, ".medtfx-push-3-deadbeef"))  # a crashed push's leftover
    assert push.integer_versions(base) == [2_000_000_000]
    assert push.stale_temporaries(base) == [os.path.join(base, ".medtfx-push-3-deadbeef")]


def test_rejects_a_directory_without_saved_model(tmp_path):
    os.makedirs(tmp_path / "not_a_model")
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        push.atomic_push(str(tmp_path / "not_a_model"), str(tmp_path / "serving"))
    assert push.scheme("s3://bucket/m") == "s3" and push.is_local("/x") and not push.is_local("gs://b/m")


def _run_executor(tmp_path, blessed: bool, base: str):
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components.atomic_pusher.executor import Executor

    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model_artifact")
    files = _fake_saved_model(os.path.join(model.uri, "Format-Serving"))
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed_model")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    Executor().Do(
        {"model": [model], "model_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination)},
    )
    return pushed, files


def test_executor_pushes_blessed_models_only(tmp_path):
    base = str(tmp_path / "serving" / "medtfx-seg")
    pushed, files = _run_executor(tmp_path / "a", blessed=False, base=base)
    assert pushed.get_int_custom_property("pushed") == 0 and not os.path.exists(base)
    pushed, files = _run_executor(tmp_path / "b", blessed=True, base=base)
    assert pushed.get_int_custom_property("pushed") == 1
    destination = pushed.get_string_custom_property("pushed_destination")
    version = pushed.get_string_custom_property("pushed_version")
    assert destination == os.path.join(base, version) and push.integer_versions(base) == [int(version)]
    assert _visible_versions_are_complete(base, files)
    assert os.path.isfile(os.path.join(pushed.uri, "saved_model.pb"))  # archive copy, as TFX does


def test_isolated_push_runs_in_a_child_process_and_reports_back(tmp_path, monkeypatch):
    """s3:// pushes run in a child process (tensorflow-io's s3 plugin aborts at exit); exercise
    that path on a local directory by declaring the local scheme isolated."""
    src, base = str(tmp_path / "model"), str(tmp_path / "serving")
    files = _fake_saved_model(src)
    monkeypatch.setattr(push, "ISOLATED_SCHEMES", ("s3", ""))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    result = push.push_model(src, base)
    assert result["strategy"] == "rename" and result["stale"] == []
    assert push.integer_versions(base) == [int(result["version"])]
    assert _visible_versions_are_complete(base, files)
    os.remove(os.path.join(src, "saved_model.pb"))
    with pytest.raises(RuntimeError, match="FileNotFoundError.*no saved_model.pb"):  # the child's error
        push.push_model(src, base)
