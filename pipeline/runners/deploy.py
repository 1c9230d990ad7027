"""`medtfx deploy`: compile the pipeline, upload it to Kubeflow Pipelines as a new pipeline
version (creating the pipeline if absent) and start a run, through `kfp.Client` (KFP 2.x REST
API v2beta1).

plan_deploy() compiles and returns everything that would be sent (DeployPlan); describe() prints
it (`--dry-run` stops there and opens no connection); submit() sends it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import warnings
from typing import Dict, Mapping, Optional

from pipeline.config import PipelineConfig

IMAGE_ENV = "MEDTFX_IMAGE"  # set by CI: <registry>/medtfx-pipeline@sha256:<digest>
TOKEN_ENV = "MEDTFX_KFP_TOKEN"  # optional bearer token for an authenticated KFP endpoint


@dataclasses.dataclass
class DeployPlan:
    """What a deploy sends: the package (path + sha256) and the names/values around it."""

    endpoint: str
    pipeline_name: str
    version_name: str
    experiment: str
    run_name: str
    image: str
    parameters: Dict[str, object]
    pipeline_root: str
    package_path: str
    package_sha256: str
    pipeline_job_path: str
    namespace: Optional[str] = None


def resolve_image(cli_image: Optional[str], cfg: PipelineConfig, env: Mapping[str, str] = os.environ) -> str:
    """--image, else $MEDTFX_IMAGE (CI's freshly pushed digest), else the config's image."""
    return cli_image or env.get(IMAGE_ENV) or cfg.runner.image


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_name(pipeline_name: str, package_sha256: str, now: datetime.datetime) -> str:
    """Unique, sortable version name: <pipeline>-<UTC yyyymmdd-hhmmss>-<sha256[:12]>."""
    return f"{pipeline_name}-{now:%Y%m%d-%H%M%S}-{package_sha256[:12]}"


def plan_deploy(
    cfg: PipelineConfig,
    endpoint: str,
    output_dir: str,
    image: Optional[str] = None,
    experiment: str = "medtfx",
    pipeline_name: Optional[str] = None,
    namespace: Optional[str] = None,
    env: Mapping[str, str] = os.environ,
    now: Optional[datetime.datetime] = None,
    allow_placeholders: bool = False,
) -> DeployPlan:
    """Compiles the pipeline (image and pipeline name resolved) into output_dir; sends nothing.

    Raises:
        ValueError: empty endpoint, or what kubeflow.compile_kubeflow refuses (placeholder
            image/bucket unless allow_placeholders, no patient salt Secret).
    """
    from pipeline.runners import kubeflow

    if not endpoint:
        raise ValueError("--endpoint is empty (CI: is the KFP_ENDPOINT secret set?)")
    name = pipeline_name or cfg.runner.pipeline_name
    # The KFP API server wants a DNS-like pipelineInfo.name; TFX uses it as the MLMD context too.
    runner = cfg.runner.model_copy(update={"pipeline_name": name, "image": resolve_image(image, cfg, env)})
    cfg = cfg.model_copy(update={"runner": runner})
    written = kubeflow.compile_kubeflow(
        cfg, os.path.join(output_dir, f"{name}.json"), allow_placeholders=allow_placeholders
    )
    package_sha = sha256_file(written["kfp_package"])
    version = version_name(name, package_sha, now or datetime.datetime.now(datetime.timezone.utc))
    return DeployPlan(
        endpoint=endpoint,
        pipeline_name=name,
        version_name=version,
        experiment=experiment,
        run_name=f"run-{version}",
        image=cfg.runner.image,
        # The run parameters (kubeflow.RUN_PARAMETERS) keep the defaults compiled into the spec.
        parameters={},
        pipeline_root=cfg.runner.kubeflow_pipeline_root,
        package_path=written["kfp_package"],
        package_sha256=package_sha,
        pipeline_job_path=written["pipeline_job"],
        namespace=namespace,
    )


def describe(plan: DeployPlan) -> str:
    """Human-readable lines of what submit() sends."""
    rows = [
        ("endpoint", plan.endpoint),
        ("namespace", plan.namespace or "(client default)"),
        ("pipeline", plan.pipeline_name),
        ("version", plan.version_name),
        ("experiment", plan.experiment),
        ("run", plan.run_name),
        ("image", plan.image),
        ("parameters", plan.parameters),
        ("pipeline root", plan.pipeline_root),
        ("package", plan.package_path),
        ("package sha256", plan.package_sha256),
        ("pipeline job", plan.pipeline_job_path),
    ]
    return "\n".join(f"{key:>15s}: {value}" for key, value in rows)


def make_client(plan: DeployPlan, env: Mapping[str, str] = os.environ):
    """kfp.Client for the plan's endpoint (bearer token from $MEDTFX_KFP_TOKEN if set).
    Its constructor already calls the API (healthz)."""
    import kfp

    kwargs = {"host": plan.endpoint, "existing_token": env.get(TOKEN_ENV) or None}
    if plan.namespace:
        kwargs["namespace"] = plan.namespace
    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(**kwargs)


def submit(plan: DeployPlan, client) -> Dict[str, str]:
    """Uploads the package as a new version of the pipeline (created empty first if absent),
    then starts a run of exactly that version. Returns the server's ids."""
    pipeline_id = client.get_pipeline_id(plan.pipeline_name)
    if pipeline_id is None:
        body = client.api_models.V2beta1Pipeline(
            display_name=plan.pipeline_name,
            namespace=plan.namespace,
            description="medtfx: TFX medical image segmentation pipeline",
        )
        pipeline_id = client.pipelines.create_pipeline(body=body).pipeline_id
    version = client.upload_pipeline_version(
        plan.package_path,
        plan.version_name,
        pipeline_id=pipeline_id,
        description=f"image {plan.image}, package sha256 {plan.package_sha256}",
    )
    experiment = client.create_experiment(plan.experiment, namespace=plan.namespace)
    run = client.run_pipeline(
        experiment_id=experiment.experiment_id,
        job_name=plan.run_name,
        pipeline_id=pipeline_id,
        version_id=version.pipeline_version_id,
        params=plan.parameters,
        pipeline_root=plan.pipeline_root,
    )
    return {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version.pipeline_version_id,
        "experiment_id": experiment.experiment_id,
        "run_id": run.run_id,
    }
