"""Kubeflow Pipelines v2: the KubeflowV2DagRunner compile, the KFP package (pipeline spec plus the
kfp-kubernetes platform spec), and the ConfigMap that carries cluster settings."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from modules.settings import RunnerSettings
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline

# --- Kubeflow Pipelines v2 ------------------------------------------------------------------
# KubeflowV2DagRunner writes a PipelineJob (Vertex AI's format: displayName, labels,
# runtimeConfig and the PipelineSpec under `pipelineSpec`). KFP's open-source API server takes a
# *package* instead: a YAML file whose first document is the PipelineSpec and whose optional
# second document is the PlatformSpec (kfp-kubernetes settings: node selector, tolerations, PVC
# mounts), the format `kfp.compiler` writes. TFX cannot express the kubernetes platform part,
# so compile_kubeflow adds it to the package itself (kubernetes_platform_spec below).

TRAINER_ID = "Trainer"
KUBERNETES_PLATFORM = "kubernetes"
# Fields of kfp-kubernetes' Toleration message (kubernetes_executor_config.proto) we emit.
TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_OPERATORS = {"Exists", "Equal"}
TOLERATION_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}
# ConfigMap `medtfx-pipeline-config` (k8s/base, k8s/overlays/*) key -> PipelineConfig field.
CONFIGMAP_FIELDS = {
    "MODEL_NAME": "model_name",
    "PATIENT_SALT_SECRET": "patient_salt_secret",
    "PATIENT_SALT_SECRET_KEY": "patient_salt_secret_key",
    "SERVING_MODEL_DIR": "serving_base",
    "TRAINER_ACCELERATOR_RESOURCE": "trainer_accelerator",
    "TRAINER_ACCELERATOR_LIMIT": "trainer_accelerator_count",
    "TRAINER_CPU_LIMIT": "trainer_cpu_limit",
    "TRAINER_MEMORY_LIMIT": "trainer_memory_limit",
    "TRAINER_NODE_SELECTOR": "trainer_node_selector",
    "TRAINER_TOLERATIONS": "trainer_tolerations",
}
CONFIGMAP_NAME = "medtfx-pipeline-config"
# The shipped defaults of image and pipeline root: they name nothing that exists on a cluster.
PLACEHOLDER_IMAGE = RunnerSettings.model_fields["image"].default
PLACEHOLDER_PIPELINE_ROOT = RunnerSettings.model_fields["kubeflow_pipeline_root"].default
# Tasks that hash patient IDs, so their pods get the salt Secret as an environment variable.
SALTED_TASKS = ("ImageExampleGen",)
# Every container runs TFX's module through this one (pipeline/runners/kfp_entrypoint.py), which
# lets TFX import the dashboard's system.* artifact types by their schema title.
ENTRYPOINT_MODULE = "pipeline.runners.kfp_entrypoint"
# Run parameters (the dashboard's "Create run" form): name -> what it sets.
RUN_PARAMETERS = {
    "data_root": "dataset as the pods see it (Decathlon folder, DICOM tree, manifest CSV)",
    "budget_minutes": "planning.budget_minutes: the Trainer's wall-time budget",
    "model_name": "TF Serving model name; the model goes to <pipeline root>/serving/<model_name>",
    "serving_base": "TF Serving model base path; empty = <pipeline root>/serving/<model_name>",
}


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity ('8', '500m', '32G', '32Gi') as a plain number (cores or bytes),
    parsed by the Kubernetes client library."""
    from kubernetes.utils import parse_quantity as kubernetes_quantity

    try:
        return float(kubernetes_quantity(str(text).strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 8, 500m, 32G, 32Gi)") from None


def configmap_overrides(data: Dict[str, str]) -> List[str]:
    """`--set key=value` strings for the keys of ConfigMap medtfx-pipeline-config.

    Memory becomes GB (KFP's unit), CPU cores; JSON keys are passed through. The pipeline-root
    PVC (and the serving-model PVC when SERVING_MODEL_DIR lies on it) become PVC mounts for
    every pipeline pod."""
    overrides = []
    for key, field in CONFIGMAP_FIELDS.items():
        if key not in data:
            continue
        value = data[key]
        if key == "TRAINER_MEMORY_LIMIT":
            value = json.dumps(parse_quantity(value) / 1e9)
        elif key == "TRAINER_CPU_LIMIT":
            value = json.dumps(parse_quantity(value))
        overrides.append(f"{field}={value}")
    mounts = {}
    if data.get("PIPELINE_ROOT_PVC") and data.get("PIPELINE_ROOT_MOUNT"):
        mounts[data["PIPELINE_ROOT_PVC"]] = data["PIPELINE_ROOT_MOUNT"]
    serving_mount = data.get("SERVING_MODELS_MOUNT", "")
    if (
        data.get("SERVING_MODELS_PVC")
        and serving_mount
        and data.get("SERVING_MODEL_DIR", "").startswith(serving_mount.rstrip("/") + "/")
    ):
        mounts[data["SERVING_MODELS_PVC"]] = serving_mount
    if mounts:
        overrides.append(f"kubeflow_pvc_mounts={json.dumps(mounts, sort_keys=True)}")
    return overrides


def _kustomization_literals(directory: str, name: str) -> Dict[str, str]:
    """ConfigMap `name`'s literals as a kustomization directory generates them: its bases
    (directory resources) first, then its own configMapGenerator (merge)."""
    import yaml

    with open(os.path.join(directory, "kustomization.yaml")) as fh:
        kustomization = yaml.safe_load(fh) or {}
    data: Dict[str, str] = {}
    for resource in kustomization.get("resources", []):
        base = os.path.join(directory, resource)
        if os.path.isfile(os.path.join(base, "kustomization.yaml")):
            data.update(_kustomization_literals(base, name))
    for generator in kustomization.get("configMapGenerator", []):
        if generator.get("name") != name:
            continue
        if generator.get("files") or generator.get("envs"):
            raise ValueError(
                f"{directory}: ConfigMap {name!r} uses files/envs; pass a rendered "
                "YAML instead (kubectl kustomize DIR > render.yaml)"
            )
        data.update(lit.split("=", 1) for lit in generator.get("literals", []))
    return data


def read_configmap(path: str, name: str = CONFIGMAP_NAME) -> Dict[str, str]:
    """`data` of ConfigMap `name` from a kustomization directory (e.g. k8s/overlays/gpu-cloud:
    literals of it and its bases, no kubectl needed) or a YAML/JSON file: `kubectl get configmap
    -o yaml` output or a whole render (`kubectl kustomize ...`, several documents)."""
    import yaml

    if os.path.isdir(path):
        data = _kustomization_literals(path, name)
        if not data:
            raise ValueError(f"{path}: no ConfigMap named {name!r} in its kustomization")
        return data
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]
    items = [item for d in docs for item in (d.get("items") or [d])]
    for item in items:
        if item.get("kind") == "ConfigMap" and item.get("metadata", {}).get("name") == name:
            return {k: str(v) for k, v in (item.get("data") or {}).items()}
    raise ValueError(f"{path}: no ConfigMap named {name!r} in it")


def trainer_resource_spec(cfg: PipelineConfig):
    """KFP ResourceSpec (CPU/memory limits, accelerator) for the Trainer pod; None if unset.

    KFP's driver turns it into container limits: cpu '<n>', memory '<n>G' and
    `accelerator.type` (a Kubernetes resource name, e.g. nvidia.com/gpu) = `accelerator.count`.
    (Vertex AI instead expects accelerator types such as NVIDIA_TESLA_T4.)"""
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if cfg.runner.trainer_cpu_limit < 0 or cfg.runner.trainer_memory_limit < 0:
        raise ValueError("trainer_cpu_limit / trainer_memory_limit must be >= 0")
    if cfg.runner.trainer_cpu_limit:
        spec.cpu_limit = float(cfg.runner.trainer_cpu_limit)
    if cfg.runner.trainer_memory_limit:
        spec.memory_limit = float(cfg.runner.trainer_memory_limit)
    if cfg.runner.trainer_accelerator:
        if cfg.runner.trainer_accelerator_count < 1:
            raise ValueError(f"trainer_accelerator_count must be >= 1, got {cfg.runner.trainer_accelerator_count}")
        spec.accelerator.type = cfg.runner.trainer_accelerator
        spec.accelerator.count = int(cfg.runner.trainer_accelerator_count)
    return spec if spec.ByteSize() else None


def _check_tolerations(tolerations) -> List[dict]:
    """Tolerations as kfp-kubernetes JSON; a clear error for anything Kubernetes would reject."""
    out = []
    for i, tol in enumerate(tolerations):
        if not isinstance(tol, dict) or set(tol) - TOLERATION_FIELDS:
            raise ValueError(
                f"trainer_tolerations[{i}] = {tol!r}: expected an object with keys from {sorted(TOLERATION_FIELDS)}"
            )
        operator = tol.get("operator", "Equal")
        if operator not in TOLERATION_OPERATORS or tol.get("effect", "") not in TOLERATION_EFFECTS:
            raise ValueError(
                f"trainer_tolerations[{i}] = {tol!r}: operator must be one of "
                f"{sorted(TOLERATION_OPERATORS)}, effect one of {sorted(TOLERATION_EFFECTS)}"
            )
        if operator == "Exists" and tol.get("value"):
            raise ValueError(f"trainer_tolerations[{i}] = {tol!r}: operator Exists takes no value")
        out.append(dict(tol))
    return out


def executor_label(pipeline_spec: dict, task: str) -> str:
    """Executor label of a root DAG task (e.g. 'Trainer' -> 'Trainer_executor')."""
    component = pipeline_spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return pipeline_spec["components"][component]["executorLabel"]


def kubernetes_platform_spec(cfg: PipelineConfig, pipeline_spec: dict) -> dict:
    """PlatformSpec JSON for kfp-kubernetes: Trainer node selector + tolerations, PVC mounts on
    every container executor, the patient salt from its Secret as an environment variable in the
    pods that hash patients (SALTED_TASKS). {} when there is nothing to set.

    Shape (kfp-kubernetes KubernetesExecutorConfig per executor label):
      {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {"Trainer_executor":
        {"nodeSelector": {"labels": {...}}, "tolerations": [...], "pvcMount": [...]},
        "ImageExampleGen_executor": {"secretAsEnv": [{"secretName": ..., "keyToEnv":
        [{"secretKey": "salt", "envVar": "MEDTFX_PATIENT_SALT"}]}]}}}}}}"""
    executors: Dict[str, dict] = {}
    if cfg.runner.kubeflow_pvc_mounts:
        mounts = [{"constant": pvc, "mountPath": path} for pvc, path in sorted(cfg.runner.kubeflow_pvc_mounts.items())]
        for label, executor in pipeline_spec["deploymentSpec"]["executors"].items():
            if "container" in executor:
                executors[label] = {"pvcMount": [dict(m) for m in mounts]}
    if cfg.runner.patient_salt_secret:
        salt = {
            "secretName": cfg.runner.patient_salt_secret,
            "keyToEnv": [{"secretKey": cfg.runner.patient_salt_secret_key, "envVar": cfg.ingestion.patient_salt_env}],
        }
        for task in SALTED_TASKS:
            if task in pipeline_spec["root"]["dag"]["tasks"]:
                executors.setdefault(executor_label(pipeline_spec, task), {})["secretAsEnv"] = [salt]
    trainer = executor_label(pipeline_spec, TRAINER_ID)
    if cfg.runner.trainer_node_selector:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.runner.trainer_node_selector.items()):
            raise ValueError(
                f"trainer_node_selector {cfg.runner.trainer_node_selector!r}: labels and values must be strings"
            )
        executors.setdefault(trainer, {})["nodeSelector"] = {"labels": dict(cfg.runner.trainer_node_selector)}
    if cfg.runner.trainer_tolerations:
        executors.setdefault(trainer, {})["tolerations"] = _check_tolerations(cfg.runner.trainer_tolerations)
    if not executors:
        return {}
    return {"platforms": {KUBERNETES_PLATFORM: {"deploymentSpec": {"executors": executors}}}}


def kubeflow_config(cfg: PipelineConfig) -> PipelineConfig:
    """cfg with cluster defaults: the Pusher pushes below the pipeline root unless serving_base
    is set (a workdir-relative path means nothing inside a pod)."""
    if cfg.serving.serving_base:
        return cfg
    root = cfg.runner.kubeflow_pipeline_root.rstrip("/")
    serving = cfg.serving.model_copy(update={"serving_base": f"{root}/serving/{cfg.serving.model_name}"})
    return cfg.model_copy(update={"serving": serving})


def check_cluster_settings(cfg: PipelineConfig, allow_placeholders: bool = False) -> None:
    """Refuses a cluster compile that would run with the shipped placeholder image or bucket
    (unless allow_placeholders) or hash patients with the public default salt.

    Raises:
        ValueError: one line naming the setting to change.
    """
    if not allow_placeholders:
        placeholders = [
            f"{name}={value}"
            for name, value, placeholder in (
                ("image", cfg.runner.image, PLACEHOLDER_IMAGE),
                ("kubeflow_pipeline_root", cfg.runner.kubeflow_pipeline_root, PLACEHOLDER_PIPELINE_ROOT),
            )
            if value == placeholder
        ]
        if placeholders:
            raise ValueError(
                f"placeholder {' and '.join(placeholders)}: set your registry's image / your bucket with --set "
                "(or --configmap), or pass --allow-placeholders for a compile that will not run"
            )
    if not cfg.runner.patient_salt_secret:
        raise ValueError(
            "no patient salt Secret: create one (k8s/README.md) and --set patient_salt_secret=NAME; "
            "without it pods hash patient IDs with the public default salt"
        )


def run_parameters(cfg: PipelineConfig) -> Dict[str, Any]:
    """{name: tfx RuntimeParameter} of RUN_PARAMETERS, defaults from cfg (before kubeflow_config:
    serving_base stays empty unless the user set it, so model_name alone moves the push).
    budget_minutes only when the planner runs."""
    from tfx.orchestration import data_types

    defaults: Dict[str, Any] = {
        "data_root": cfg.data_root or "/data/input",
        "budget_minutes": float(cfg.planning.budget_minutes),
        "model_name": cfg.serving.model_name,
        "serving_base": cfg.serving.serving_base,
    }
    if not cfg.planning.enabled:
        del defaults["budget_minutes"]
    return {
        name: data_types.RuntimeParameter(name=name, ptype=type(value), default=value)
        for name, value in defaults.items()
    }


def custom_type_class_paths(pipeline) -> Dict[str, str]:
    """{TYPE_NAME: import path} of the pipeline's artifact types TFX's KFP compiler does not know.

    The compiler writes such a type's TYPE_NAME as its schema title and the container
    entrypoint imports the title as a class path (kubeflow_v2_entrypoint_utils
    _retrieve_class_path): 'medtfx.Plan' would not import, 'components....Plan' does.
    The dashboard's types keep their KFP titles (system.Markdown, ...: what KFP's UI renders);
    ENTRYPOINT_MODULE maps those to classes in the pods."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    from components.dashboard import artifacts as dashboard

    types = set()
    for component in pipeline.components:
        for channel in [*component.inputs.values(), *component.outputs.values()]:
            types.add(channel.type)
    known = set(compiler_utils.TITLE_TO_CLASS_PATH.values())
    return {
        t.TYPE_NAME: f"{t.__module__}.{t.__qualname__}"
        for t in types
        if f"{t.__module__}.{t.__qualname__}" not in known
        and f"tfx.{t.__qualname__}" not in compiler_utils.TITLE_TO_CLASS_PATH
        and t.TYPE_NAME not in dashboard.TITLE_TO_CLASS_PATH
    }


def _through_entrypoint(label: str, command: List[str]) -> List[str]:
    """TFX's ['python', '-m', MODULE] as ['python', '-m', ENTRYPOINT_MODULE, MODULE]."""
    if len(command) != 3 or command[:2] != ["python", "-m"]:
        raise ValueError(f"{label}: unexpected container command {command} (expected python -m MODULE)")
    return ["python", "-m", ENTRYPOINT_MODULE, command[2]]


def route_through_entrypoint(pipeline_spec: dict) -> dict:
    """pipeline_spec with every container command (and the ExampleGen driver's pre-cache-check
    command) run through ENTRYPOINT_MODULE; changed in place and returned."""
    for label, executor in pipeline_spec["deploymentSpec"]["executors"].items():
        container = executor.get("container")
        if container is None:
            continue
        container["command"] = _through_entrypoint(label, container["command"])
        check = container.get("lifecycle", {}).get("preCacheCheck")
        if check is not None:
            check["command"] = _through_entrypoint(label, check["command"])
    return pipeline_spec


def _retitle(value, titles: Dict[str, str]):
    """value (spec JSON) with every 'title: TYPE_NAME' line of an instance schema replaced,
    including inside the JSON-encoded inputs-spec args."""
    if isinstance(value, dict):
        return {k: _retitle(v, titles) for k, v in value.items()}
    if isinstance(value, list):
        return [_retitle(v, titles) for v in value]
    if isinstance(value, str):
        for type_name, path in titles.items():
            for newline in ("\n", "\\n"):  # a newline, or one escaped inside JSON text
                value = value.replace(f"title: {type_name}{newline}", f"title: {path}{newline}")
        return value
    return value


def build_kubeflow_job(cfg: PipelineConfig, parameters: Optional[Dict[str, Any]] = None) -> dict:
    """The TFX-compiled PipelineJob dict (schema 2.1: KFP's open-source backend only resolves
    the 2.1 `constant` parameter values), Trainer resources attached, custom artifact types
    titled by import path (the dashboard's keep KFP's system.* titles), containers started
    through ENTRYPOINT_MODULE, run parameters with their defaults in the root inputDefinitions
    (parameters: run_parameters(cfg) of the config before kubeflow_config)."""
    from tfx import v1 as tfx

    parameters = run_parameters(cfg) if parameters is None else parameters
    pipeline = create_pipeline(
        cfg,
        pipeline_root=cfg.runner.kubeflow_pipeline_root,
        data_root=parameters["data_root"],
        beam_args=cfg.beam_pipeline_args(),
        baseline_resolver=cfg.runner.kubeflow_baseline_resolver,
        enable_cache=True if cfg.runner.enable_cache is None else cfg.runner.enable_cache,
        run_parameters={
            **{k: v for k, v in parameters.items() if k != "data_root"},
            "serving_root": cfg.runner.kubeflow_pipeline_root.rstrip("/") + "/serving",
        },
    )
    resources = trainer_resource_spec(cfg)
    if resources is not None:
        trainer = next(c for c in pipeline.components if c.id == TRAINER_ID)
        trainer.with_platform_config(resources)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=cfg.runner.image, use_pipeline_spec_2_1=True
        )
    )
    job = runner.run(pipeline, write_out=False)
    job["pipelineSpec"] = route_through_entrypoint(_retitle(job["pipelineSpec"], custom_type_class_paths(pipeline)))
    # TFX declares the root parameters without defaults; KFP's form shows these.
    root_parameters = job["pipelineSpec"]["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, spec in root_parameters.items():
        spec.update(defaultValue=parameters[name].default, isOptional=True, description=RUN_PARAMETERS.get(name, ""))
    return job


def kfp_package_docs(cfg: PipelineConfig, job: dict) -> List[dict]:
    """[PipelineSpec] or [PipelineSpec, PlatformSpec] for a KFP package; the PipelineJob's
    pipeline root becomes the spec's defaultPipelineRoot."""
    spec = dict(job["pipelineSpec"])
    root = job.get("runtimeConfig", {}).get("gcsOutputDirectory")
    if root:
        spec["defaultPipelineRoot"] = root
    platform = kubernetes_platform_spec(cfg, spec)
    return [spec, platform] if platform else [spec]


def write_kfp_package(path: str, docs: List[dict]) -> str:
    """Writes the package YAML (documents in order, keys sorted, so the bytes are reproducible)."""
    import yaml

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(
            f"# PIPELINE DEFINITION\n# Name: {docs[0]['pipelineInfo']['name']}\n"
            "# KFP package written by `medtfx compile` (TFX KubeflowV2DagRunner + platform spec)\n"
        )
        yaml.safe_dump_all(docs, fh, sort_keys=True)
    return path


def compile_kubeflow(cfg: PipelineConfig, output_file: str, allow_placeholders: bool = False) -> Dict[str, str]:
    """Compiles the DAG for Kubeflow Pipelines v2 with the project's image, the Trainer's GPU
    resources, the Beam profile's args, the run parameters (RUN_PARAMETERS) and the salt
    Secret.

    output_file *.json: the TFX PipelineJob JSON (Vertex AI format; the PipelineSpec is its
    `pipelineSpec`) there, plus the KFP package next to it as *.yaml. output_file *.yaml/*.yml:
    only the KFP package (what `medtfx deploy` and the KFP dashboard upload take). KFP itself
    only serialises platform specs (node selector, tolerations, PVCs, secrets) to YAML.
    Returns {"pipeline_job": path (json only), "kfp_package": path}.

    Raises:
        ValueError: placeholder image/bucket (unless allow_placeholders), no salt Secret, or
            settings Kubernetes would reject.
    """
    check_cluster_settings(cfg, allow_placeholders)
    parameters = run_parameters(cfg)
    cfg = kubeflow_config(cfg)
    job = build_kubeflow_job(cfg, parameters)
    docs = kfp_package_docs(cfg, job)
    written = {}
    if output_file.endswith((".yaml", ".yml")):
        package = output_file
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        with open(output_file, "w") as fh:
            json.dump(job, fh, indent=1, sort_keys=True)
        written["pipeline_job"] = output_file
        package = os.path.splitext(output_file)[0] + ".yaml"
    written["kfp_package"] = write_kfp_package(package, docs)
    return written
