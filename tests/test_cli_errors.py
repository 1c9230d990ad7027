"""`medtfx` answers user mistakes with one line on stderr naming the thing and the problem, exit
code 2 for usage and 1 for a failure, no traceback (unless --debug), and before any long work;
TensorFlow's start-up lines are not shown."""

import os
import socket
import subprocess
import sys

import pytest

from pipeline import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def restore_logging():
    """Subcommands route logging to the stderr of their time (pipeline/console.py); later tests
    capture another stderr."""
    import logging

    root, urllib3 = logging.getLogger(), logging.getLogger("urllib3")
    saved = (list(root.handlers), root.level, urllib3.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    urllib3.setLevel(saved[2])


@pytest.fixture
def paths(tmp_path):
    """{'file': a regular file, 'dir': an empty folder, 'under_file': a path below a regular
    file (cannot be created, whoever runs the test, root included), 'missing': absent}."""
    regular = tmp_path / "a_file"
    regular.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "image.nii.gz").write_bytes(b"not really")
    return {
        "tmp": str(tmp_path),
        "file": str(regular),
        "dir": str(folder),
        "under_file": str(regular / "sub"),
        "missing": str(tmp_path / "nonexistent"),
        "image": str(tmp_path / "image.nii.gz"),
        "port": _closed_port(),
    }


# (argv template, exit code, text the one stderr line must hold); {names} come from `paths`.
CASES = [
    (["run", "--data", "{missing}", "--workdir", "{tmp}/w"], 2, "--data {missing}: no such file or directory"),
    (["run", "--data", "{dir}", "--workdir", "{under_file}"], 2, "--workdir {under_file}: cannot create"),
    (["run", "--data", "{dir}", "--workdir", "{file}"], 2, "--workdir {file}: exists and is not a folder"),
    (["run", "--data", "{dir}", "--workdir", "{tmp}/w", "--set", "no_such_setting=1"], 2, "no_such_setting"),
    (
        ["plan", "--data", "{dir}", "--output", "{tmp}/p.json", "--budget-minutes", "0"],
        2,
        "budget_minutes: Input should be greater than 0",
    ),
    (["plan", "--data", "{missing}", "--output", "{tmp}/p.json"], 2, "--data {missing}: no such file"),
    (["plan", "--data", "{dir}", "--output", "{under_file}/plan.json"], 2, "--output {under_file}/plan.json"),
    (["plan", "--data", "{dir}", "--output", "{dir}"], 2, "--output {dir}: is a folder"),
    (["demo", "--workdir", "{file}"], 2, "--workdir {file}: exists and is not a folder"),
    (["synth", "{under_file}"], 2, "OUT_DIR {under_file}: cannot create"),
    (["inventory", "{missing}", "--report", "{tmp}/r.json"], 2, "PATH {missing}: no such file or directory"),
    (["inventory", "{dir}", "--report", "{under_file}/r.json"], 2, "--report {under_file}/r.json"),
    (["convert", "{missing}", "{tmp}/o.nii.gz"], 2, "DICOM_DIR: no such folder"),
    (["convert", "{dir}", "{under_file}/o.nii.gz"], 2, "OUTPUT {under_file}/o.nii.gz"),
    (["predict", "--model", "{missing}", "--output", "{tmp}/out", "{image}"], 2, "--model {missing}: no such dir"),
    (["predict", "--model", "{dir}", "--output", "{tmp}/out", "{image}"], 2, "--model {dir}: no saved_model.pb"),
    (["predict", "--model", "{dir}", "--output", "{under_file}", "{image}"], 2, "--output {under_file}: cannot"),
    (["predict", "--output", "{tmp}/out", "{image}"], 2, "exactly one of --model"),
    (["compile", "--output", "{under_file}/p.json"], 2, "--output {under_file}/p.json"),
    (["compile", "--output", "{tmp}/p.json", "--set", "no_such_setting=1"], 2, "no_such_setting"),
    (["compile", "--output", "{tmp}/p.json", "--configmap", "{missing}"], 2, "--configmap {missing}: no such"),
    (
        [
            "deploy",
            "--endpoint",
            "http://127.0.0.1:{port}",
            "--output-dir",
            "{tmp}/k",
            "--allow-placeholders",
            "--set",
            "patient_salt_secret=salt",
        ],
        1,
        "cannot reach the KFP API",
    ),
    (["deploy", "--endpoint", "http://x", "--dry-run", "--output-dir", "{under_file}"], 2, "--output-dir"),
    (["bench", "io", "--json", "{under_file}/b.json"], 2, "--json {under_file}/b.json"),
    (["bench", "dicom", "--json", "{dir}"], 2, "--json {dir}: is a folder"),
    (["run", "--workdir", "{tmp}/w"], 2, "the following arguments are required: --data"),
    (["no-such-command"], 2, "invalid choice"),
]


@pytest.mark.parametrize("argv, code, expected", CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)])
def test_a_user_mistake_is_one_line_and_an_exit_code(paths, capsys, argv, code, expected):
    argv = [a.format(**paths) for a in argv]
    try:
        returned = cli.main(argv)
    except SystemExit as exc:  # argparse and the settings errors exit directly
        returned = exc.code
    err = capsys.readouterr().err
    assert returned == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and expected.format(**paths) in lines[0], lines[0]


def test_run_with_a_missing_dataset_fails_before_the_pipeline_starts(paths, capsys):
    workdir = os.path.join(paths["tmp"], "w")
    assert cli.main(["run", "--data", paths["missing"], "--workdir", workdir]) == 2
    assert not os.path.exists(workdir)  # checked before the workdir (or metadata) was touched


def test_inventory_with_an_unwritable_report_scans_nothing(paths, capsys, monkeypatch):
    from components.image_example_gen import cases

    def find_cases(*_, **__):
        raise AssertionError("the dataset was scanned before the report path was checked")

    monkeypatch.setattr(cases, "find_cases", find_cases)
    assert cli.main(["inventory", paths["dir"], "--report", paths["under_file"] + "/r.json"]) == 2


class PanicException(BaseException):
    """Stands in for pyo3_runtime.PanicException (a BaseException raised by Rust decoders)."""


@pytest.mark.parametrize(
    "argv, raised, code",
    [
        (["settings"], RuntimeError("something broke\nsecond line of detail"), 1),  # one line, exit 1
        (["settings"], PanicException("something broke"), 1),
        (["settings"], KeyboardInterrupt(), 130),
        (["--debug", "settings"], RuntimeError("something broke"), None),  # --debug: the traceback
        (["settings", "--debug"], RuntimeError("something broke"), None),
    ],
)
def test_an_unexpected_failure_is_one_line_unless_debug(monkeypatch, capsys, argv, raised, code):
    def boom(args):
        raise raised

    monkeypatch.setattr(cli, "cmd_settings", boom)
    if code is None:
        with pytest.raises(type(raised), match="something broke"):
            cli.main(argv)
        return
    assert cli.main(argv) == code
    (line,) = capsys.readouterr().err.strip().splitlines()
    expected = "interrupted" if code == 130 else f"error: {type(raised).__name__}: something broke"
    assert line.startswith(expected) and "Traceback" not in line


def test_output_checks_leave_nothing_behind(tmp_path):
    target = tmp_path / "new" / "report.json"
    cli.check_output_file(str(target), "--report")
    assert target.parent.is_dir() and not target.exists()
    cli.check_output_dir(str(tmp_path / "out"), "--output")
    assert os.listdir(tmp_path / "out") == []


def test_tensorflow_start_up_lines_are_not_shown(paths):
    """A subcommand that imports TensorFlow (predict resolving --model) in a fresh process:
    stderr is the one error line, without TF's C++ start-up log."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = ["predict", "--model", paths["dir"], "--output", paths["tmp"] + "/out", paths["image"]]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: --model {paths['dir']}: no saved_model.pb")
    for noise in ("cuDNN", "cuFFT", "oneDNN", "cuda", "tensorflow/core"):
        assert noise not in done.stderr
