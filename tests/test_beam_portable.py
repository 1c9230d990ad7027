"""The Beam components on Beam's portable runner (runner.beam_profile=portable): the job API and
SDK-harness protocol the Flink and Spark runners use, with Beam's local job service and several
SDK worker processes (pipeline/runners/beam_local.py).

The pipeline test runs ImageExampleGen, the fingerprint (DatasetPlanner), StatisticsGen,
Transform and the Evaluator through it on tiny phantoms (with a few training steps between) and
compares what is deterministic with a DirectRunner run: inventory, example counts per split,
the dataset fingerprint.
"""

import glob
import json
import os
import sys

import pytest

from pipeline.config import LOCAL_PORTABLE_RUNNER, SUBPROCESS_ENVIRONMENT, make_config

WORKER = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            [],
            [
                f"--runner={LOCAL_PORTABLE_RUNNER}",
                f"--environment_type={SUBPROCESS_ENVIRONMENT}",
                f"--environment_config={WORKER}",
                "--sdk_worker_parallelism=2",
            ],
        ),
        (
            ["beam_sdk_worker_parallelism=3", "beam_job_endpoint=localhost:8099", 'beam_extra_args=["--x=1"]'],
            [
                f"--runner={LOCAL_PORTABLE_RUNNER}",
                f"--environment_type={SUBPROCESS_ENVIRONMENT}",
                f"--environment_config={WORKER}",
                "--sdk_worker_parallelism=3",
                "--job_endpoint=localhost:8099",
                "--x=1",
            ],
        ),
        (
            ["beam_environment_type=EXTERNAL", "beam_environment_config=localhost:50000"],
            [
                f"--runner={LOCAL_PORTABLE_RUNNER}",
                "--environment_type=EXTERNAL",
                "--environment_config=localhost:50000",
                "--sdk_worker_parallelism=2",
            ],
        ),
    ],
)
def test_portable_profile_args(overrides, expected):
    assert make_config(["beam_profile=portable", *overrides]).beam_pipeline_args() == expected


def _worker_pid(element, offset):
    """(pid of the process running this element, element + side input)."""
    return os.getpid(), element + offset


def test_elements_run_in_several_sdk_worker_processes(tmp_path):
    """The profile's args as TFX passes them: elements go through the runner API to at least two
    SDK worker processes other than this one, a side input and a module-level function
    reach them pickled, and their output files land where this process reads them."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    args = make_config(["beam_profile=portable"]).beam_pipeline_args()
    out = str(tmp_path / "pids")
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        offset = p | "Offset" >> beam.Create([100])
        _ = (
            p
            | "Elements" >> beam.Create(list(range(64)), reshuffle=True)
            | "Where" >> beam.Map(_worker_pid, offset=beam.pvalue.AsSingleton(offset))
            | "Json" >> beam.Map(json.dumps)
            | "Write" >> beam.io.WriteToText(out)
        )
    rows = [json.loads(line) for path in glob.glob(out + "*") for line in open(path)]
    assert sorted(value for _, value in rows) == list(range(100, 164))
    pids = {pid for pid, _ in rows}
    assert os.getpid() not in pids, "elements ran in the submitting process, not an SDK worker"
    assert len(pids) >= 2, f"one SDK worker process only: {pids}"


def _run(workdir, data, profile, until=None):
    from pipeline.runners import local

    cfg = make_config(
        [
            f"beam_profile={profile}",
            "train_steps=6",
            "epochs=1",
            "eval_steps=1",
            "val_dice_cases=1",
            "checkpoint=false",
            "planning.budget_minutes=1",
            "planning.calibration_steps=1",
            "evaluation.report_max_cases=1",
        ],
        data_root=data,
        workdir=workdir,
    )
    local.run_local(cfg, until=until)
    return local.latest_artifacts(os.path.abspath(cfg.metadata_path))


def _count_examples(split_dir):
    import tensorflow as tf

    return sum(1 for path in glob.glob(os.path.join(split_dir, "*.gz")) for _ in tf.data.TFRecordDataset(path, "GZIP"))


def _inventory(examples_uri):
    with open(os.path.join(examples_uri, "inventory.json")) as fh:
        return sorted(json.load(fh)["cases"], key=json.dumps)


def _fingerprint(fingerprint_uri):
    with open(os.path.join(fingerprint_uri, "fingerprint.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipeline.pipeline import PLANNER_ID
    from pipeline.tools.phantoms import synthesize

    work = tmp_path_factory.mktemp("portable")
    data = synthesize(str(work / "phantoms"), n_cases=8, seed=3)["dicom"]  # both splits non-empty
    direct = _run(str(work / "direct"), data, "direct", until=PLANNER_ID)
    portable = _run(str(work / "portable"), data, "portable")
    return direct, portable


@pytest.mark.distributed
def test_portable_runner_matches_the_direct_runner(runs):
    direct, portable = runs
    assert _inventory(portable["Examples"].uri) == _inventory(direct["Examples"].uri)
    for split in ("train", "eval"):
        counts = [_count_examples(os.path.join(r["Examples"].uri, f"Split-{split}")) for r in (direct, portable)]
        assert counts[0] == counts[1] > 0, (split, counts)
    assert _fingerprint(portable["medtfx.DatasetFingerprint"].uri) == _fingerprint(
        direct["medtfx.DatasetFingerprint"].uri
    )


@pytest.mark.distributed
def test_portable_runner_ran_statistics_transform_and_evaluator(runs):
    from pipeline.runners.local import read_dice

    _, portable = runs
    assert glob.glob(os.path.join(portable["TransformGraph"].uri, "transform_fn", "saved_model.pb"))
    dice = read_dice(portable["ModelEvaluation"].uri)["overall"]
    assert {"dice_label_1", "dice_label_2", "mean_dice"} <= set(dice), dice
    assert all(0.0 <= v <= 1.0 for v in dice.values()), dice
