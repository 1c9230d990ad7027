"""The whole configuration: the stages' settings (modules/settings.py) composed into one model.

Sources, later ones winning: the defaults, `--config FILE.yaml`, `--set key=value`. A key is
flat where only one stage has it (`--set augment=false`) or prefixed by its stage
(`--set training.augment=false`). The dotted keys a user set are remembered (`user_keys`): the
planner fills everything else from the dataset fingerprint and records where each value came from.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from modules.settings import (
    STAGES,
    EvaluationSettings,
    IngestionSettings,
    PlanningSettings,
    RunnerSettings,
    ServingSettings,
    TrainingSettings,
    TransformSettings,
)


class ConfigError(ValueError):
    """A setting that cannot be applied; the message is one line meant for the user."""


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data_root: str = Field(
        "", description="Decathlon folder, DICOM tree, manifest CSV or dicomweb+http(s)://HOST/PATH[?QIDO keys]"
    )
    workdir: str = Field("workdir", description="pipeline root, metadata DB and serving base live below this")
    ingestion: IngestionSettings = Field(default_factory=IngestionSettings)
    planning: PlanningSettings = Field(default_factory=PlanningSettings)
    transform: TransformSettings = Field(default_factory=TransformSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    user_keys: Tuple[str, ...] = Field(
        (), description="dotted keys set by --config/--set (the planner leaves them alone)"
    )

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.workdir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.workdir, "metadata.sqlite")

    @property
    def serving_model_base(self) -> str:
        base = self.serving.serving_base or os.path.join(self.workdir, "serving", self.serving.model_name)
        return base if "://" in base else os.path.abspath(base)

    def user_overrides(self) -> Dict[str, Any]:
        """{'stage.key': value} of what the user set, for the planner (JSON-able)."""
        out = {}
        for key in self.user_keys:
            stage, field = key.split(".", 1)
            out[key] = json.loads(getattr(self, stage).model_dump_json(include={field}))[field]
        return out

    def beam_pipeline_args(self) -> List[str]:
        """Beam args of the selected `runner.beam_profile` (see BEAM_PROFILES), then beam_extra_args."""
        r = self.runner
        if r.beam_profile == "direct":
            args = list(r.beam_args)
        elif r.beam_profile == "dataflow":
            missing = [name for name in ("beam_project", "beam_region", "beam_temp_location") if not getattr(r, name)]
            if missing:
                raise ConfigError(f"beam_profile 'dataflow' needs --set {'=... --set '.join(missing)}=...")
            args = [
                "--runner=DataflowRunner",
                f"--project={r.beam_project}",
                f"--region={r.beam_region}",
                f"--temp_location={r.beam_temp_location}",
                # Workers import the Transform module etc.: they need the project's code.
                f"--sdk_container_image={r.beam_sdk_container_image or r.image}",
            ]
        elif r.beam_profile == "portable":
            args = [
                f"--runner={LOCAL_PORTABLE_RUNNER}",
                f"--environment_type={r.beam_environment_type or SUBPROCESS_ENVIRONMENT}",
                f"--environment_config={r.beam_environment_config or local_sdk_worker_command()}",
                f"--sdk_worker_parallelism={r.beam_sdk_worker_parallelism}",
            ]
            if r.beam_job_endpoint:
                args.append(f"--job_endpoint={r.beam_job_endpoint}")
        else:  # flink / spark: a Beam job server (PortableRunner)
            defaults = BEAM_PROFILES[r.beam_profile]
            env_type = r.beam_environment_type or defaults["environment_type"]
            env_config = r.beam_environment_config or (
                r.beam_sdk_container_image or r.image if env_type == "DOCKER" else defaults["environment_config"]
            )
            args = [
                "--runner=PortableRunner",
                f"--job_endpoint={r.beam_job_endpoint or defaults['job_endpoint']}",
                f"--environment_type={env_type}",
            ]
            if env_config:
                args.append(f"--environment_config={env_config}")
        return args + list(r.beam_extra_args)


# Beam runner profiles and their defaults. Flink: a Beam job server next to the Flink cluster
# plus an SDK worker pool sidecar on each task manager (EXTERNAL, the Flink operator's pattern);
# Spark: the Spark job server starting SDK containers (DOCKER, environment_config = the SDK image,
# which needs Beam's /opt/apache/beam/boot); portable: this machine (see LOCAL_PORTABLE_RUNNER).
BEAM_PROFILES = {
    "direct": {},
    "dataflow": {},
    "flink": {
        "job_endpoint": "localhost:8099",
        "environment_type": "EXTERNAL",
        "environment_config": "localhost:50000",
    },
    "spark": {"job_endpoint": "localhost:8099", "environment_type": "DOCKER", "environment_config": ""},
    "portable": {},
}

# 'portable': Beam's PortableRunner on this machine (pipeline/runners/beam_local.py) with its
# local job service, each job's SDK workers started as processes of this Python.
LOCAL_PORTABLE_RUNNER = "pipeline.runners.beam_local.LocalPortableRunner"
SUBPROCESS_ENVIRONMENT = "beam:env:harness_subprocess_python:v1"


def local_sdk_worker_command() -> str:
    """The command line that starts one Beam SDK worker with this interpreter (and so this
    environment's packages): the subprocess environment's config."""
    return f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"


TOP_LEVEL = ("data_root", "workdir")


def _all_keys() -> Dict[str, List[str]]:
    """flat field name -> the dotted keys that have it."""
    keys: Dict[str, List[str]] = {name: [name] for name in TOP_LEVEL}
    for stage, model in STAGES.items():
        for field in model.model_fields:
            keys.setdefault(field, []).append(f"{stage}.{field}")
    return keys


def resolve_key(key: str) -> str:
    """A user's key ('augment', 'training.augment') -> its dotted form; ConfigError if unknown
    or ambiguous, with the nearest known keys."""
    keys = _all_keys()
    dotted = {d for ds in keys.values() for d in ds}
    if key in dotted:
        return key
    if key in keys:
        if len(keys[key]) > 1:
            raise ConfigError(f"{key!r} is a setting of several stages: use one of {', '.join(keys[key])}")
        return keys[key][0]
    near = difflib.get_close_matches(key, sorted(set(keys) | dotted), n=3)
    hint = (
        f" (did you mean {' or '.join(repr(n) for n in near)}?)"
        if near
        else f"; stages: {', '.join(STAGES)} (`medtfx settings` lists every key)"
    )
    raise ConfigError(f"unknown setting {key!r}{hint}")


def parse_value(raw: str) -> Any:
    """JSON where it parses ([1,2,3], 0.5, true, null), else the bare string (False, dice)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _describe_error(key: str, err: pydantic.ValidationError) -> str:
    first = err.errors()[0]
    message = first["msg"]
    expected = (first.get("ctx") or {}).get("expected")
    if first["type"] == "literal_error" and expected:
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        near = difflib.get_close_matches(str(first.get("input")), choices, n=1)
        message = f"must be one of {expected}" + (f" (did you mean {near[0]!r}?)" if near else "")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != key.split(".")[-1])
    if first["type"] in ("missing", "too_long", "too_short") and (where.isdigit() or not where):
        message, where = "wrong number of values", ""
    return f"{key}{'[' + where + ']' if where else ''}: {message}, got {first.get('input')!r}"


def apply(cfg: PipelineConfig, values: Dict[str, Any]) -> PipelineConfig:
    """A new config with {user key: value} applied and validated; their dotted keys join user_keys."""
    data = cfg.model_dump()
    user_keys = list(cfg.user_keys)
    for key, value in values.items():
        dotted = resolve_key(key)
        if "." in dotted:
            stage, field = dotted.split(".", 1)
            data[stage][field] = value
            candidate = {**data[stage]}
            try:
                STAGES[stage].model_validate(candidate)
            except pydantic.ValidationError as err:
                raise ConfigError(_describe_error(dotted, err)) from None
            if dotted not in user_keys:
                user_keys.append(dotted)
        else:
            data[dotted] = value
    data["user_keys"] = tuple(user_keys)
    try:
        return PipelineConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(_describe_error(key, err)) from None


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """['key=value', ...] -> {key: parsed value}; ConfigError on a missing '='."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = parse_value(raw)
    return out


def _flatten(tree: Dict[str, Any]) -> Dict[str, Any]:
    """A YAML/JSON configuration: stage sections ({training: {filters: [...]}}) or flat keys."""
    out = {}
    for key, value in tree.items():
        if key in STAGES:
            if not isinstance(value, dict):
                raise ConfigError(f"section {key!r} must be a mapping of settings")
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def load_config_file(path: str) -> Dict[str, Any]:
    """A YAML (or JSON) file of settings -> {key: value}."""
    import yaml

    try:
        with open(path) as fh:
            tree = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of stage sections or settings")
    return _flatten(tree)


def make_config(
    overrides: Optional[Iterable[str]] = None, config_file: Optional[str] = None, **fields
) -> PipelineConfig:
    """Defaults, then `config_file`, then keyword fields (data_root, workdir or any key), then
    'key=value' overrides."""
    cfg = PipelineConfig()
    if config_file:
        cfg = apply(cfg, load_config_file(config_file))
    top = {k: v for k, v in fields.items() if k in TOP_LEVEL}
    rest = {k: v for k, v in fields.items() if k not in TOP_LEVEL}
    if top:
        cfg = cfg.model_copy(update=top)
    if rest:
        cfg = apply(cfg, rest)
    return apply(cfg, parse_overrides(overrides or []))


def describe_settings() -> str:
    """Every key with its type default and description (for `medtfx settings`)."""
    lines = []
    for stage, model in STAGES.items():
        lines.append(f"[{stage}] {model.__doc__.splitlines()[0]}")
        for name, field in model.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            if isinstance(default, BaseModel):
                default = default.model_dump()
            lines.append(f"  {stage}.{name} = {json.dumps(default, default=str)}  # {field.description or ''}")
    return "\n".join(lines)
