"""The compiled KFP package, executed task by task as the KFP v2 launcher executes it.

tests/kfp_launcher_double.py is a test double of KFP's driver + launcher: it builds each task's
ExecutorInput from the spec and runs the executor's command + args verbatim (only `python`
resolved to this interpreter). The slow test compiles the pipeline with `medtfx compile`, runs
it on tiny phantoms with run parameters set as the dashboard would set them and the patient
salt from a stand-in Secret, and checks every task succeeded and the pushed model predicts.
The fast tests pin the double's own rules (order, parameters, placeholders, secrets).
The run takes minutes: it is skipped unless MEDTFX_KUBEFLOW=1 (`make test-kubeflow`).
"""

import glob
import json
import os

import numpy as np
import pytest
import yaml

from tests import kfp_launcher_double as double

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "registry.example/medtfx-pipeline@sha256:" + "2" * 64
SALT_SECRET = "medtfx-patient-salt"
# Chosen so the six phantoms' patients land on both sides of the split (4 train, 2 eval; see
# test_the_secret_salt_splits_the_phantoms): with no eval case the Evaluator cannot bless.
SALT = "launcher-double-salt-0"
N_CASES = 6
MODEL_NAME = "medtfx-kfp-double"
RUN_BUDGET_MINUTES = 0.5
# Ten executor processes, each importing TensorFlow: minutes, so outside `make test`.
KUBEFLOW_ENV = "MEDTFX_KUBEFLOW"
kubeflow_run = pytest.mark.skipif(
    os.environ.get(KUBEFLOW_ENV) != "1",
    reason=f"runs every task of the compiled spec: set {KUBEFLOW_ENV}=1 (make test-kubeflow)",
)
TINY = [
    "train_steps=20",
    "epochs=1",
    "eval_steps=1",
    "planning.calibration_steps=1",
    "val_dice_cases=1",
    "report_max_cases=2",
    # The test checks the wiring, not the quality of 20 steps: the gate always blesses.
    "min_mean_dice=0",
    # Compiled default; the run parameter (RUN_BUDGET_MINUTES) must win.
    "planning.budget_minutes=2",
]


# --- the double's rules (fast) -----------------------------------------------------------


def _task(deps=(), artifact_from=None, param_from=None):
    task = {"dependentTasks": list(deps), "inputs": {}}
    if artifact_from:
        task["inputs"]["artifacts"] = {
            "x": {"taskOutputArtifact": {"producerTask": artifact_from, "outputArtifactKey": "out"}}
        }
    if param_from:
        task["inputs"]["parameters"] = {
            "p": {"taskOutputParameter": {"producerTask": param_from, "outputParameterKey": "v"}}
        }
    return task


@pytest.mark.parametrize(
    "tasks,expected",
    [
        ({"b": _task(["a"]), "a": _task()}, ["a", "b"]),
        ({"c": _task(artifact_from="a"), "b": _task(), "a": _task()}, ["a", "b", "c"]),
        ({"z": _task(), "y": _task(param_from="z")}, ["z", "y"]),
        (
            {
                "push": _task(["eval", "train"]),
                "eval": _task(["train"]),
                "train": _task(artifact_from="gen"),
                "gen": {},
            },
            ["gen", "train", "eval", "push"],
        ),
    ],
)
def test_topological_order(tasks, expected):
    assert double.topological_order(tasks) == expected


@pytest.mark.parametrize(
    "tasks,message",
    [
        ({"a": _task(["b"]), "b": _task(["a"])}, "cycle"),
        ({"a": _task(artifact_from="ghost")}, "unknown tasks"),
    ],
)
def test_topological_order_refuses_bad_dags(tasks, message):
    with pytest.raises(double.LauncherError, match=message):
        double.topological_order(tasks)


ROOT = {
    "root": {
        "inputDefinitions": {
            "parameters": {
                "data_root": {"parameterType": "STRING", "defaultValue": "/data/input"},
                "budget_minutes": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 30.0},
                "optional": {"parameterType": "STRING", "isOptional": True},
            }
        }
    }
}


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({}, {"data_root": "/data/input", "budget_minutes": 30.0}),
        ({"data_root": "/x"}, {"data_root": "/x", "budget_minutes": 30.0}),
        (
            {"optional": "o", "budget_minutes": 1.5},
            {"data_root": "/data/input", "budget_minutes": 1.5, "optional": "o"},
        ),
    ],
)
def test_root_parameter_values(overrides, expected):
    assert double.root_parameter_values(ROOT, overrides) == expected


def test_root_parameter_values_refuses_unknown_and_missing():
    with pytest.raises(double.LauncherError, match="not declared"):
        double.root_parameter_values(ROOT, {"dataroot": "/x"})
    required = {"root": {"inputDefinitions": {"parameters": {"n": {"parameterType": "STRING"}}}}}
    with pytest.raises(double.LauncherError, match="no default and no value"):
        double.root_parameter_values(required, {})


def _launcher(tmp_path, executors_platform=None, secrets=None):
    spec = {"root": {"dag": {"tasks": {}}}, "defaultPipelineRoot": str(tmp_path / "root")}
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors_platform or {}}}}}
    return double.LauncherDouble([spec, platform], str(tmp_path), REPO, secrets=secrets)


@pytest.mark.parametrize(
    "container,expected",
    [
        (
            {"command": ["python", "-m", "m"], "args": ["--in", "{{$}}", "--beam"]},
            ["<PY>", "-m", "m", "--in", '{"a": 1}', "--beam"],
        ),
        ({"command": ["/bin/tool"], "args": ["{{$}}"]}, ["/bin/tool", '{"a": 1}']),
    ],
)
def test_command_is_the_spec_s_with_only_python_resolved(tmp_path, container, expected):
    import sys

    command = _launcher(tmp_path)._command("X_executor", container, {"a": 1})
    assert command == [sys.executable if c == "<PY>" else c for c in expected]


def test_other_placeholders_are_refused(tmp_path):
    container = {"command": ["python"], "args": ["{{$.inputs.parameters['x']}}"]}
    with pytest.raises(double.LauncherError, match="not emulated"):
        _launcher(tmp_path)._command("X_executor", container, {})


def test_secret_env_replaces_the_inherited_one(tmp_path, monkeypatch):
    salt = {"secretAsEnv": [{"secretName": "s", "keyToEnv": [{"secretKey": "salt", "envVar": "MEDTFX_PATIENT_SALT"}]}]}
    monkeypatch.setenv("MEDTFX_PATIENT_SALT", "from-the-ci-runner")
    launcher = _launcher(tmp_path, {"Gen_executor": salt}, secrets={"s": {"salt": "from-the-secret"}})
    assert launcher._env("Gen_executor")["MEDTFX_PATIENT_SALT"] == "from-the-secret"
    assert "MEDTFX_PATIENT_SALT" not in launcher._env("Trainer_executor")
    missing = _launcher(tmp_path, {"Gen_executor": salt}, secrets={})
    with pytest.raises(double.LauncherError, match="does not exist"):
        missing._env("Gen_executor")


def test_resolver_nodes_are_refused(tmp_path):
    spec = {
        "defaultPipelineRoot": str(tmp_path),
        "root": {"dag": {"tasks": {"r": {"componentRef": {"name": "r"}}}}},
        "components": {"r": {"executorLabel": "r_executor"}},
        "deploymentSpec": {"executors": {"r_executor": {"resolver": {}}}},
    }
    with pytest.raises(double.LauncherError, match="resolver"):
        double.LauncherDouble([spec], str(tmp_path), REPO).run()


def _compile_package(tmp_path, root, *extra):
    from pipeline import cli

    package = tmp_path / "medtfx.yaml"
    settings = [*TINY, f"image={IMAGE}", f"kubeflow_pipeline_root={root}", f"patient_salt_secret={SALT_SECRET}", *extra]
    assert cli.main(["compile", "--output", str(package), *sum((["--set", s] for s in settings), [])]) == 0
    return list(yaml.safe_load_all(package.read_text()))


class _FakeExecutor:
    """Stands in for the executor processes: checks what each would be started with (the TFX
    entrypoint, an importable executor class, every input artifact's type importable as the
    entrypoint imports it) and reports its outputs as a TFX executor does."""

    def __init__(self):
        self.calls = []

    def __call__(self, command, cwd, env, stdout, stderr, timeout):
        import subprocess
        import sys
        from unittest import mock

        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2
        from tfx.orchestration.kubeflow.v2 import compiler_utils
        from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint
        from tfx.utils import import_utils

        from pipeline.runners import kfp_entrypoint, kubeflow

        assert command[:4] == [
            sys.executable,
            "-m",
            kubeflow.ENTRYPOINT_MODULE,
            "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
        ]
        args = dict(zip(command[4::2], command[5::2]))
        import_utils.import_class_by_path(args["--executor_class_path"])
        executor_input = json_format.Parse(args["--json_serialized_invocation_args"], pipeline_spec_pb2.ExecutorInput())
        with mock.patch.dict(compiler_utils.TITLE_TO_CLASS_PATH):  # as the entrypoint does in the pod
            kfp_entrypoint.register_dashboard_types()
            for artifacts in [*executor_input.inputs.artifacts.values(), *executor_input.outputs.artifacts.values()]:
                for artifact in artifacts.artifacts:
                    import_utils.import_class_by_path(entrypoint._retrieve_class_path(artifact.type))
        self.calls.append((args["--executor_class_path"], env, executor_input))
        output = {
            "artifacts": {
                key: {"artifacts": [{"uri": a.artifacts[0].uri, "metadata": {"producer": a.artifacts[0].name}}]}
                for key, a in executor_input.outputs.artifacts.items()
            }
        }
        with open(executor_input.outputs.output_file, "w") as fh:
            json.dump(output, fh)
        return subprocess.CompletedProcess(command, 0)


def test_every_task_of_the_compiled_spec_is_wired(tmp_path, monkeypatch):
    """The whole DAG through the double with the executors faked: commands, class paths,
    artifact types, parameters and artifact hand-over, in seconds."""
    docs = _compile_package(tmp_path, tmp_path / "root")
    fake = _FakeExecutor()
    monkeypatch.setattr(double.subprocess, "run", fake)
    runs = double.LauncherDouble(docs, str(tmp_path / "launcher"), REPO, secrets={SALT_SECRET: {"salt": SALT}}).run(
        {"data_root": "/phantoms", "model_name": MODEL_NAME}
    )
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert set(runs) == set(tasks) and len(fake.calls) == len(tasks)
    by_class = {path: (env, executor_input) for path, env, executor_input in fake.calls}
    gen_env, gen_input = by_class["components.image_example_gen.executor.Executor"]
    assert gen_input.inputs.parameter_values["input_base"].string_value == "/phantoms"
    assert gen_env["MEDTFX_PATIENT_SALT"] == SALT
    assert all(
        "MEDTFX_PATIENT_SALT" not in env for path, (env, _) in by_class.items() if "image_example_gen" not in path
    )
    _, pusher_input = by_class["components.atomic_pusher.executor.Executor"]
    assert pusher_input.inputs.parameter_values["model_name"].string_value == MODEL_NAME
    # Each input is the upstream output its producer reported.
    for name, task in tasks.items():
        for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
            ref = spec["taskOutputArtifact"]
            given = runs[name].executor_input["inputs"]["artifacts"][key]["artifacts"][0]
            assert given["metadata"] == {"producer": f"run-0/{ref['producerTask']}/{ref['outputArtifactKey']}"}


def test_the_secret_salt_splits_the_phantoms():
    """Precondition of the slow run: TFX's own partition function puts the phantoms' patients,
    hashed with SALT, into both splits."""
    import tensorflow as tf
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn

    from modules import features
    from modules.io.volume import salted_hash
    from pipeline.config import make_config
    from pipeline.pipeline import output_config
    from pipeline.tools.phantoms import make_phantom

    split_config = output_config(make_config()).split_config
    buckets = list(np.cumsum([split.hash_buckets for split in split_config.splits]))
    sides = []
    for i in range(N_CASES):
        example = tf.train.Example()
        patient_hash = salted_hash(make_phantom(i, 0).patient_id, SALT)
        example.features.feature[features.PATIENT_HASH].bytes_list.value.append(patient_hash.encode())
        sides.append(_PartitionFn(example, len(buckets), buckets, split_config))
    assert sorted(set(sides)) == [0, 1], sides


# --- the compiled pipeline, run (slow) --------------------------------------------------


@pytest.fixture(scope="module")
def launcher_run(tmp_path_factory):
    from pipeline.tools.phantoms import synthesize

    work = tmp_path_factory.mktemp("kfp-double")
    data = synthesize(str(work / "phantoms"), n_cases=N_CASES)
    root = work / "pipeline-root"
    docs = _compile_package(work, root)
    launcher = double.LauncherDouble(docs, str(work / "launcher"), REPO, secrets={SALT_SECRET: {"salt": SALT}})
    # What a user types into the dashboard's run form; the rest keeps the compiled defaults.
    parameters = {"data_root": data["dicom"], "model_name": MODEL_NAME, "budget_minutes": RUN_BUDGET_MINUTES}
    runs = launcher.run(parameters)
    return docs, runs, str(root)


def _examples(uri):
    import tensorflow as tf

    out = []
    for path in glob.glob(os.path.join(uri, "Split-*", "*.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            out.append(tf.train.Example.FromString(record.numpy()))
    return out


@pytest.mark.slow
@kubeflow_run
def test_every_task_runs_and_hands_its_artifacts_downstream(launcher_run):
    docs, runs, root = launcher_run
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert set(runs) == set(tasks)
    for name, run in runs.items():
        assert all(a[0]["uri"].startswith(root) for a in run.outputs.values()), name
        # Every input is exactly the upstream output (URI and reported metadata), and exists.
        for key, spec in tasks[name].get("inputs", {}).get("artifacts", {}).items():
            ref = spec["taskOutputArtifact"]
            given = run.executor_input["inputs"]["artifacts"][key]["artifacts"][0]
            produced = runs[ref["producerTask"]].outputs[ref["outputArtifactKey"]][0]
            assert given["uri"] == produced["uri"] and given["metadata"] == produced["metadata"], (name, key)
            assert os.listdir(given["uri"]), (name, key)
    examples = runs["ImageExampleGen"].outputs["examples"][0]
    assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval"]


@pytest.mark.slow
@kubeflow_run
def test_run_parameters_reach_the_tasks(launcher_run):
    _, runs, root = launcher_run
    plan_uri = runs["DatasetPlanner"].outputs["plan"][0]["uri"]
    with open(os.path.join(plan_uri, "plan.json")) as fh:
        assert json.load(fh)["budget_minutes"] == RUN_BUDGET_MINUTES
    pushed = runs["Pusher"].outputs["pushed_model"][0]["metadata"]
    assert pushed["pushed"] == 1
    assert os.path.dirname(pushed["pushed_destination"]) == os.path.join(root, "serving", MODEL_NAME)


def _title(artifact: dict) -> str:
    return yaml.safe_load(artifact["type"]["instanceSchema"])["title"]


def _dashboard_file(runs, task: str, key: str, title: str) -> str:
    """The text of a dashboard output: a file at its URI (what KFP's UI reads), of the KFP type
    the UI renders, named for it (KFP's UI shows only artifacts with a display_name)."""
    artifact = runs[task].outputs[key][0]
    assert _title(artifact) == title, (task, key)
    assert artifact["metadata"]["display_name"] == key, (task, key)
    assert os.path.isfile(artifact["uri"]), (task, key)
    with open(artifact["uri"], encoding="utf-8") as fh:
        return fh.read()


@pytest.mark.slow
@kubeflow_run
def test_dashboard_reports_and_metrics(launcher_run):
    """The Markdown / HTML / Metrics outputs the KFP dashboard renders, with their content."""
    _, runs, _ = launcher_run
    inventory = _dashboard_file(runs, "ImageExampleGen", "inventory_report", "system.Markdown")
    assert f"- cases: {N_CASES}: {N_CASES} ingested, 0 quarantined" in inventory
    plan = _dashboard_file(runs, "DatasetPlanner", "plan_report", "system.Markdown")
    assert plan.startswith("# Dataset fingerprint") and "\n# Plan\n" in plan
    summary = _dashboard_file(runs, "Evaluator", "summary", "system.Markdown")
    assert "| overall |" in summary and "## Data validation (ExampleValidator)" in summary
    assert "](" not in summary  # no links to files the dashboard cannot fetch
    html = _dashboard_file(runs, "Evaluator", "report", "system.HTML")
    evaluation_uri = runs["Evaluator"].outputs["evaluation"][0]["uri"]
    pngs = glob.glob(os.path.join(evaluation_uri, "*.png"))
    assert len(pngs) >= 2 and html.count('src="data:image/png;base64,') == len(pngs)
    assert "<table>" in html
    metrics = runs["Evaluator"].outputs["metrics"][0]
    assert _title(metrics) == "system.Metrics" and metrics["metadata"]["display_name"] == "metrics"
    with open(metrics["uri"]) as fh:
        written = json.load(fh)
    per_label = {f"{name}_label_{k}" for name in ("dice", "surface_dice", "hd95_mm") for k in (1, 2)}
    # HD95 is left out for a label no eval case found (no finite distance): Dice always stays.
    assert {"dice_label_1", "dice_label_2", "tfma_mean_dice"} <= set(written) <= per_label | {"tfma_mean_dice"}
    assert all(metrics["metadata"][name] == pytest.approx(value) for name, value in written.items())
    assert all(0.0 <= written[f"dice_label_{k}"] <= 1.0 for k in (1, 2))


@pytest.mark.slow
@kubeflow_run
def test_patients_are_hashed_with_the_secret_salt(launcher_run):
    from modules import features
    from modules.io.volume import salted_hash
    from pipeline.tools.phantoms import make_phantom

    _, runs, _ = launcher_run
    patients = [make_phantom(i, 0).patient_id for i in range(N_CASES)]
    hashes = {
        e.features.feature[features.PATIENT_HASH].bytes_list.value[0].decode()
        for e in _examples(runs["ImageExampleGen"].outputs["examples"][0]["uri"])
    }
    assert hashes == {salted_hash(p, SALT) for p in patients}


@pytest.mark.slow
@kubeflow_run
def test_pushed_model_predicts(launcher_run):
    from pipeline.tools.phantoms import make_phantom
    from tests.test_pipeline_e2e import serve_phantom

    _, runs, _ = launcher_run
    version_dir = runs["Pusher"].outputs["pushed_model"][0]["metadata"]["pushed_destination"]
    assert os.path.exists(os.path.join(version_dir, "saved_model.pb"))
    image, out = serve_phantom(version_dir, make_phantom(20, seed=0))
    mask = out["mask"].numpy()[0]
    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2}
