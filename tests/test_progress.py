"""Progress (modules/progress.py): a bar on a terminal, plain periodic lines otherwise, the same
counts in both; the Trainer's TrainingProgress callback over the planned steps; the record
counter behind the progress totals."""

import io
import logging
import os

import numpy as np
import pytest

from modules import progress


def _plain_lines(caplog, **kwargs):
    return [r.getMessage() for r in caplog.records if r.name == "modules.progress"]


@pytest.mark.parametrize(
    "total, updates, interval_s, expected",
    [
        # a line per update when every moment is due, and no repeat at close
        (3, [1, 1, 1], 0.0, ["33% 1/3 case", "67% 2/3 case", "100% 3/3 case"]),
        # a long interval: the first update and the totals at close only
        (4, [1, 1, 1, 1], 3600.0, ["25% 1/4 case", "100% 4/4 case"]),
        # unknown total: counts and rate, no percentage
        (None, [2, 3], 0.0, ["cases: 2 case [", "cases: 5 case ["]),
    ],
)
def test_plain_lines_when_not_a_terminal(caplog, total, updates, interval_s, expected):
    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="modules.progress"):
        with progress.Progress(total, "cases", stream=stream, interval_s=interval_s) as p:
            for n in updates:
                p.update(n, postfix="loss 0.5")
    lines = _plain_lines(caplog)
    assert len(lines) == len(expected)
    for line, part in zip(lines, expected):
        assert part in line and "loss 0.5" in line
        assert "\r" not in line
    assert stream.getvalue() == ""  # plain lines go through logging (pod logs), never a bar


def test_bar_on_a_terminal_ends_at_the_total():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    assert progress.is_terminal(stream) and not progress.is_terminal(io.StringIO())
    with progress.Progress(5, "steps", unit="step", stream=stream) as p:
        for _ in range(5):
            p.update(1)
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue() and "step/s" in stream.getvalue()


def test_track_and_callback_count_every_item(caplog):
    with caplog.at_level(logging.INFO, logger="modules.progress"):
        assert list(progress.track(["a", "b", "c"], "inputs", unit="input", stream=io.StringIO(), interval_s=0)) == [
            "a",
            "b",
            "c",
        ]
        report = progress.callback("phantoms", stream=io.StringIO(), interval_s=3600)
        for done in range(1, 5):
            report(done, 4)
    lines = _plain_lines(caplog)
    assert "100% 3/3 input" in lines[2]
    assert lines[-1].startswith("phantoms: 100% 4/4 case")


def test_count_records_counts_gzip_tfrecords(tmp_path):
    import tensorflow as tf

    for shard, n in (("a", 3), ("b", 4)):
        with tf.io.TFRecordWriter(str(tmp_path / f"data-{shard}.gz"), options="GZIP") as writer:
            for i in range(n):
                writer.write(b"x" * i)
    assert progress.count_records([os.path.join(str(tmp_path), "data-*")]) == 7
    assert progress.count_records([os.path.join(str(tmp_path), "none-*")]) == 0


def test_training_progress_counts_steps_and_says_what_stops_the_run(caplog):
    import tf_keras as keras

    from modules.train import training

    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer="sgd", loss="mse")
    callback = training.TrainingProgress(total_steps=6, time_limit_minutes=10)
    with caplog.at_level(logging.INFO, logger="modules.progress"):
        model.fit(x, x[:, :1], batch_size=4, epochs=3, callbacks=[callback], verbose=0)
    assert callback.progress is not None and callback.progress.n == 6
    last = _plain_lines(caplog)[-1]
    assert "100% 6/6 step" in last and "loss " in last and "time limit in 09:" in last
    callback.on_epoch_end(0, {"val_mean_dice": 0.8123})
    assert "val Dice 0.812" in callback.postfix({"loss": 0.25})
    assert training.TrainingProgress(5).postfix({"loss": 0.25}) == "loss 0.250"  # no time limit


def test_transform_counts_the_cases_it_writes(caplog):
    """The Transform executor's counting step passes elements through and counts their rows; TFX
    still builds its pipeline in the module-level TransformProcessor the executor swaps."""
    import inspect

    import apache_beam as beam
    import pyarrow as pa
    from tfx.components.transform import executor as transform_executor

    from components.transform import executor

    assert "TransformProcessor()" in inspect.getsource(transform_executor.Executor.Do)
    processor = executor.counting_processor("key-1", 5)
    assert issubclass(processor, transform_executor.TransformProcessor)
    from unittest import mock

    with mock.patch.object(transform_executor, "TransformProcessor", processor):  # as Executor.Do runs it
        writer = processor()._EncodeAndWrite(schema=None, file_format="tfrecords_gzip", output_path="/x")
    assert isinstance(writer, executor._CountThenWrite)
    batches = [(pa.RecordBatch.from_pydict({"x": list(range(n))}), {}) for n in (2, 3)]
    from apache_beam.testing.util import assert_that, equal_to

    with caplog.at_level(logging.INFO, logger="modules.progress"):
        with beam.Pipeline() as pipeline:
            written = (
                pipeline
                | beam.Create(batches, reshuffle=False)
                | executor._CountThenWrite(beam.Map(lambda e: e[0].num_rows), "key-1", 5)
            )
            assert_that(written, equal_to([2, 3]))  # every element reaches the writer unchanged
        bar = executor._PROGRESS.pop("key-1")
        bar.close()
    assert bar.n == 5
    assert "Transform: cases written: 100% 5/5 case" in _plain_lines(caplog)[-1]


def test_first_line_has_no_rate_and_later_lines_use_the_recent_pace(caplog, monkeypatch):
    """A slow first unit (start-up: tracing, loading) must not set the ETA of the lines after."""
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="modules.progress"):
        p = progress.Progress(101, "steps", unit="step", stream=io.StringIO(), interval_s=10)
        clock[0] += 60  # first step: a minute of tracing
        p.update(1)
        clock[0] += 10  # then 50 steps in 10 s: 5 step/s, 50 left -> 10 s
        p.update(50)
        clock[0] += 5  # not due: only the final line says it
        p.update(50)
        p.close()
    first, second, last = _plain_lines(caplog)
    assert "ETA" not in first and "step/s" not in first and "1/101" in first
    assert "5.00step/s" in second and "ETA 00:10" in second
    assert "101/101" in last and "1.35step/s" in last  # the final line: mean over the run (101 in 75 s)
