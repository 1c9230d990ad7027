"""`medtfx bench io` on tiny volumes: every method runs and the JSON holds the six timings."""

import json

import numpy as np

from pipeline.cli import main
from pipeline.tools import bench_io


def test_bench_io_writes_all_timings(tmp_path):
    out = tmp_path / "bench_io.json"
    rc = main(
        [
            "bench",
            "io",
            "--json",
            str(out),
            "--iterations",
            "3",
            "--batch",
            "2",
            "--volumes",
            "3",
            "--shape",
            "8",
            "16",
            "12",
            "--workdir",
            str(tmp_path / "records"),
        ]
    )
    assert rc == 0
    results = json.loads(out.read_text())
    for key in bench_io.KEYS:
        assert results[key] > 0, key
    # int16 bytes: about half the seed's float_list records
    assert results["medtfx_tfrecord_mb"] < 0.7 * results["seed_tfrecord_mb"]
    assert not (tmp_path / "records").exists()  # temporary records removed


def test_synthetic_ct_is_int16_hounsfield():
    v = bench_io.synthetic_ct((16, 24, 24), seed=0)
    assert v.dtype == np.int16 and v.min() >= -1024 and v.max() <= 3071
    assert (v < -900).mean() > 0.1 and (v > 500).mean() > 0.01  # air and bone present
