"""The medtfx DAG, in one place.

ImageExampleGen -> StatisticsGen (metadata only) -> SchemaGen -> ExampleValidator
ImageExampleGen -> DatasetPlanner (fingerprint + plan) -> Transform (schema: ExampleSchemaGen)
                -> Trainer -> Evaluator (+ last blessed model) -> Pusher (TF Serving model base path)
The plan feeds Transform, Trainer and Evaluator; without planning they take the configured
settings as they are. Modules are named by import path (not module_file), so the same DAG runs
locally and compiles for Kubeflow without uploading anything.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components.atomic_pusher.component import AtomicPusher
from components.dataset_planner.component import DatasetPlanner
from components.example_schema_gen.component import ExampleSchemaGen
from components.image_example_gen.component import ImageExampleGen
from components.planned_trainer.component import PlannedTrainer
from components.segmentation_evaluator.component import SegmentationEvaluator
from components.transform.component import PlannedTransform
from modules import features
from pipeline.config import PipelineConfig

# Run until (and including) this node: `medtfx plan` stops after planning.
PLANNER_ID = "DatasetPlanner"
# Values create_pipeline takes per run (Kubeflow run parameters): planning.budget_minutes for
# the planner; the Pusher's serving_base, or serving_root + model_name (AtomicPusher).
RUN_PARAMETER_KEYS = ("budget_minutes", "serving_base", "model_name", "serving_root")


def output_config(cfg: PipelineConfig) -> example_gen_pb2.Output:
    """train/eval split by hash of the patient pseudonym: a patient never lands in both."""
    ingestion = cfg.ingestion
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=ingestion.train_hash_buckets),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=ingestion.eval_hash_buckets),
            ],
            partition_feature_name=features.PATIENT_HASH,
        )
    )


def trainer_custom_config(cfg: PipelineConfig) -> dict:
    """The Trainer's custom_config without a plan (modules.train.trainer.trainer_config)."""
    return {"training": cfg.training.model_dump(mode="json"), "inputs": {"modalities": []}, "plan": {}}


def create_pipeline(
    cfg: PipelineConfig,
    pipeline_root: str,
    data_root: str,
    metadata_connection_config=None,
    beam_args=None,
    baseline_resolver: bool = True,
    until: Optional[str] = None,
    enable_cache: Optional[bool] = None,
    run_parameters: Optional[Mapping[str, Any]] = None,
) -> tfx.dsl.Pipeline:
    """The DAG. baseline_resolver=False drops the last-blessed-model Resolver (KFP's open-source
    backend cannot run resolver nodes); the Evaluator then checks only the absolute threshold.
    until=PLANNER_ID stops after the planner (ingestion, fingerprint, plan).
    enable_cache: None = runner.enable_cache (None there = off, the local default).
    run_parameters: values decided per run (Kubeflow RuntimeParameters), by RUN_PARAMETER_KEYS
    name; data_root may be one too."""
    run_parameters = dict(run_parameters or {})
    unknown = set(run_parameters) - set(RUN_PARAMETER_KEYS)
    if unknown:
        raise ValueError(f"unknown run parameters {sorted(unknown)}; known: {list(RUN_PARAMETER_KEYS)}")
    if enable_cache is None:
        enable_cache = bool(cfg.runner.enable_cache)
    example_gen = ImageExampleGen(
        input_base=data_root,
        output_config=output_config(cfg),
        require_labels=cfg.ingestion.require_labels,
        salt_env=cfg.ingestion.patient_salt_env,
        default_salt=cfg.ingestion.default_patient_salt,
    )
    # Fingerprint of the training cases and the plan of every setting the user left open.
    planner = (
        DatasetPlanner(
            examples=example_gen.outputs["examples"],
            settings={
                "transform": cfg.transform.model_dump(mode="json"),
                "training": cfg.training.model_dump(mode="json"),
            },
            user_overrides=cfg.user_overrides(),
            planning=cfg.planning.model_dump(mode="json"),
            budget_minutes=run_parameters.get("budget_minutes"),
        ).with_id(PLANNER_ID)
        if cfg.planning.enabled
        else None
    )
    plan = planner.outputs["plan"] if planner else None
    if until == PLANNER_ID:
        if planner is None:
            raise ValueError("planning.enabled is false: there is no plan to make")
        components = [example_gen, planner]
    else:
        components = [
            example_gen,
            planner,
            *_training_components(cfg, example_gen, plan, baseline_resolver, run_parameters),
        ]
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.runner.pipeline_name,
        pipeline_root=pipeline_root,
        components=[c for c in components if c is not None],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_args if beam_args is not None else cfg.runner.beam_args),
    )


def _training_components(
    cfg: PipelineConfig, example_gen, plan, baseline_resolver: bool, run_parameters: Mapping[str, Any]
) -> list:
    # Statistics on metadata only: voxel bytes flood TFDV's logs and memory (tfx#1622).
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(feature_allowlist=list(features.METADATA_FEATURES)),
    )
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # Transform parses voxels too, which the metadata schema (rightly) lacks.
    full_schema = ExampleSchemaGen(require_labels=int(cfg.ingestion.require_labels))
    # TFX's Transform with the plan's settings, plus preview.png in transform_graph.
    transform = PlannedTransform(
        examples=example_gen.outputs["examples"],
        schema=full_schema.outputs["schema"],
        preprocessing_fn="modules.transform.preprocessing.preprocessing_fn",
        custom_config=cfg.transform.model_dump(mode="json"),
        plan=plan,
    ).with_id("Transform")
    trainer = PlannedTrainer(
        run_fn="modules.train.trainer.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_steps=cfg.training.train_steps,
        eval_steps=cfg.training.eval_steps,
        custom_config=trainer_custom_config(cfg),
        plan=plan,
    ).with_id("Trainer")
    model_resolver = (
        tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        if baseline_resolver
        else None
    )
    # TFX's Evaluator (TFMA Dice, sliced, gating) plus the surface-metric report, Dice plot and
    # summary in the same ModelEvaluation artifact; the dashboard's summary (with the
    # validator's anomalies), HTML report and metrics as their own outputs.
    evaluator = SegmentationEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"] if model_resolver else None,
        settings=cfg.evaluation,
        num_classes=cfg.training.num_classes,
        plan=plan,
        anomalies=example_validator.outputs["anomalies"],
    ).with_id("Evaluator")
    # TFX's Pusher, publishing <base>/<version> atomically (components/atomic_pusher/push.py).
    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=cfg.serving_model_base)
        ),
        serving_base=run_parameters.get("serving_base"),
        model_name=run_parameters.get("model_name"),
        serving_root=run_parameters.get("serving_root"),
    ).with_id("Pusher")
    return [
        statistics_gen,
        schema_gen,
        example_validator,
        full_schema,
        transform,
        trainer,
        model_resolver,
        evaluator,
        pusher,
    ]
