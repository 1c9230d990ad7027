"""End to end: the local pipeline (LocalDagRunner, SQLite MLMD, Beam DirectRunner) on tiny phantoms.

Checks every component produced its artifact, statistics skip voxel bytes, the split keeps each
patient on one side, and the pushed SavedModel predicts masks on raw voxels.
"""

import glob
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from pipeline.config import make_config
    from pipeline.runners import local
    from pipeline.tools.phantoms import synthesize

    work = str(tmp_path_factory.mktemp("e2e"))
    data = synthesize(os.path.join(work, "phantoms"), n_cases=8, seed=3)
    from tests.conftest import TINY_RUN_SETTINGS

    cfg = make_config(
        TINY_RUN_SETTINGS,
        data_root=data["dicom"],
        workdir=work,
    )
    local.run_local(cfg)
    return cfg, local.latest_artifacts(os.path.abspath(cfg.metadata_path)), local.run_summary(cfg)


def _examples(split_dir):
    import tensorflow as tf

    out = []
    for path in glob.glob(os.path.join(split_dir, "*.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            out.append(tf.train.Example.FromString(record.numpy()))
    return out


def test_every_component_produced_its_artifact(pipeline_run):
    cfg, latest, summary = pipeline_run
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.abspath(cfg.metadata_path)
    store = metadata_store.MetadataStore(config)
    types = {
        t: len(store.get_artifacts_by_type(t))
        for t in (
            "Examples",
            "ExampleStatistics",
            "Schema",
            "ExampleAnomalies",
            "TransformGraph",
            "Model",
            "ModelRun",
            "ModelEvaluation",
            "ModelBlessing",
            "PushedModel",
            "medtfx.DatasetFingerprint",
            "medtfx.Plan",
        )
    }
    # Examples: ExampleGen + Transform's transformed examples; Schema: SchemaGen + ExampleSchemaGen.
    assert types["Examples"] >= 2 and types["Schema"] >= 2, types
    assert all(n >= 1 for n in types.values()), types
    assert summary["cases_ok"] == 8 and summary["cases_quarantined"] == 0
    assert os.path.exists(summary["inventory"])


def test_statistics_cover_metadata_not_voxels(pipeline_run):
    cfg, latest, _ = pipeline_run
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from tfx.utils import io_utils

    from modules import features as es

    stats_dir = glob.glob(os.path.join(cfg.pipeline_root, "StatisticsGen", "statistics", "*", "Split-train"))[0]
    stats = io_utils.read_bytes_file(os.path.join(stats_dir, "FeatureStats.pb"))
    proto = statistics_pb2.DatasetFeatureStatisticsList.FromString(stats)
    names = {f.path.step[0] for f in proto.datasets[0].features}
    assert es.IMAGE_RAW not in names and es.LABEL_RAW not in names
    assert {es.SPACING, es.MODALITY, "intensity_mean"} <= names


def test_split_keeps_each_patient_on_one_side(pipeline_run):
    _, latest, _ = pipeline_run
    from modules import features as es

    uri = latest["Examples"].uri
    splits = {
        s: {e.features.feature[es.PATIENT_HASH].bytes_list.value[0] for e in _examples(os.path.join(uri, f"Split-{s}"))}
        for s in ("train", "eval")
    }
    assert splits["train"] and splits["eval"], "both splits must be non-empty"
    assert not splits["train"] & splits["eval"]
    assert len(splits["train"]) + len(splits["eval"]) == 8


def serve_phantom(model_dir, phantom):
    """(canonical image (X, Y, Z), serving_default's outputs) for a phantom's raw int16 voxels
    sent to the SavedModel in model_dir."""
    import tensorflow as tf

    from modules.io.volume import to_canonical

    image, affine = to_canonical(phantom.image, phantom.affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    return image, serve(
        image_raw=tf.constant([image.astype("<i2").tobytes()]),
        image_dtype=tf.constant(["int16"]),
        image_shape=tf.constant([image.shape], tf.int64),
        spacing=tf.constant([spacing], tf.float32),
        direction=tf.constant([(affine[:3, :3] / spacing).reshape(-1)], tf.float32),
        modality=tf.constant([phantom.modality]),
    )


def test_pushed_model_predicts_masks_on_raw_voxels(pipeline_run):
    cfg, _, summary = pipeline_run

    from modules.io.volume import to_canonical
    from modules.metrics.dice import dice_per_label
    from pipeline.tools.phantoms import make_phantom

    assert summary["blessed"] is True and summary["pushed_to"], summary
    assert os.path.exists(os.path.join(summary["pushed_to"], "saved_model.pb"))
    assert os.path.basename(summary["pushed_to"]).isdigit()  # TF Serving version directory
    truth = make_phantom(20, seed=3)  # a case the model never saw
    image, out = serve_phantom(summary["pushed_to"], truth)
    label, _ = to_canonical(truth.label, truth.affine)
    assert tuple(out["mask_shape"].numpy()[0]) == image.shape
    mask = out["mask"].numpy()[0]
    assert mask.shape == image.shape and mask.dtype == np.uint8
    dice = dice_per_label(label, mask, [1, 2])
    # 60 training steps on 6 cases: far from converged, but a broken geometry or graph scores ~0.
    assert min(dice.values()) > 0.5, dice
    dice_metrics = summary["dice"]["overall"]
    assert {"dice_label_1", "dice_label_2", "mean_dice"} <= set(dice_metrics)
    assert all(0.0 <= v <= 1.0 for v in dice_metrics.values())


def test_plan_drives_the_run_and_the_model_knows_its_inputs(pipeline_run):
    """The DatasetPlanner's plan reached Transform and Trainer (user settings kept, with origin
    'user'), and the pushed model records the plan and the modalities it was trained on."""
    import json

    from modules.train import trainer

    cfg, latest, summary = pipeline_run
    with open(summary["plan"]) as fh:
        plan = json.load(fh)
    decisions = {d["key"]: d for d in plan["decisions"]}
    assert decisions["training.train_steps"]["origin"] == "user"
    assert plan["settings"]["training"]["train_steps"] == 60
    assert decisions["transform.target_spacing"]["origin"] == "plan"
    assert os.path.exists(summary["fingerprint"])
    fingerprint = json.load(open(os.path.join(os.path.dirname(summary["fingerprint"]), "fingerprint.json")))
    assert fingerprint["num_cases"] >= 4 and fingerprint["labels"] == [0, 1, 2]
    inputs = trainer.read_model_inputs(summary["pushed_to"])
    assert sorted(inputs["modalities"]) == plan["inputs"]["modalities"]
    assert set(inputs["modalities"]) <= {"CT", "MR"} and inputs["num_classes"] == 3
    # The Transform graph in the model uses the planned grid.
    assert inputs["patch_size"] == plan["settings"]["training"]["patch_size"]
