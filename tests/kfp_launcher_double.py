"""A test double of the KFP v2 driver + launcher: runs a compiled KFP package task by task on
this machine, the way a Kubeflow Pipelines cluster runs it pod by pod.

For each task of the root DAG, in dependency order, it does what KFP's driver and launcher do
for a container executor:
  * resolves the task's parameters (compiled constants, run parameters with the spec's
    defaults, upstream output parameters) and input artifacts (the upstream task's output
    artifacts: URI, type and the metadata its executor reported);
  * provisions output artifact URIs <pipeline root>/<run id>/<task>/<output key> (creating only
    their parent, as KFP's launcher does) and an output metadata file in a per-task scratch
    directory (the pod's /tmp/kfp_outputs);
  * substitutes the ExecutorInput JSON for `{{$}}` in the executor's args (any other
    placeholder is an error: this double does not pretend to resolve it);
  * runs the spec's `command` + `args` verbatim as a subprocess, with only the image's
    `python` replaced by this interpreter, cwd = the repository, and the environment variables
    the kfp-kubernetes platform spec takes from Secrets (`secretAsEnv`) set from `secrets`;
  * reads the executor output (ExecutorOutput JSON) and hands its artifacts downstream.
Importer nodes become artifacts at their URI; resolver nodes are refused, as KFP's open-source
backend refuses them. Caching, resources, node selectors and PVC mounts are not emulated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Mapping, Optional

from google.protobuf import json_format

EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
# Any other KFP placeholder ({{$.inputs.parameters['x']}}, {{$.outputs.artifacts['y'].uri}}, ...).
OTHER_PLACEHOLDER = re.compile(r"\{\{\$[^}]+\}\}")
IMAGE_PYTHON = ("python", "python3")
LOG_TAIL_CHARS = 4000


class LauncherError(RuntimeError):
    """A task the double cannot run, or that failed: the message names the task."""


@dataclasses.dataclass
class TaskRun:
    """One executed task: what it was given and what it reported."""

    name: str
    executor_input: dict
    executor_output: dict
    outputs: Dict[str, List[dict]]  # output key -> RuntimeArtifact JSON dicts
    log_path: str


def topological_order(tasks: Mapping[str, dict]) -> List[str]:
    """Task names so that every task comes after its `dependentTasks` and after the producers
    of its input artifacts/parameters; ties in name order (reproducible).

    Raises:
        LauncherError: a dependency on an unknown task, or a cycle.
    """
    deps = {}
    for name, task in tasks.items():
        needed = set(task.get("dependentTasks", []))
        inputs = task.get("inputs", {})
        for spec in inputs.get("artifacts", {}).values():
            if "taskOutputArtifact" in spec:
                needed.add(spec["taskOutputArtifact"]["producerTask"])
        for spec in inputs.get("parameters", {}).values():
            if "taskOutputParameter" in spec:
                needed.add(spec["taskOutputParameter"]["producerTask"])
        unknown = needed - set(tasks)
        if unknown:
            raise LauncherError(f"task {name!r} depends on unknown tasks {sorted(unknown)}")
        deps[name] = needed
    order: List[str] = []
    done: set = set()
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in done and deps[n] <= done)
        if not ready:
            raise LauncherError(f"dependency cycle among {sorted(set(tasks) - done)}")
        order.extend(ready)
        done.update(ready)
    return order


def root_parameter_values(spec: dict, overrides: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
    """The run's parameter values: the spec's root defaults, then `overrides` (the run form).

    Raises:
        LauncherError: an override the pipeline does not declare, or a parameter with neither
            a default nor a value (KFP refuses to start such a run).
    """
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(declared)
    if unknown:
        raise LauncherError(f"run parameters {sorted(unknown)} are not declared by the pipeline ({sorted(declared)})")
    values = {}
    for name, definition in declared.items():
        if name in overrides:
            values[name] = overrides[name]
        elif "defaultValue" in definition:
            values[name] = definition["defaultValue"]
        elif not definition.get("isOptional"):
            raise LauncherError(f"run parameter {name!r} has no default and no value")
    return values


def _task_parameters(name: str, task: dict, run_values: Mapping, produced_params: Mapping) -> Dict[str, object]:
    values = {}
    for key, spec in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in spec:
            values[key] = spec["runtimeValue"]["constant"]
        elif "componentInputParameter" in spec:
            root_name = spec["componentInputParameter"]
            if root_name in run_values:
                values[key] = run_values[root_name]
        elif "taskOutputParameter" in spec:
            ref = spec["taskOutputParameter"]
            values[key] = produced_params[ref["producerTask"]][ref["outputParameterKey"]]
        else:
            raise LauncherError(f"task {name!r}: parameter {key!r} has an input kind this double does not know: {spec}")
    return values


def _task_artifacts(name: str, task: dict, produced: Mapping[str, Mapping[str, List[dict]]]) -> Dict[str, dict]:
    artifacts = {}
    for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" not in spec:
            raise LauncherError(f"task {name!r}: input artifact {key!r} is not a task output: {spec}")
        ref = spec["taskOutputArtifact"]
        upstream = produced[ref["producerTask"]]
        if ref["outputArtifactKey"] not in upstream:
            raise LauncherError(
                f"task {name!r}: {ref['producerTask']!r} produced no output {ref['outputArtifactKey']!r} "
                f"(it has {sorted(upstream)})"
            )
        artifacts[key] = {"artifacts": [dict(a) for a in upstream[ref["outputArtifactKey"]]]}
    return artifacts


def _check_executor_input(executor_input: dict) -> None:
    """Strict parse against kfp-pipeline-spec: a misspelt field here would be dropped silently by
    the entrypoint's lenient parse."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())


class LauncherDouble:
    """Runs a KFP package: docs = [PipelineSpec] or [PipelineSpec, PlatformSpec] (the YAML
    documents `medtfx compile` writes).

    work_dir holds the per-task scratch directories and logs; pipeline_root the artifacts
    (default: the spec's defaultPipelineRoot). secrets: {Secret name: {key: value}} standing
    in for the cluster's Secrets. timeout_s bounds each task."""

    def __init__(
        self,
        docs: List[dict],
        work_dir: str,
        repo: str,
        pipeline_root: Optional[str] = None,
        secrets: Optional[Mapping[str, Mapping[str, str]]] = None,
        run_id: str = "run-0",
        timeout_s: float = 900.0,
    ):
        self.spec = docs[0]
        platform = docs[1] if len(docs) > 1 else {}
        self.platform_executors = (
            platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        )
        self.work_dir = os.path.abspath(work_dir)
        self.repo = repo
        self.pipeline_root = (pipeline_root or self.spec.get("defaultPipelineRoot", "")).rstrip("/")
        if not self.pipeline_root:
            raise LauncherError("no pipeline root: pass one or compile it into the spec")
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.run_id = run_id
        self.timeout_s = timeout_s

    def _env(self, executor_label: str) -> Dict[str, str]:
        """This process's environment without any variable a Secret provides anywhere in the
        pipeline (a pod does not inherit the CI runner's), plus this executor's Secret vars."""
        from_secrets = {
            item["envVar"]
            for executor in self.platform_executors.values()
            for secret in executor.get("secretAsEnv", [])
            for item in secret.get("keyToEnv", [])
        }
        env = {k: v for k, v in os.environ.items() if k not in from_secrets}
        for secret in self.platform_executors.get(executor_label, {}).get("secretAsEnv", []):
            name = secret["secretName"]
            for item in secret.get("keyToEnv", []):
                try:
                    env[item["envVar"]] = self.secrets[name][item["secretKey"]]
                except KeyError:
                    raise LauncherError(
                        f"{executor_label}: Secret {name!r} key {item['secretKey']!r} does not exist "
                        "(the pod would not start)"
                    ) from None
        return env

    def _command(self, label: str, container: dict, executor_input: dict) -> List[str]:
        command = list(container.get("command", []))
        if not command:
            raise LauncherError(f"{label}: no command (the image's entrypoint would run; not emulated)")
        if command[0] in IMAGE_PYTHON:
            command[0] = sys.executable
        encoded = json.dumps(executor_input)
        args = []
        for arg in command[1:] + list(container.get("args", [])):
            other = OTHER_PLACEHOLDER.search(arg)
            if other:
                raise LauncherError(f"{label}: placeholder {other.group(0)} not emulated")
            args.append(arg.replace(EXECUTOR_INPUT_PLACEHOLDER, encoded))
        return [command[0]] + args

    def _run_container(self, name: str, label: str, container: dict, component: dict, parameters: dict, artifacts):
        scratch = os.path.join(self.work_dir, "pods", name)
        output_file = os.path.join(scratch, "kfp_outputs", "output_metadata.json")
        os.makedirs(os.path.dirname(output_file), exist_ok=True)
        outputs_def = component.get("outputDefinitions", {})
        output_artifacts = {
            key: {
                "artifacts": [
                    {
                        "name": f"{self.run_id}/{name}/{key}",
                        "type": definition["artifactType"],
                        "uri": f"{self.pipeline_root}/{self.run_id}/{name}/{key}",
                        "metadata": {},
                    }
                ]
            }
            for key, definition in outputs_def.get("artifacts", {}).items()
        }
        output_parameters = {
            key: {"outputFile": os.path.join(scratch, "kfp_outputs", "parameters", key)}
            for key in outputs_def.get("parameters", {})
        }
        executor_input = {
            "inputs": {"parameterValues": parameters, "artifacts": artifacts},
            "outputs": {"artifacts": output_artifacts, "parameters": output_parameters, "outputFile": output_file},
        }
        _check_executor_input(executor_input)
        # KFP's launcher creates the parent of each output's path, not the artifact directory
        # itself (TFX's local launcher does): an executor that assumes it exists fails here.
        for listed in output_artifacts.values():
            os.makedirs(os.path.dirname(listed["artifacts"][0]["uri"]), exist_ok=True)
        for parameter in output_parameters.values():
            os.makedirs(os.path.dirname(parameter["outputFile"]), exist_ok=True)
        log_path = os.path.join(scratch, "log.txt")
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    self._command(label, container, executor_input),
                    cwd=self.repo,
                    env=self._env(label),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise LauncherError(f"task {name!r} timed out after {self.timeout_s:.0f} s; log {log_path}") from None
        if proc.returncode != 0:
            with open(log_path) as fh:
                tail = fh.read()[-LOG_TAIL_CHARS:]
            raise LauncherError(f"task {name!r} exited with {proc.returncode}; log {log_path}:\n{tail}")
        if not os.path.exists(output_file):
            raise LauncherError(f"task {name!r} succeeded but wrote no executor output {output_file}")
        with open(output_file) as fh:
            executor_output = json.load(fh)
        outputs = {}
        for key, listed in output_artifacts.items():
            artifact = dict(listed["artifacts"][0])
            reported = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if reported:  # the launcher records what the executor reported
                artifact["metadata"] = reported[0].get("metadata", {})
                artifact["uri"] = reported[0].get("uri") or artifact["uri"]
            outputs[key] = [artifact]
        return TaskRun(name, executor_input, executor_output, outputs, log_path)

    def run(self, parameters: Optional[Mapping[str, object]] = None, stop_after: Optional[str] = None):
        """Runs every task (or up to and including stop_after); {task name: TaskRun}.

        Raises:
            LauncherError: the first task that cannot run or fails (its log tail included).
        """
        tasks = self.spec["root"]["dag"]["tasks"]
        run_values = root_parameter_values(self.spec, parameters)
        executors = self.spec["deploymentSpec"]["executors"]
        produced: Dict[str, Dict[str, List[dict]]] = {}
        produced_params: Dict[str, Dict[str, object]] = {}
        runs: Dict[str, TaskRun] = {}
        for name in topological_order(tasks):
            task = tasks[name]
            component = self.spec["components"][task["componentRef"]["name"]]
            label = component["executorLabel"]
            executor = executors[label]
            params = _task_parameters(name, task, run_values, produced_params)
            if "resolver" in executor:
                raise LauncherError(f"task {name!r} is a resolver node: KFP's open-source backend cannot run it")
            if "importer" in executor:
                runs[name] = self._import(name, component, executor["importer"], run_values)
            elif "container" in executor:
                artifacts = _task_artifacts(name, task, produced)
                runs[name] = self._run_container(name, label, executor["container"], component, params, artifacts)
            else:
                raise LauncherError(f"task {name!r}: executor kind {sorted(executor)} not emulated")
            produced[name] = runs[name].outputs
            produced_params[name] = runs[name].executor_output.get("parameterValues", {})
            if name == stop_after:
                break
        return runs

    def _import(self, name: str, component: dict, importer: dict, run_values: Mapping) -> TaskRun:
        """An importer node: one artifact at the given URI, of the given type and metadata."""
        uri_spec = importer["artifactUri"]
        uri = uri_spec["constant"] if "constant" in uri_spec else run_values[uri_spec["runtimeParameter"]]
        keys = list(component.get("outputDefinitions", {}).get("artifacts", {}))
        if len(keys) != 1:
            raise LauncherError(f"importer {name!r} declares outputs {keys}, expected one")
        artifact = {
            "name": f"{self.run_id}/{name}/{keys[0]}",
            "type": importer["typeSchema"],
            "uri": uri,
            "metadata": importer.get("metadata", {}),
        }
        return TaskRun(name, {}, {}, {keys[0]: [artifact]}, "")
