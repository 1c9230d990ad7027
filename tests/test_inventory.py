"""Inventory facts (components/image_example_gen/inventory.py): what each ingested case looks like
(spacing, shape, channels, intensities, label volumes) computed against numpy by hand, the
dataset-at-a-glance table and PNG, and the facts reaching inventory.json through the reader and
the `medtfx inventory` command."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from components.image_example_gen import cases, inventory
from modules.io.volume import Volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def restore_logging():
    """`medtfx inventory` routes logging to the stderr of its time (pipeline/console.py); later
    tests capture another stderr."""
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _volume(array, spacing=(1.0, 1.0, 1.0), modality="CT"):
    return Volume(np.asarray(array), np.diag([*spacing, 1.0]), modality=modality)


def _ramp(shape, dtype=np.int16):
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)


def _label(shape, boxes):
    """(X, Y, Z) uint8 label map with value k in each box (slices) of boxes {k: box}."""
    label = np.zeros(shape, np.uint8)
    for k, box in boxes.items():
        label[box] = k
    return label


# (image, spacing mm, label, expected channels, expected {label: voxels}) ; ml = voxels * prod(spacing) / 1000
FACT_CASES = [
    # shape: (10, 10, 10), 2 mm isotropic: 8 mm^3 per voxel; label 1 is 2x3x4 = 24 voxels = 0.192 ml
    (_ramp((10, 10, 10)), (2.0, 2.0, 2.0), _label((10, 10, 10), {1: np.s_[0:2, 0:3, 0:4]}), 1, {1: 24}),
    # anisotropic 0.5 x 0.5 x 5 mm, two labels, one voxel of label 3 only
    (
        _ramp((8, 8, 4)),
        (0.5, 0.5, 5.0),
        _label((8, 8, 4), {2: np.s_[2:6, 2:6, 1:3], 3: np.s_[0:1, 0:1, 0:1]}),
        1,
        {2: 32, 3: 1},
    ),
    # channels-last (X, Y, Z, C) with C = 3
    (_ramp((6, 5, 4, 3)).astype(np.float32), (1.0, 1.0, 3.0), _label((6, 5, 4), {1: np.s_[1:3, :, :]}), 3, {1: 40}),
    # no label
    (_ramp((5, 5, 5), np.uint8), (1.0, 1.0, 1.0), None, 1, None),
]


@pytest.mark.parametrize("image, spacing, label, channels, voxels", FACT_CASES)
def test_facts_against_numpy(image, spacing, label, channels, voxels):
    got = inventory.facts(_volume(image, spacing), label)
    assert got["spacing_mm"] == list(spacing)
    assert got["shape"] == list(image.shape[:3])
    assert got["channels"] == channels and len(got["intensity"]) == channels
    per_channel = image[..., None] if image.ndim == 3 else image
    for c in range(channels):
        values = per_channel[..., c].astype(np.float64)
        expected = dict(zip(("p1", "p50", "p99"), np.percentile(values, (1, 50, 99))))
        expected.update(mean=values.mean(), std=values.std())
        for key, value in expected.items():
            assert got["intensity"][c][key] == pytest.approx(value, rel=1e-3, abs=1e-3), (c, key)
    if label is None:
        assert "labels" not in got and "foreground_intensity" not in got
        return
    voxel_ml = float(np.prod(spacing)) / 1000
    expected_labels = {str(k): {"voxels": n, "ml": pytest.approx(n * voxel_ml, rel=1e-3)} for k, n in voxels.items()}
    assert got["labels"] == expected_labels
    foreground = per_channel[label > 0][:, 0].astype(np.float64)
    assert got["foreground_intensity"][0]["mean"] == pytest.approx(foreground.mean(), rel=1e-3)
    json.dumps(got, allow_nan=False)  # strict JSON: the row goes into inventory.json as is


def test_facts_of_a_non_finite_image_and_an_empty_label():
    image = np.full((4, 4, 4), np.nan, np.float32)
    got = inventory.facts(_volume(image), np.zeros((4, 4, 4), np.uint8))
    assert got["intensity"] == [{"p1": None, "p50": None, "p99": None, "mean": None, "std": None}]
    assert got["labels"] == {} and "foreground_intensity" not in got
    json.dumps(got, allow_nan=False)


@pytest.mark.parametrize(
    "image, label, message",
    [
        (np.zeros((4, 4)), None, "expected an"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 3), np.uint8), "label shape"),
    ],
)
def test_facts_refuse_bad_shapes(image, label, message):
    with pytest.raises(ValueError, match=message):
        inventory.facts(_volume(image), label)


def test_percentiles_use_a_bounded_sample():
    values = np.arange(3_000_001, dtype=np.float64)
    sample = inventory._sample(values)
    assert sample.size <= inventory.PERCENTILE_SAMPLE and sample[0] == 0
    assert inventory.intensity_summary(values)["p50"] == pytest.approx(1_500_000, rel=1e-3)


def _row(case_id, spacing, shape, p50, labels, modality="CT", status="ok"):
    return {
        "case_id": case_id,
        "status": status,
        "modality": modality,
        "spacing_mm": spacing,
        "shape": shape,
        "channels": 1,
        "intensity": [{"p1": p50 - 10, "p50": p50, "p99": p50 + 10, "mean": p50, "std": 5}],
        "labels": {str(k): {"voxels": 1, "ml": v} for k, v in labels.items()},
    }


ROWS = [
    _row("a", [0.8, 0.8, 5.0], [512, 512, 40], 40, {1: 1500.0, 2: 3.0}),
    _row("b", [0.7, 0.7, 2.5], [512, 512, 120], 50, {1: 1700.0}),
    _row("c", [1.0, 1.0, 1.0], [256, 256, 180], 600, {1: 900.0, 2: 12.0}, modality="MR"),
    {"case_id": "q", "status": "quarantined", "reason": "broken"},
]


def test_table_gives_min_median_max_over_ingested_cases():
    lines = inventory.table(ROWS, {1: "liver"})
    assert lines[0] == "3 ingested cases (2 CT, 1 MR)"
    rows = {line.split("  ")[0].strip(): line.split()[-3:] for line in lines[2:]}
    assert rows["spacing z (mm)"] == ["1", "2.5", "5"]
    assert rows["size Z (voxels)"] == ["40", "120", "180"]
    assert rows["intensity p50"] == ["40", "50", "600"]
    assert rows["label 1 liver (ml, 3 cases)"] == ["900", "1500", "1700"]
    assert rows["label 2 (ml, 2 cases)"] == ["3", "7.5", "12"]


def test_table_and_plot_without_ingested_facts(tmp_path):
    assert inventory.table(ROWS[3:]) == []
    assert inventory.table([{"case_id": "old", "status": "ok", "reason": ""}]) == []  # older inventories
    with pytest.raises(ValueError, match="no ingested case"):
        inventory.plot(ROWS[3:], str(tmp_path / "x.png"))


def test_plot_names_its_panels_labels_and_counts(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    rows = ROWS + [_row("d", [0.8, 0.8, 5.0], [512, 512, 40], 45, {1: 1600.0})]  # same grid as "a"
    path = tmp_path / "inventory.png"
    inventory.plot(rows, str(path), {1: "liver"})
    assert path.read_bytes()[:8] == PNG_MAGIC
    drawn = "\n".join(seen)
    for text in ("voxel spacing per case", "volume size per case", "label volume per case", "CT (n=3)", "MR (n=1)"):
        assert text in drawn
    assert "label 1 liver (n=4)" in drawn and "label 2 (n=2)" in drawn
    assert "2" in seen  # two cases share one spacing and one size: counted, not jittered apart
    assert "Dataset inventory: 4 ingested of 5 cases" in drawn


def _decathlon(root, n=3, labels=None):
    """A Decathlon folder of n small NIfTI cases, 1.5 x 1.5 x 3 mm, label 1 a 4x4x2 box."""
    os.makedirs(root / "imagesTr")
    os.makedirs(root / "labelsTr")
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        image = (np.arange(16 * 16 * 8).reshape(16, 16, 8) % 100).astype(np.int16)
        label = _label((16, 16, 8), {1: np.s_[4:8, 4:8, 2:4]})
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"case_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case_{i}.nii.gz"))
    meta = {"labels": labels or {"0": "background", "1": "tumour"}, "modality": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(meta))


def test_process_case_puts_the_facts_in_the_record(tmp_path):
    _decathlon(tmp_path / "data", n=1)
    specs, _ = cases.find_cases(str(tmp_path / "data"))
    _, record = cases.process_case(specs[0], "salt", {0, 1})
    assert record["status"] == "ok"
    assert record["shape"] == [16, 16, 8] and record["spacing_mm"] == [1.5, 1.5, 3.0] and record["channels"] == 1
    assert record["labels"] == {"1": {"voxels": 32, "ml": pytest.approx(32 * 1.5 * 1.5 * 3 / 1000)}}


def test_inventory_command_prints_the_table_and_writes_the_picture(tmp_path, capsys):
    from pipeline import cli

    _decathlon(tmp_path / "data")
    report = tmp_path / "out" / "inv.json"
    assert cli.main(["inventory", str(tmp_path / "data"), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "3 ingested cases (3 CT)" in out and "label 1 tumour (ml, 3 cases)" in out
    assert (tmp_path / "out" / "inv.png").read_bytes()[:8] == PNG_MAGIC
    written = json.loads(report.read_text())
    assert written["label_names"] == {"0": "background", "1": "tumour"}
    assert all(r["labels"]["1"]["voxels"] == 32 for r in written["cases"])


def test_merge_report_keeps_the_label_names(tmp_path):
    from components.image_example_gen import executor

    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-0.jsonl").write_text(json.dumps({"case_id": "a", "status": "ok", "reason": ""}) + "\n")
    (parts / executor._LABEL_NAMES_FILE).write_text(json.dumps({"1": "liver"}))
    executor.merge_report(str(parts), str(tmp_path / inventory.INVENTORY_FILE))
    assert inventory.read_label_names(str(tmp_path)) == {1: "liver"}
    assert inventory.read_label_names(str(tmp_path / "nowhere")) == {}
