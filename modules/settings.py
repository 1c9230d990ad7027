"""Every setting of every stage: one typed, validated model per stage, with its default and a
one-line description. Nothing else in medtfx holds a default.

`pipeline/config.py` composes these into `PipelineConfig`; the planner (modules/plan) fills them
from a dataset fingerprint; each component receives its stage's model serialised as JSON in
`custom_config` and parses it back with `<Stage>Settings.model_validate`.

No TensorFlow import here: the command line validates `--set` before anything heavy loads.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple, Type

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

# Order matters: Transform's graph indexes modes by position.
INTENSITY_MODES = ("dataset", "zscore_nonzero", "zscore", "window")
IntensityMode = Literal["dataset", "zscore_nonzero", "zscore", "window"]
Int3 = Tuple[PositiveInt, PositiveInt, PositiveInt]
Float3 = Tuple[PositiveFloat, PositiveFloat, PositiveFloat]
Axis = Literal[0, 1, 2]
PoolFactor = Literal[1, 2]
KernelSize = Literal[1, 3]


def _default_intensity_mode() -> Dict[str, IntensityMode]:
    """TransformSettings.intensity_mode's default: CT by dataset statistics, other modalities per case."""
    return {"CT": "dataset", "*": "zscore_nonzero"}


class StageSettings(BaseModel):
    """Common behaviour: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestionSettings(StageSettings):
    """ImageExampleGen: which cases are usable and how they are split."""

    require_labels: bool = Field(True, description="segmentation training: image-only cases are quarantined")
    patient_salt_env: str = Field(
        "MEDTFX_PATIENT_SALT", description="environment variable holding the secret patient-hash salt"
    )
    default_patient_salt: str = Field(
        "medtfx-default-salt", description="salt used only when that variable is unset (synthetic data)"
    )
    train_hash_buckets: PositiveInt = Field(4, description="train share of the split by patient hash")
    eval_hash_buckets: PositiveInt = Field(1, description="eval share of the split by patient hash")


class PlanningSettings(StageSettings):
    """DatasetPlanner: fingerprint the ingested cases and plan every setting the user left open."""

    enabled: bool = Field(True, description="plan from the dataset fingerprint; false = use the settings as given")
    budget_minutes: PositiveFloat = Field(30.0, description="Trainer wall time (training + validation + export)")
    calibration_steps: PositiveInt = Field(
        6, description="timed training steps per calibrated network (the fastest counts)"
    )
    min_steps: PositiveInt = Field(800, description="fewest training steps before the plan shrinks the network")


class TransformSettings(StageSettings):
    """Transform: intensity normalisation, resampling and the network grid."""

    target_shape: Int3 = Field(
        (32, 32, 32), description="network grid (X, Y, Z) voxels every case is cropped/padded to"
    )
    target_spacing: Optional[Float3] = Field(
        None, description="mm per canonical (R, A, S) axis; null = the training set's median"
    )
    spatial_mode: Literal["fixed_shape", "whole_volume"] = Field(
        "fixed_shape",
        description="fixed_shape: centre crop/pad to target_shape; whole_volume: keep the resampled volume",
    )
    channels: PositiveInt = Field(
        1, description="image channels per case (e.g. T2 + ADC = 2); the plan sets it from the fingerprint"
    )
    intensity_mode: Dict[str, IntensityMode] = Field(
        default_factory=_default_intensity_mode,
        description="normalisation per modality ('*' = any other): dataset | zscore_nonzero | zscore | window",
    )
    intensity_window: Tuple[float, float] = Field(
        (-1000.0, 1000.0), description="'window' mode: clip range mapped to [-1, 1]"
    )
    foreground_samples: PositiveInt = Field(
        10000, description="foreground voxels sampled per case for the dataset intensity statistics"
    )

    @model_validator(mode="after")
    def _window_ordered(self) -> "TransformSettings":
        lo, hi = self.intensity_window
        if not hi > lo:
            raise ValueError(f"intensity_window {self.intensity_window}: expected lo < hi")
        return self


class AugmentationSettings(StageSettings):
    """Training augmentation switches and ranges (nnU-Net's set, smaller rotations/scales).
    A probability of 0 disables a transform."""

    mirror: bool = Field(True, description="flip each axis with probability 0.5")
    p_rotation: float = Field(0.2, ge=0, le=1, description="rotation probability per axis")
    max_rotation_deg: float = Field(15.0, ge=0, description="largest rotation angle")
    p_scale: float = Field(0.2, ge=0, le=1, description="isotropic scaling probability")
    scale_range: Tuple[PositiveFloat, PositiveFloat] = Field(
        (0.85, 1.15), description="> 1 zooms out (sees more of the case)"
    )
    p_intensity_scale: float = Field(0.15, ge=0, le=1, description="multiplicative intensity probability")
    intensity_scale_range: Tuple[PositiveFloat, PositiveFloat] = Field(
        (0.75, 1.25), description="intensity factor range"
    )
    p_intensity_shift: float = Field(0.15, ge=0, le=1, description="additive intensity probability")
    intensity_shift_std: float = Field(0.1, ge=0, description="std of the additive shift (normalised units)")
    p_noise: float = Field(0.1, ge=0, le=1, description="Gaussian noise probability")
    max_noise_std: float = Field(0.3, ge=0, description="largest noise std (normalised units)")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "AugmentationSettings":
        return cls.model_validate(dict(values or {}))

    @classmethod
    def off(cls) -> "AugmentationSettings":
        return cls(mirror=False, p_rotation=0.0, p_scale=0.0, p_intensity_scale=0.0, p_intensity_shift=0.0, p_noise=0.0)

    @property
    def spatial(self) -> bool:
        return self.p_rotation > 0 or self.p_scale > 0


class TrainingSettings(StageSettings):
    """Trainer: network, loss, optimisation, sampling, precision, and the exported model's
    inference (sliding window, test-time mirroring), which validation uses too."""

    model: Literal["unet3d", "unet2d", "resnet3d"] = Field(
        "unet3d", description="unet2d = slice-wise 2D U-Net; resnet3d = classifier"
    )
    num_classes: int = Field(3, ge=2, description="classes including background")
    in_channels: PositiveInt = Field(1, description="network input channels (Transform's channels)")
    filters: Tuple[PositiveInt, ...] = Field(
        (8, 16, 32), min_length=2, description="U-Net filters per level (depth = length); ResNet per stage"
    )
    pool_sizes: Optional[Tuple[Tuple[PoolFactor, PoolFactor, PoolFactor], ...]] = Field(
        None, description="per-level pooling factor per axis (len(filters) - 1 entries); null = 2 everywhere"
    )
    kernel_sizes: Optional[Tuple[Tuple[KernelSize, KernelSize, KernelSize], ...]] = Field(
        None, description="per-level convolution size per axis (len(filters) entries); null = 3 everywhere"
    )
    slice_axis: Axis = Field(0, description="unet2d: the axis its 2D slices are perpendicular to")
    residual: bool = Field(False, description="residual units in the U-Net")
    norm: Literal["instance", "group", "batch", "none"] = Field("instance", description="normalisation layer")
    loss: Literal["dice", "dice_ce", "gdice", "ce"] = Field(
        "dice_ce", description="dice | dice_ce | gdice (generalised Dice) | ce"
    )
    batch_size: PositiveInt = Field(2, description="per replica (global = batch_size x replicas)")
    learning_rate: PositiveFloat = Field(3e-3, description="Adam's initial learning rate")
    lr_schedule: Literal["poly", "constant"] = Field(
        "poly",
        description="poly: (1 - progress) ** 0.9 decay to 1 % (nnU-Net), "
        "progress by steps or time limit, whichever is further",
    )
    train_steps: PositiveInt = Field(300, description="training steps in all")
    eval_steps: PositiveInt = Field(4, description="validation-loss batches per epoch")
    epochs: PositiveInt = Field(3, description="train_steps are spread over this many epochs (validation after each)")
    seed: int = Field(0, description="patches, augmentation and weights: same seed, same batches")
    patch_size: Optional[Int3] = Field(None, description="training patch and sliding window; null = the network grid")
    foreground_oversample: float = Field(
        0.33, ge=0, le=1, description="share of patches centred on foreground (nnU-Net)"
    )
    augment: bool = Field(True, description="apply `augmentation` to training patches")
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings, description="augmentation ranges")
    mixed_precision: bool = Field(False, description="float16 (GPU) / bfloat16 (CPU) compute, float32 outputs")
    xla: bool = Field(False, description="jit-compile the training step")
    distribution: Literal["default", "mirrored", "multi_worker"] = Field(
        "default", description="tf.distribute strategy"
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="epochs without val_mean_dice gain before stopping; 0 = off"
    )
    checkpoint: bool = Field(True, description="best-validation weights and a resumable backup under the model run dir")
    val_dice_cases: int = Field(64, ge=0, description="eval cases scored with per-label Dice each epoch (0 = off)")
    time_limit_minutes: float = Field(0.0, ge=0, description="stop training after this wall time; 0 = no limit")
    sliding_window_overlap: float = Field(
        0.5, ge=0, lt=1, description="window overlap in validation and in the exported model"
    )
    tta_mirror_axes: Tuple[Axis, ...] = Field(
        (), description="exported model: mean over flips of these network axes (2 ** n calls)"
    )
    cache: bool = Field(True, description="keep decoded training cases in memory")

    @model_validator(mode="after")
    def _topology_lengths(self) -> "TrainingSettings":
        depth = len(self.filters)
        if self.pool_sizes is not None and len(self.pool_sizes) != depth - 1:
            raise ValueError(f"pool_sizes has {len(self.pool_sizes)} entries: expected len(filters) - 1 = {depth - 1}")
        if self.kernel_sizes is not None and len(self.kernel_sizes) != depth:
            raise ValueError(f"kernel_sizes has {len(self.kernel_sizes)} entries: expected len(filters) = {depth}")
        return self

    @property
    def labels(self) -> Tuple[int, ...]:
        """Foreground label ids."""
        return tuple(range(1, self.num_classes))


class EvaluationSettings(StageSettings):
    """Evaluator: metrics, slices and the blessing gate."""

    task: Literal["segmentation", "classification"] = Field("segmentation", description="metrics and gate")
    min_mean_dice: float = Field(0.5, ge=0, le=1, description="blessing threshold on mean foreground Dice")
    max_dice_drop: float = Field(0.02, ge=0, le=1, description="allowed mean-Dice drop against the last blessed model")
    min_auc: float = Field(0.7, ge=0, le=1, description="classification: blessing threshold on macro AUC")
    max_auc_drop: float = Field(
        0.02, ge=0, le=1, description="classification: allowed AUC drop against the last blessed model"
    )
    surface_tolerance_mm: PositiveFloat = Field(2.0, description="surface Dice tolerance in the report")
    report_max_cases: int = Field(
        200, ge=0, description="eval cases the surface report runs through the model (0 = all)"
    )


class ServingSettings(StageSettings):
    """Pusher and serving: where the blessed model goes and under which name."""

    model_name: str = Field("medtfx-seg", min_length=1, description="TF Serving model name")
    serving_base: str = Field("", description="TF Serving model base path; empty = <workdir>/serving/<model_name>")


BeamProfile = Literal["direct", "dataflow", "flink", "spark", "portable"]


class RunnerSettings(StageSettings):
    """Runners: the local embedded default and Kubeflow Pipelines (Beam profile, Trainer pod)."""

    pipeline_name: str = Field("medtfx", min_length=1, description="TFX pipeline name")
    beam_args: Tuple[str, ...] = Field(
        ("--direct_running_mode=in_memory", "--direct_num_workers=1"), description="'direct' profile Beam args"
    )
    image: str = Field("medtfx:0.1.0", description="container image for Kubeflow")
    kubeflow_pipeline_root: str = Field(
        "gs://medtfx-pipeline-root", description="pipeline root on Kubeflow (or a PVC path)"
    )
    beam_profile: BeamProfile = Field("direct", description="Beam runner of the Beam-based components")
    beam_project: str = Field("", description="dataflow: GCP project id")
    beam_region: str = Field("", description="dataflow: region")
    beam_temp_location: str = Field("", description="dataflow: gs:// temp location")
    beam_job_endpoint: str = Field("", description="flink/spark: Beam job server host:port (empty = profile default)")
    beam_environment_type: str = Field(
        "", description="flink/spark: EXTERNAL | DOCKER | PROCESS (empty = profile default)"
    )
    beam_environment_config: str = Field("", description="EXTERNAL: worker pool host:port; DOCKER: SDK image")
    beam_sdk_container_image: str = Field("", description="dataflow/DOCKER SDK image with medtfx (empty = image)")
    beam_sdk_worker_parallelism: PositiveInt = Field(
        2, description="portable: SDK worker processes per Beam job (Beam's local job service)"
    )
    beam_extra_args: Tuple[str, ...] = Field((), description="appended to any profile's args")
    trainer_accelerator: str = Field("", description="Kubernetes resource name, e.g. nvidia.com/gpu; empty = CPU only")
    trainer_accelerator_count: PositiveInt = Field(1, description="accelerators for the Trainer pod")
    trainer_cpu_limit: float = Field(0.0, ge=0, description="vCPU; 0 = no limit")
    trainer_memory_limit: float = Field(0.0, ge=0, description="GB; 0 = no limit")
    trainer_node_selector: Dict[str, str] = Field(default_factory=dict, description="Trainer pod node selector")
    trainer_tolerations: Tuple[Dict[str, object], ...] = Field(
        (), description="Kubernetes Toleration objects for the Trainer pod"
    )
    kubeflow_pvc_mounts: Dict[str, str] = Field(
        default_factory=dict, description="PVC name -> mount path for every pod"
    )
    kubeflow_baseline_resolver: bool = Field(
        False,
        description="keep the last-blessed-model Resolver on Kubeflow "
        "(Vertex AI; KFP's open-source backend cannot run it)",
    )
    enable_cache: Optional[bool] = Field(
        None, description="reuse unchanged steps' outputs; null = on for Kubeflow, off for local runs"
    )
    patient_salt_secret: str = Field(
        "", description="Kubeflow: Kubernetes Secret holding the patient-hash salt (a cluster compile needs one)"
    )
    patient_salt_secret_key: str = Field("salt", min_length=1, description="key of the salt in that Secret")
    data_secret: str = Field(
        "",
        description="Kubeflow: Kubernetes Secret with the dataset's credentials (PACS, object store), "
        "given to the ingestion pod as environment variables",
    )
    data_secret_keys: Tuple[str, ...] = Field(
        ("MEDTFX_DICOMWEB_USER", "MEDTFX_DICOMWEB_PASSWORD"),
        description="keys of data_secret, each exposed as the environment variable of the same name "
        "(e.g. MEDTFX_DICOMWEB_TOKEN, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    )


STAGES: Dict[str, Type[StageSettings]] = {
    "ingestion": IngestionSettings,
    "planning": PlanningSettings,
    "transform": TransformSettings,
    "training": TrainingSettings,
    "evaluation": EvaluationSettings,
    "serving": ServingSettings,
    "runner": RunnerSettings,
}
