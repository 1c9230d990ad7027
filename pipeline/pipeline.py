"""The medtfx DAG, in one place.

ImageExampleGen -> StatisticsGen (metadata only) -> SchemaGen -> ExampleValidator
                -> Transform (schema: ExampleSchemaGen) -> Trainer -> Evaluator (+ last blessed
                model) -> Pusher (TF Serving model base path)
Modules are named by import path (not module_file), so the same DAG runs locally and compiles
for Kubeflow without uploading anything.
"""
from __future__ import annotations

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from components.atomic_pusher.component import AtomicPusher
from components.example_schema_gen.component import ExampleSchemaGen
from modules import features as example_schema
from components.image_example_gen.component import ImageExampleGen
from components.segmentation_evaluator.component import SegmentationEvaluator
from components.transform_preview.component import Transform
from modules import preprocessing
from pipeline.config import PipelineConfig


def output_config(cfg: PipelineConfig) -> example_gen_pb2.Output:
    """train/eval split by hash of the patient pseudonym: a patient never lands in both."""
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=cfg.train_hash_buckets),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=cfg.eval_hash_buckets)],
        partition_feature_name=example_schema.PATIENT_HASH))


# Evaluation slices (besides overall); a feature missing from the examples yields no slice.
SLICE_FEATURES = (example_schema.MODALITY, example_schema.SITE, example_schema.SPACING_BIN)
TASKS = ("segmentation", "classification")


def _gate(lower_bound: float, max_drop: float):
    """Bless when the metric on the overall slice is >= lower_bound and at most max_drop below the
    baseline's (the change part applies only when a baseline model exists: TFX rubber-stamps the
    first model). Overall only: small slices (one site, a few cases) are reported, not gating."""
    return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_drop})))]


def classification_metrics_specs(cfg: PipelineConfig):
    """Classification (issue 7's models: (B, num_classes) class probabilities, integer label):
    example count and accuracy; one-vs-rest AUC per class id and their macro average, which
    gates the blessing (min_auc, max_auc_drop)."""
    class_ids = list(range(cfg.num_classes))
    return [
        tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount"),
                                  tfma.MetricConfig(class_name="SparseCategoricalAccuracy")]),
        tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="AUC")],
                         binarize=tfma.BinarizationOptions(class_ids={"values": class_ids})),
        tfma.MetricsSpec(metrics=[tfma.MetricConfig(
            class_name="AUC", per_slice_thresholds=_gate(cfg.min_auc, cfg.max_auc_drop))],
                         aggregate=tfma.AggregationOptions(
                             macro_average=True, class_weights={k: 1.0 for k in class_ids})),
    ]


def report_config(cfg: PipelineConfig) -> dict:
    """SegmentationEvaluator's report settings (components/segmentation_evaluator/report.py)."""
    return {"labels": cfg.labels, "tolerance_mm": cfg.surface_tolerance_mm,
            "max_cases": cfg.report_max_cases,
            "thresholds": {"min_mean_dice": cfg.min_mean_dice, "max_dice_drop": cfg.max_dice_drop}}


def eval_config(cfg: PipelineConfig) -> tfma.EvalConfig:
    """Segmentation: per-label and mean Dice (custom TFMA metric); the model is blessed when mean
    Dice clears `min_mean_dice` and drops at most `max_dice_drop` against the last blessed model.
    Classification: see classification_metrics_specs. Both sliced by SLICE_FEATURES."""
    if cfg.task not in TASKS:
        raise ValueError(f"task {cfg.task!r}: expected one of {TASKS}")
    model_specs = [tfma.ModelSpec(signature_name="evaluate", label_key=preprocessing.LABEL,
                                  preprocessing_function_names=["transform_features"])]
    slicing_specs = [tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[f]) for f in SLICE_FEATURES]
    if cfg.task == "classification":
        return tfma.EvalConfig(model_specs=model_specs, slicing_specs=slicing_specs,
                               metrics_specs=classification_metrics_specs(cfg))
    metrics = [tfma.MetricConfig(class_name="Dice", module="modules.tfma_dice",
                                 config=f'{{"label": {k}, "name": "dice_label_{k}"}}')
               for k in cfg.labels]
    metrics.append(tfma.MetricConfig(
        class_name="MeanDice", module="modules.tfma_dice",
        config=f'{{"labels": {cfg.labels}, "name": "mean_dice"}}',
        per_slice_thresholds=_gate(cfg.min_mean_dice, cfg.max_dice_drop)))
    return tfma.EvalConfig(model_specs=model_specs, slicing_specs=slicing_specs,
                           metrics_specs=[tfma.MetricsSpec(metrics=metrics)])


def create_pipeline(cfg: PipelineConfig, pipeline_root: str, data_root: str,
                    metadata_connection_config=None, beam_args=None,
                    baseline_resolver: bool = True) -> tfx.dsl.Pipeline:
    """The DAG. baseline_resolver=False drops the last-blessed-model Resolver (KFP's open-source
    backend cannot run resolver nodes); the Evaluator then checks only the absolute threshold."""
    example_gen = ImageExampleGen(
        input_base=data_root, output_config=output_config(cfg),
        require_labels=cfg.require_labels, salt_env=cfg.patient_salt_env,
        default_salt=cfg.default_patient_salt)
    # Statistics on metadata only: voxel bytes flood TFDV's logs and memory (tfx#1622).
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(feature_allowlist=list(example_schema.METADATA_FEATURES)))
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # Transform parses voxels too, which the metadata schema (rightly) lacks.
    full_schema = ExampleSchemaGen(require_labels=int(cfg.require_labels))
    # TFX's Transform plus preview.png (cases before/after normalisation) in transform_graph.
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=full_schema.outputs["schema"],
        preprocessing_fn="modules.preprocessing.preprocessing_fn",
        custom_config=cfg.transform_config())
    trainer = tfx.components.Trainer(
        run_fn="modules.trainer.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(num_steps=cfg.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=cfg.eval_steps),
        custom_config=cfg.trainer_config())
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver") if baseline_resolver else None
    evaluator_args = dict(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"] if model_resolver else None,
        eval_config=eval_config(cfg))
    # Segmentation: TFX's Evaluator plus the surface-metric report, Dice plot and summary in the
    # same ModelEvaluation artifact. The node id stays "Evaluator" either way.
    evaluator = (SegmentationEvaluator(**evaluator_args, report_config=report_config(cfg))
                 if cfg.task == "segmentation" else tfx.components.Evaluator(**evaluator_args)
                 ).with_id("Evaluator")
    # TFX's Pusher, publishing <base>/<version> atomically (components/atomic_pusher/push.py).
    pusher = AtomicPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=cfg.serving_model_base)),
    ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name, pipeline_root=pipeline_root,
        components=[c for c in (example_gen, statistics_gen, schema_gen, example_validator,
                                full_schema, transform, trainer, model_resolver, evaluator, pusher)
                    if c is not None],
        enable_cache=False, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_args if beam_args is not None else cfg.beam_args))
