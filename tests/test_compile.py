"""`medtfx compile --runner kubeflow`: the KFP v2 spec TFX writes, plus our platform additions.

The golden file holds the compiled PipelineJob and the KFP package's PlatformSpec for a
GPU-cloud-like config,
normalised like TFX's own golden tests (no SDK/TFX versions, image name replaced). Regenerate
after an intended DAG change with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_compile.py

and review the diff of tests/golden/kubeflow_pipeline.json.
"""

import copy
import json
import os
import shutil
import subprocess
from unittest import mock

import pytest
import yaml
from google.protobuf import json_format

from pipeline.config import BEAM_PROFILES, make_config
from pipeline.runners import kubeflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "golden", "kubeflow_pipeline.json")
IMAGE = "registry.example/medtfx-pipeline@sha256:" + "0" * 64
GPU_SETTINGS = [
    "trainer_accelerator=nvidia.com/gpu",
    "trainer_accelerator_count=1",
    "trainer_cpu_limit=8",
    "trainer_memory_limit=32",
    'trainer_node_selector={"nvidia.com/gpu.present": "true"}',
    'trainer_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    'kubeflow_pvc_mounts={"medtfx-pipeline-root": "/mnt/pipeline-root"}',
    "kubeflow_pipeline_root=s3://medtfx/pipeline-root",
    f"image={IMAGE}",
    "patient_salt_secret=medtfx-patient-salt",
]
# Outputs the KFP dashboard renders: (task, output key) -> schema title (KFP's MLMD type name).
DASHBOARD_OUTPUTS = {
    ("ImageExampleGen", "inventory_report"): "system.Markdown",
    ("DatasetPlanner", "plan_report"): "system.Markdown",
    ("Evaluator", "summary"): "system.Markdown",
    ("Evaluator", "report"): "system.HTML",
    ("Evaluator", "metrics"): "system.Metrics",
}
TFX_EXECUTOR_MODULE = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
# Core of the DAG; the full node/edge set is compared with the TFX DSL pipeline itself.
CORE_EDGES = {("Transform", "ImageExampleGen"), ("Trainer", "Transform"), ("Pusher", "Trainer")}


def _pb2():
    from kfp.pipeline_spec import pipeline_spec_pb2

    return pipeline_spec_pb2


def _compile(tmp_path, overrides, name="pipeline.json"):
    """Compiles with a salt Secret; the placeholder image/bucket are allowed (nothing runs)."""
    cfg = make_config(["patient_salt_secret=medtfx-patient-salt", *overrides], data_root="/data/input")
    written = kubeflow.compile_kubeflow(cfg, str(tmp_path / name), allow_placeholders=True)
    job = json.load(open(written["pipeline_job"])) if "pipeline_job" in written else None
    with open(written["kfp_package"]) as fh:
        docs = list(yaml.safe_load_all(fh))
    return cfg, job, docs


@pytest.fixture(scope="module")
def gpu_compiled(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("kfp"), GPU_SETTINGS)


def normalise(job: dict, docs: list, image: str) -> dict:
    """Version-, image- and path-independent view of a compile (as TFX's golden tests do)."""

    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in ("sdkVersion", "createTime")}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            return value.replace(image, "<IMAGE>").replace(REPO, "<REPO>")
        return value

    job = copy.deepcopy(job)
    job["labels"] = {k: v for k, v in job.get("labels", {}).items() if k not in ("tfx_version", "tfx_py_version")}
    # The package's PipelineSpec is the job's plus defaultPipelineRoot (checked in
    # test_outputs_parse_strictly_as_kfp_protos): only its PlatformSpec goes in the golden.
    return scrub({"pipeline_job": job, "platform_spec": docs[1] if len(docs) > 1 else {}})


def _differences(a, b, path="$"):
    """JSON paths where a and b differ (for a readable golden-mismatch message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_outputs_parse_strictly_as_kfp_protos(gpu_compiled):
    pb2 = _pb2()
    _, job, docs = gpu_compiled
    # No ignore_unknown_fields: every field must exist in kfp-pipeline-spec's protos.
    parsed_job = json_format.Parse(json.dumps(job), pb2.PipelineJob())
    spec = json_format.Parse(json.dumps(job["pipelineSpec"]), pb2.PipelineSpec())
    assert parsed_job.pipeline_spec["pipelineInfo"]["name"] == "medtfx"
    assert spec.schema_version == "2.1.0"  # the 2.1 `constant` values KFP's backend resolves
    assert len(docs) == 2
    package_spec = json_format.ParseDict(docs[0], pb2.PipelineSpec())
    json_format.ParseDict(docs[1], pb2.PlatformSpec())
    assert package_spec.default_pipeline_root == "s3://medtfx/pipeline-root"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "s3://medtfx/pipeline-root"
    assert docs[0] == {**job["pipelineSpec"], "defaultPipelineRoot": "s3://medtfx/pipeline-root"}


def test_full_dag_and_image(gpu_compiled):
    from pipeline.pipeline import create_pipeline

    cfg, job, _ = gpu_compiled
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    dsl = create_pipeline(cfg, pipeline_root="unused", data_root="unused", baseline_resolver=False)
    # Every DSL node is a task with the same upstream nodes; no Resolver (KFP's open-source
    # backend cannot run resolver executors).
    assert set(tasks) == {c.id for c in dsl.components}
    edges = {(name, dep) for name, task in tasks.items() for dep in task.get("dependentTasks", [])}
    assert edges == {(c.id, up.id) for c in dsl.components for up in c.upstream_nodes}
    assert CORE_EDGES <= edges and not any("resolver" in name for name in tasks)
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(tasks)
    for label, executor in executors.items():
        container = executor["container"]
        assert container["image"] == IMAGE, label
        assert container["command"] == ["python", "-m", kubeflow.ENTRYPOINT_MODULE, TFX_EXECUTOR_MODULE], label
    # Modules by import path: nothing to upload, the image has them.
    params = tasks["Trainer"]["inputs"]["parameters"]
    assert params["run_fn"]["runtimeValue"]["constant"] == "modules.train.trainer.run_fn"
    transform = tasks["Transform"]["inputs"]["parameters"]
    assert (
        transform["preprocessing_fn"]["runtimeValue"]["constant"] == "modules.transform.preprocessing.preprocessing_fn"
    )
    # Cluster default push target: below the pipeline root, not a workdir-relative path.
    assert "s3://medtfx/pipeline-root/serving/medtfx-seg" in json.dumps(tasks)


def test_trainer_gets_gpu_resources_node_selector_and_tolerations(gpu_compiled):
    _, job, docs = gpu_compiled
    spec = job["pipelineSpec"]
    trainer = kubeflow.executor_label(spec, "Trainer")
    executors = spec["deploymentSpec"]["executors"]
    resources = executors[trainer]["container"]["resources"]
    assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "1"}
    assert resources["cpuLimit"] == 8.0 and resources["memoryLimit"] == 32.0  # KFP: "8", "32G"
    assert [label for label, e in executors.items() if "resources" in e["container"]] == [trainer]
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s[trainer]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert k8s[trainer]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert [label for label, e in k8s.items() if "nodeSelector" in e or "tolerations" in e] == [trainer]
    assert [label for label, e in k8s.items() if "secretAsEnv" in e] == ["ImageExampleGen_executor"]
    assert all(
        e["pvcMount"] == [{"constant": "medtfx-pipeline-root", "mountPath": "/mnt/pipeline-root"}] for e in k8s.values()
    ) and set(k8s) == set(executors)


def test_matches_golden(gpu_compiled):
    _, job, docs = gpu_compiled
    actual = normalise(job, docs, IMAGE)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as fh:
            json.dump(actual, fh, indent=1, sort_keys=True)
            fh.write("\n")
    with open(GOLDEN) as fh:
        golden = json.load(fh)
    # The golden itself must still be valid KFP (strict parse), not just equal.
    json_format.ParseDict(golden["pipeline_job"], _pb2().PipelineJob())
    diffs = _differences(golden, actual)
    assert not diffs, (
        f"compiled spec differs from {GOLDEN} at {diffs[:10]}; if intended, "
        "regenerate with UPDATE_GOLDEN=1 pytest tests/test_compile.py"
    )


def test_golden_normalisation_hides_image_and_versions_only(gpu_compiled, tmp_path):
    _, job, docs = gpu_compiled
    other_image = "other.example/medtfx:9"
    swapped = [s.replace(IMAGE, other_image) for s in GPU_SETTINGS]
    _, job2, docs2 = _compile(tmp_path, swapped)
    job2["labels"]["tfx_version"] = "9-9-9"
    assert not _differences(normalise(job, docs, IMAGE), normalise(job2, docs2, other_image))
    _, job3, docs3 = _compile(tmp_path, GPU_SETTINGS + ["train_steps=301"])
    # A user's setting reaches the planner (which keeps it) and the Trainer's defaults.
    tasks = "$.pipeline_job.pipelineSpec.root.dag.tasks."
    assert _differences(normalise(job, docs, IMAGE), normalise(job3, docs3, IMAGE)) == [
        tasks + "DatasetPlanner.inputs.parameters.settings.runtimeValue.constant",
        tasks + "DatasetPlanner.inputs.parameters.user_overrides.runtimeValue.constant",
        tasks + "Trainer.inputs.parameters.custom_config.runtimeValue.constant",
        tasks + "Trainer.inputs.parameters.train_args.runtimeValue.constant",
    ]


@pytest.mark.parametrize(
    "profile,extra,expected",
    [
        ("direct", [], ["--direct_running_mode=in_memory", "--direct_num_workers=1"]),
        (
            "dataflow",
            ["beam_project=proj", "beam_region=europe-west4", "beam_temp_location=gs://b/tmp"],
            [
                "--runner=DataflowRunner",
                "--project=proj",
                "--region=europe-west4",
                "--temp_location=gs://b/tmp",
                f"--sdk_container_image={IMAGE}",
            ],
        ),
        (
            "flink",
            ["beam_job_endpoint=flink-jobserver:8099"],
            [
                "--runner=PortableRunner",
                "--job_endpoint=flink-jobserver:8099",
                "--environment_type=EXTERNAL",
                "--environment_config=localhost:50000",
            ],
        ),
        (
            "spark",
            ['beam_extra_args=["--spark_master_url=spark://spark:7077"]'],
            [
                "--runner=PortableRunner",
                "--job_endpoint=localhost:8099",
                "--environment_type=DOCKER",
                f"--environment_config={IMAGE}",
                "--spark_master_url=spark://spark:7077",
            ],
        ),
    ],
)
def test_beam_profile_args_reach_the_compiled_components(tmp_path, profile, extra, expected):
    assert profile in BEAM_PROFILES
    cfg, job, _ = _compile(tmp_path, [f"image={IMAGE}", f"beam_profile={profile}"] + extra)
    assert cfg.beam_pipeline_args() == expected
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    for label in ("ImageExampleGen_executor", "StatisticsGen_executor", "Transform_executor", "Evaluator_executor"):
        args = executors[label]["container"]["args"]
        assert args[-len(expected) :] == expected, label
    # One runner everywhere (TFX passes the same args to every component), none for direct.
    seen = {arg for e in executors.values() for arg in e["container"]["args"] if arg.startswith("--runner=")}
    assert seen == ({expected[0]} if expected[0].startswith("--runner=") else set())


def test_dataflow_without_project_is_a_clear_error():
    cfg = make_config(["beam_profile=dataflow", "beam_region=europe-west4"])
    with pytest.raises(ValueError, match="beam_project.*beam_temp_location"):
        cfg.beam_pipeline_args()
    profiles = "'direct', 'dataflow', 'flink', 'spark' or 'portable'"
    with pytest.raises(ValueError, match=f"beam_profile: must be one of {profiles}"):
        make_config(["beam_profile=storm"]).beam_pipeline_args()


def test_yaml_output_is_the_kfp_package_only(tmp_path):
    _, job, docs = _compile(tmp_path, [], name="medtfx.yaml")
    assert job is None and not (tmp_path / "medtfx.json").exists()
    # Only the salt Secret is platform-specific here.
    assert list(docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]) == ["ImageExampleGen_executor"]
    assert "resources" not in json.dumps(docs[0]["deploymentSpec"])


def test_resolver_variant_for_vertex(tmp_path):
    _, job, _ = _compile(tmp_path, ["kubeflow_baseline_resolver=true"])
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    assert sum("resolver" in e for e in executors.values()) == 2
    assert "Evaluator" in job["pipelineSpec"]["root"]["dag"]["tasks"]


def test_bad_platform_settings_are_rejected(tmp_path):
    for bad, message in [
        ('trainer_tolerations=[{"key": "g", "operator": "Maybe"}]', "operator"),
        ('trainer_tolerations=[{"key": "g", "colour": "red"}]', "keys"),
    ]:
        cfg = make_config([bad, "patient_salt_secret=s"])
        with pytest.raises(ValueError, match=message):
            kubeflow.compile_kubeflow(cfg, str(tmp_path / "bad.json"), allow_placeholders=True)
    with pytest.raises(ValueError, match="trainer_accelerator_count: Input should be greater than 0"):
        make_config(["trainer_accelerator=nvidia.com/gpu", "trainer_accelerator_count=0"])


@pytest.mark.parametrize("overlay", ["dev", "gpu-cloud"])
def test_configmap_keys_of_the_overlays_map_onto_the_config(overlay):
    directory = os.path.join(REPO, "k8s", "overlays", overlay)
    data = kubeflow.read_configmap(directory)  # base literals merged with the overlay's
    kubectl = shutil.which("kubectl")
    if kubectl:  # the same data kustomize itself renders
        render = subprocess.run(
            [kubectl, "kustomize", directory], check=True, capture_output=True, text=True, timeout=60
        ).stdout
        rendered = [
            d
            for d in yaml.safe_load_all(render)
            if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == kubeflow.CONFIGMAP_NAME
        ]
        assert rendered[0]["data"] == data
    cfg = make_config(kubeflow.configmap_overrides(data))
    assert cfg.serving.serving_base == data["SERVING_MODEL_DIR"] and cfg.serving.model_name == data["MODEL_NAME"]
    assert (cfg.runner.patient_salt_secret, cfg.runner.patient_salt_secret_key) == ("medtfx-patient-salt", "salt")
    if overlay == "dev":  # Pusher writes onto the serving PVC: it is mounted
        assert cfg.runner.kubeflow_pvc_mounts == {
            "medtfx-pipeline-root": "/mnt/pipeline-root",
            "medtfx-serving-models": "/mnt/serving-models",
        }
        assert kubeflow.trainer_resource_spec(cfg) is None
        return
    # gpu-cloud pushes to S3 (its serving PVC is deleted): only the pipeline-root PVC.
    assert cfg.runner.kubeflow_pvc_mounts == {"medtfx-pipeline-root": "/mnt/pipeline-root"}
    assert cfg.runner.trainer_accelerator == data["TRAINER_ACCELERATOR_RESOURCE"] == "nvidia.com/gpu"
    assert cfg.runner.trainer_accelerator_count == int(data["TRAINER_ACCELERATOR_LIMIT"])
    assert cfg.runner.trainer_cpu_limit == 8.0 and cfg.runner.trainer_memory_limit == 32.0
    assert cfg.runner.trainer_node_selector == json.loads(data["TRAINER_NODE_SELECTOR"])
    assert list(cfg.runner.trainer_tolerations) == json.loads(data["TRAINER_TOLERATIONS"])


def test_read_configmap_from_a_render(tmp_path):
    render = tmp_path / "render.yaml"
    render.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "medtfx"}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"A": "1"}},
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": kubeflow.CONFIGMAP_NAME},
                    "data": {"TRAINER_MEMORY_LIMIT": "16Gi"},
                },
            ]
        )
    )
    assert kubeflow.read_configmap(str(render)) == {"TRAINER_MEMORY_LIMIT": "16Gi"}
    assert kubeflow.configmap_overrides({"TRAINER_MEMORY_LIMIT": "16Gi"}) == [
        f"trainer_memory_limit={16 * 2**30 / 1e9}"
    ]
    with pytest.raises(ValueError, match="no ConfigMap named 'missing'"):
        kubeflow.read_configmap(str(render), name="missing")


@pytest.mark.parametrize(
    "text,value", [("8", 8.0), ("500m", 0.5), ("32G", 32e9), ("32Gi", 32 * 2**30), ("1.5M", 1.5e6)]
)
def test_parse_quantity(text, value):
    assert kubeflow.parse_quantity(text) == pytest.approx(value)


def test_parse_quantity_rejects_garbage():
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        kubeflow.parse_quantity("lots")


def test_cli_compile_with_configmap_and_beam_profile(tmp_path, capsys):
    from pipeline import cli

    render = tmp_path / "render.yaml"
    render.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": kubeflow.CONFIGMAP_NAME},
                "data": {
                    "TRAINER_ACCELERATOR_RESOURCE": "nvidia.com/gpu",
                    "TRAINER_ACCELERATOR_LIMIT": "2",
                    "TRAINER_MEMORY_LIMIT": "16G",
                    "TRAINER_NODE_SELECTOR": '{"pool": "gpu"}',
                },
            }
        )
    )
    out = tmp_path / "medtfx.json"
    assert (
        cli.main(
            [
                "compile",
                "--runner",
                "kubeflow",
                "--output",
                str(out),
                "--configmap",
                str(render),
                "--set",
                "trainer_memory_limit=24",
                "--beam-profile",
                "flink",
                "--set",
                "patient_salt_secret=salt-secret",
                "--allow-placeholders",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert str(out) in printed and str(tmp_path / "medtfx.yaml") in printed
    job = json.loads(out.read_text())
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    resources = executors["Trainer_executor"]["container"]["resources"]
    assert resources["accelerator"]["count"] == "2" and resources["memoryLimit"] == 24.0  # --set wins
    assert "--runner=PortableRunner" in executors["Transform_executor"]["container"]["args"]
    platform = list(yaml.safe_load_all((tmp_path / "medtfx.yaml").read_text()))[1]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s == {
        "Trainer_executor": {"nodeSelector": {"labels": {"pool": "gpu"}}},
        "ImageExampleGen_executor": {
            "secretAsEnv": [
                {"secretName": "salt-secret", "keyToEnv": [{"secretKey": "salt", "envVar": "MEDTFX_PATIENT_SALT"}]}
            ]
        },
    }
    ok = ["--set", "patient_salt_secret=s", "--allow-placeholders"]
    assert cli.main(["compile", "--output", str(out), "--set", "beam_profile=dataflow", *ok]) == 2
    assert "beam_project" in capsys.readouterr().err


CLUSTER = [f"image={IMAGE}", "kubeflow_pipeline_root=s3://medtfx/pipeline-root", "patient_salt_secret=salt"]


@pytest.mark.parametrize(
    "settings,allow,message",
    [
        ([s for s in CLUSTER if not s.startswith("image=")], False, "placeholder image=medtfx:0.1.0"),
        (
            [s for s in CLUSTER if not s.startswith("kubeflow_pipeline_root=")],
            False,
            "placeholder kubeflow_pipeline_root=gs://medtfx-pipeline-root",
        ),
        ([s for s in CLUSTER if not s.startswith("patient_salt_secret=")], False, "no patient salt Secret"),
        ([s for s in CLUSTER if not s.startswith("patient_salt_secret=")], True, "no patient salt Secret"),
        (["patient_salt_secret=salt"], False, "image=medtfx:0.1.0 and kubeflow_pipeline_root="),
        (CLUSTER, False, None),
        (["patient_salt_secret=salt"], True, None),
    ],
)
def test_cluster_compile_refuses_placeholders_and_the_default_salt(settings, allow, message):
    cfg = make_config(settings)
    if message is None:
        kubeflow.check_cluster_settings(cfg, allow)
        return
    with pytest.raises(ValueError, match=message) as raised:
        kubeflow.check_cluster_settings(cfg, allow)
    assert "\n" not in str(raised.value)


def test_cli_compile_refuses_placeholders_in_one_line(tmp_path, capsys):
    from pipeline import cli

    out = str(tmp_path / "medtfx.yaml")
    assert cli.main(["compile", "--output", out, "--set", "patient_salt_secret=salt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-placeholders" in err and not os.path.exists(out)
    assert cli.main(["compile", "--output", out, "--set", "patient_salt_secret=salt", "--allow-placeholders"]) == 0


def test_run_parameters_with_the_config_defaults(gpu_compiled):
    _, job, docs = gpu_compiled
    spec = docs[0]
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert {name: p["defaultValue"] for name, p in declared.items()} == {
        "data_root": "/data/input",
        "budget_minutes": 30.0,
        "model_name": "medtfx-seg",
        "serving_base": "",
    }
    assert {p["parameterType"] for p in declared.values()} == {"STRING", "NUMBER_DOUBLE"}
    assert set(declared) == set(kubeflow.RUN_PARAMETERS)
    tasks = spec["root"]["dag"]["tasks"]
    consumers = {
        (task, key): p["componentInputParameter"]
        for task, t in tasks.items()
        for key, p in t["inputs"].get("parameters", {}).items()
        if "componentInputParameter" in p
    }
    assert consumers == {
        ("ImageExampleGen", "input_base"): "data_root",
        ("DatasetPlanner", "budget_minutes"): "budget_minutes",
        ("Pusher", "model_name"): "model_name",
        ("Pusher", "serving_base"): "serving_base",
    }
    serving_root = tasks["Pusher"]["inputs"]["parameters"]["serving_root"]["runtimeValue"]["constant"]
    assert serving_root == "s3://medtfx/pipeline-root/serving"


def test_user_settings_become_run_parameter_defaults(tmp_path):
    _, _, docs = _compile(
        tmp_path, ["planning.budget_minutes=12", "model_name=lungs", "serving_base=s3://models/lungs"], "p.yaml"
    )
    declared = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert declared["budget_minutes"]["defaultValue"] == 12.0
    assert declared["model_name"]["defaultValue"] == "lungs"
    assert declared["serving_base"]["defaultValue"] == "s3://models/lungs"
    _, _, unplanned = _compile(tmp_path, ["planning.enabled=false"], "q.yaml")
    assert "budget_minutes" not in unplanned[0]["root"]["inputDefinitions"]["parameters"]


@pytest.mark.parametrize(
    "setting,expected", [([], True), (["enable_cache=false"], False), (["enable_cache=true"], True)]
)
def test_caching_on_by_default_on_kubeflow(tmp_path, setting, expected):
    _, _, docs = _compile(tmp_path, setting, "c.yaml")
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert {t.get("cachingOptions", {}).get("enableCache", False) for t in tasks.values()} == {expected}


@pytest.mark.parametrize(
    "setting,expected", [([], False), (["enable_cache=true"], True), (["enable_cache=false"], False)]
)
def test_caching_off_by_default_locally(setting, expected):
    from pipeline.pipeline import create_pipeline

    cfg = make_config(setting)
    assert create_pipeline(cfg, pipeline_root="r", data_root="d").enable_cache is expected


def test_custom_artifact_types_are_titled_by_import_path(gpu_compiled):
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint
    from tfx.utils import import_utils

    from components.dataset_planner import artifacts

    _, job, _ = gpu_compiled
    text = json.dumps(job["pipelineSpec"])
    assert "title: medtfx." not in text
    outputs = job["pipelineSpec"]["components"]["DatasetPlanner"]["outputDefinitions"]["artifacts"]
    for key, cls in (("fingerprint", artifacts.DatasetFingerprint), ("plan", artifacts.Plan)):
        schema = _pb2().ArtifactTypeSchema(instance_schema=outputs[key]["artifactType"]["instanceSchema"])
        # What the container entrypoint does with an input artifact's type.
        assert import_utils.import_class_by_path(entrypoint._retrieve_class_path(schema)) is cls


def test_salt_secret_env_follows_the_settings(tmp_path):
    _, _, docs = _compile(
        tmp_path,
        ["patient_salt_secret=hospital-salt", "patient_salt_secret_key=value", "patient_salt_env=SITE_SALT"],
        "s.yaml",
    )
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors == {
        "ImageExampleGen_executor": {
            "secretAsEnv": [
                {"secretName": "hospital-salt", "keyToEnv": [{"secretKey": "value", "envVar": "SITE_SALT"}]}
            ]
        }
    }
    # The compiled ImageExampleGen reads the variable the Secret sets.
    params = docs[0]["root"]["dag"]["tasks"]["ImageExampleGen"]["inputs"]["parameters"]
    assert params["salt_env"]["runtimeValue"]["constant"] == "SITE_SALT"


@pytest.mark.parametrize(
    "keys,expected",
    [
        ([], ["MEDTFX_DICOMWEB_USER", "MEDTFX_DICOMWEB_PASSWORD"]),
        (['data_secret_keys=["MEDTFX_DICOMWEB_TOKEN"]'], ["MEDTFX_DICOMWEB_TOKEN"]),
        (
            ['data_secret_keys=["AWS_ACCESS_KEY_ID","AWS_SECRET_ACCESS_KEY"]'],
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        ),
    ],
)
def test_data_credentials_reach_only_the_ingestion_pod_from_their_secret(tmp_path, keys, expected):
    _, _, docs = _compile(tmp_path, ["data_secret=pacs-credentials", *keys], "d.yaml")
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert list(executors) == ["ImageExampleGen_executor"]
    salt, data = executors["ImageExampleGen_executor"]["secretAsEnv"]
    assert salt["secretName"] == "medtfx-patient-salt"
    assert data == {"secretName": "pacs-credentials", "keyToEnv": [{"secretKey": k, "envVar": k} for k in expected]}


@pytest.mark.parametrize(
    "data_root,cached", [("/data/input", True), ("dicomweb+https://pacs.example.org/dicom-web", False)]
)
def test_ingestion_from_a_pacs_is_never_served_from_the_cache(tmp_path, data_root, cached):
    cfg = make_config(["patient_salt_secret=medtfx-patient-salt"], data_root=data_root)
    written = kubeflow.compile_kubeflow(cfg, str(tmp_path / "p.yaml"), allow_placeholders=True)
    with open(written["kfp_package"]) as fh:
        tasks = next(yaml.safe_load_all(fh))["root"]["dag"]["tasks"]
    assert tasks["ImageExampleGen"]["cachingOptions"].get("enableCache", False) is cached
    assert tasks["Trainer"]["cachingOptions"]["enableCache"] is True


def _output_titles(spec: dict) -> dict:
    """{(task, output key): schema title} of every artifact output in the root DAG."""
    titles = {}
    for task, t in spec["root"]["dag"]["tasks"].items():
        outputs = spec["components"][t["componentRef"]["name"]].get("outputDefinitions", {}).get("artifacts", {})
        for key, definition in outputs.items():
            titles[(task, key)] = yaml.safe_load(definition["artifactType"]["instanceSchema"])["title"]
    return titles


def test_dashboard_outputs_have_kfp_system_titles(gpu_compiled):
    _, job, _ = gpu_compiled
    titles = _output_titles(job["pipelineSpec"])
    assert {k: v for k, v in titles.items() if v.startswith("system.")} == DASHBOARD_OUTPUTS
    # The TFX outputs are unchanged beside them.
    assert titles[("Evaluator", "evaluation")] == "tfx.ModelEvaluation"
    assert titles[("ImageExampleGen", "examples")] == "tfx.Examples"


def test_pods_import_the_dashboard_types_by_title_through_the_entrypoint():
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint
    from tfx.utils import import_utils

    from pipeline.runners import kfp_entrypoint

    def import_by_title(title):
        schema = pipeline_spec_pb2.ArtifactTypeSchema(instance_schema=f"title: {title}\ntype: object\n")
        return import_utils.import_class_by_path(entrypoint._retrieve_class_path(schema))

    with mock.patch.dict(compiler_utils.TITLE_TO_CLASS_PATH):
        with pytest.raises(ImportError):  # TFX alone would look for a module named `system`
            import_by_title("system.Markdown")
        kfp_entrypoint.register_dashboard_types()
        for title in set(DASHBOARD_OUTPUTS.values()):
            assert import_by_title(title).TYPE_NAME == title


@pytest.mark.parametrize("argv", [["kfp_entrypoint"], ["kfp_entrypoint", "os.path"], ["kfp_entrypoint", "tfx.x"]])
def test_entrypoint_runs_only_tfx_kfp_container_modules(argv, capsys):
    from pipeline.runners import kfp_entrypoint

    with pytest.raises(SystemExit) as exited:
        kfp_entrypoint.main(argv)
    assert exited.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_example_gen_driver_starts_through_the_entrypoint_too(gpu_compiled):
    _, job, _ = gpu_compiled
    executor = job["pipelineSpec"]["deploymentSpec"]["executors"]["ImageExampleGen_executor"]
    assert executor["container"]["lifecycle"]["preCacheCheck"]["command"] == [
        "python",
        "-m",
        kubeflow.ENTRYPOINT_MODULE,
        "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver",
    ]


def test_evaluator_summarises_the_validator_anomalies(gpu_compiled):
    _, job, _ = gpu_compiled
    evaluator = job["pipelineSpec"]["root"]["dag"]["tasks"]["Evaluator"]
    assert evaluator["inputs"]["artifacts"]["anomalies"] == {
        "taskOutputArtifact": {"producerTask": "ExampleValidator", "outputArtifactKey": "anomalies"}
    }
