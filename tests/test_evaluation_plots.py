"""The evaluation report's pictures (components/segmentation_evaluator/plots.py) on synthetic data:
each file is a PNG, the numbers a reader needs (n, the Dice definition) are in its text, and the
best/worst bookkeeping keeps the right cases."""

import math
import os

import numpy as np
import pytest

from components.segmentation_evaluator import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _texts(monkeypatch):
    """Collects every title, axis label and tick label drawn (matplotlib Text objects at savefig)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def _is_png(path):
    with open(path, "rb") as fh:
        return os.path.getsize(path) > 2000 and fh.read(8) == PNG_MAGIC


def _history(epochs):
    e = np.arange(epochs)
    return {
        "epoch": e.tolist(),
        "loss": (1.0 / (1 + e)).tolist(),
        "val_loss": (1.2 / (1 + e)).tolist(),
        "val_dice_label_1": (0.9 - 0.5 / (1 + e)).tolist(),
        "val_dice_label_2": (0.8 - 0.6 / (1 + e)).tolist(),
        "val_mean_dice": (0.85 - 0.55 / (1 + e)).tolist(),
        "lr": (1e-2 * (1 - e / max(1, epochs)) ** 0.9 + 1e-4).tolist(),
    }


@pytest.mark.parametrize(
    "history, expected_texts",
    [
        (_history(25), ["Training curves (25 epochs)", "label 1", "label 2", "mean over labels", "learning rate"]),
        (_history(1), ["Training curves (1 epoch)", "label 1"]),
        ({"loss": [0.5, 0.4]}, ["no validation Dice logged", "learning rate not logged"]),
    ],
)
def test_training_curves_png_names_its_series_and_dice(tmp_path, monkeypatch, history, expected_texts):
    texts = _texts(monkeypatch)
    path = str(tmp_path / plots.TRAINING_CURVES)
    plots.plot_training_curves(history, path)
    assert _is_png(path)
    for text in expected_texts + [plots.DICE_NETWORK_GRID]:
        assert any(text in t for t in texts), text


def test_training_curves_refuse_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="loss"):
        plots.plot_training_curves({"val_loss": [1.0]}, str(tmp_path / "x.png"))


def _records(dice_per_case):
    """Case records as report.evaluate_cases writes them: {'case_id', 'labels': {'k': {'dice'}}}."""
    return [
        {"case_id": f"case{i}", "labels": {str(k): {"dice": d} for k, d in enumerate(row, start=1)}}
        for i, row in enumerate(dice_per_case)
    ]


@pytest.mark.parametrize(
    "dice_per_case, expected_n",
    [
        # label 2 absent from truth and prediction of two cases: no Dice there, n drops to 1
        ([[0.9, float("nan")], [0.8, 0.5], [0.7, float("nan")]], {1: 3, 2: 1}),
        ([[0.95, 0.91]] * 12, {1: 12, 2: 12}),
        ([[float("nan"), 0.0]], {1: 0, 2: 1}),
    ],
)
def test_dice_per_case_png_shows_n_per_label(tmp_path, monkeypatch, dice_per_case, expected_n):
    texts = _texts(monkeypatch)
    records = _records(dice_per_case)
    assert {k: len(v) for k, v in plots.per_case_dice(records, [1, 2]).items()} == expected_n
    path = str(tmp_path / plots.DICE_PER_CASE)
    plots.plot_dice_per_case(records, [1, 2], path)
    assert _is_png(path)
    for k, n in expected_n.items():
        assert f"label {k}\nn={n}" in texts
    assert any(f"({len(records)} eval cases)" in t and plots.DICE_NATIVE_GRID in t for t in texts)


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"labels": {"1": {"dice": 0.5}, "2": {"dice": 1.0}}}, 0.75),
        ({"labels": {"1": {"dice": 0.5}, "2": {"dice": float("nan")}}}, 0.5),
        ({"labels": {"1": {"dice": None}, "2": {"dice": float("nan")}}}, float("nan")),
    ],
)
def test_case_mean_dice_ignores_labels_without_dice(record, expected):
    value = plots.case_mean_dice(record, [1, 2])
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _case(case_id, shift, seed=0):
    """A (48, 40, 24) volume, 1 x 1 x 2.5 mm, with two structures; the prediction is shifted by
    `shift` voxels along x."""
    shape = (48, 40, 24)
    truth = np.zeros(shape, np.uint8)
    truth[_ball(shape, (20, 20, 12), 7)] = 1
    truth[_ball(shape, (30, 22, 12), 4)] = 2
    prediction = np.roll(truth, shift, axis=0)
    image = np.random.default_rng(seed).normal(100, 10, shape) + 80 * (truth > 0)
    return plots.CaseVolumes(case_id, image, truth, prediction, (1.0, 1.0, 2.5), 1.0 - 0.1 * shift)


@pytest.mark.parametrize(
    "shape, expected_box",
    [
        # empty case: the whole volume
        ((10, 12, 14), (slice(0, 10), slice(0, 12), slice(0, 14))),
    ],
)
def test_structure_box_of_an_empty_case_is_the_volume(shape, expected_box):
    empty = np.zeros(shape, np.uint8)
    box, centre = plots.structure_box(empty, empty)
    assert box == expected_box and centre == tuple(s // 2 for s in shape)


def test_structure_box_holds_truth_and_prediction_and_centres_on_truth():
    truth = np.zeros((64, 64, 64), np.uint8)
    truth[30:34, 30:34, 30:34] = 1
    prediction = np.zeros_like(truth)
    prediction[40:42, 30:34, 30:34] = 1
    box, centre = plots.structure_box(truth, prediction, margin=0.0, min_margin=2)
    assert box == (slice(28, 44), slice(28, 36), slice(28, 36))
    assert centre == (32, 32, 32)  # the middle of the truth's equally full slices 30..33


def test_structure_box_centre_lies_in_a_structure_when_two_are_apart():
    truth = np.zeros((64, 16, 16), np.uint8)
    truth[5:10, 4:12, 4:12] = 1  # 5 x 8 x 8
    truth[50:60, 6:10, 6:10] = 2  # 10 x 4 x 4: its x slices hold fewer voxels
    _, centre = plots.structure_box(truth, truth)
    assert truth[centre[0]].any() and centre[0] == 7  # a centre of mass would fall between them


def test_case_overlays_png_has_three_views_per_case(tmp_path, monkeypatch):
    texts = _texts(monkeypatch)
    path = str(tmp_path / plots.CASES_BEST_WORST)
    plots.plot_case_overlays([("worst", _case("case007", 3)), ("best", _case("case002", 0))], [1, 2], path)
    assert _is_png(path)
    for text in ("worst: case007", "best: case002", "sagittal slice", "coronal slice", "axial slice 12", "truth"):
        assert any(text in t for t in texts), text


def test_case_overlays_refuse_mismatched_shapes(tmp_path):
    case = _case("c", 0)
    case.prediction = case.prediction[:-1]
    with pytest.raises(ValueError, match="same 3D shape"):
        plots.plot_case_overlays([("best", case)], [1, 2], str(tmp_path / "x.png"))


@pytest.mark.parametrize("with_history", [True, False])
def test_report_writes_and_links_its_pictures(tmp_path, with_history):
    """Phantom cases through report.evaluate_cases with a predictor that is exact on all cases but
    one (shifted): that case is the worst in the overlay; summary.md links every picture drawn."""
    import tensorflow as tf

    from components.segmentation_evaluator import report
    from modules import features as es
    from tests.serving_double import phantom_examples

    serialized = [e.SerializeToString() for e in phantom_examples(3)]
    worst_id = es.decode_case(tf.train.Example.FromString(serialized[1]))["case_id"]

    def predict(batch):
        case = es.decode_case(tf.train.Example.FromString(batch[0]))
        return [np.roll(case["label"], 3, axis=0) if case["case_id"] == worst_id else case["label"]]

    extremes = report.ExtremeCases([1, 2])
    records = report.evaluate_cases(predict, serialized, [1, 2], 2.0, on_case=extremes.add)
    assert extremes.worst.case_id == worst_id and extremes.best.case_id != worst_id
    assert extremes.worst.mean_dice < 1.0 == extremes.best.mean_dice
    result = report.build_report(records, [1, 2], 2.0, {}, {"ok": None, "failures": []}, None, "m", {})
    history = _history(3) if with_history else None
    paths = report.write_report(result, str(tmp_path / "evaluation"), history, extremes)
    drawn = [plots.DICE_PER_CASE, plots.CASES_BEST_WORST] + ([plots.TRAINING_CURVES] if with_history else [])
    summary = open(paths["summary"]).read()
    for name in drawn:
        path = str(tmp_path / "evaluation" / name)
        assert path in paths.values() and _is_png(path)
        assert f"[{name}]({name})" in summary
    assert (plots.TRAINING_CURVES in summary) == with_history


def _slices(means_by_slice):
    """The report's surface.slices shape from {slice: (cases, {label: mean Dice or None})}."""
    return {
        name: {"cases": n, "labels": {str(k): {"dice": {"mean": v}} for k, v in means.items()}}
        for name, (n, means) in means_by_slice.items()
    }


@pytest.mark.parametrize(
    "means_by_slice, label_names, expected_texts",
    [
        ({"overall": (4, {1: 0.9, 2: 0.7})}, None, ["overall (n=4)", "label 1", "label 2", "0.90", "0.70"]),
        (
            {"overall": (6, {1: 0.9, 2: None}), "modality=CT": (4, {1: 0.95, 2: None}), "modality=MR": (2, {1: 0.8})},
            {1: "liver"},
            ["modality=CT (n=4)", "modality=MR (n=2)", "1 liver", "label 2", "0.95"],
        ),
    ],
)
def test_dice_per_slice_png_shows_one_named_dice_and_n(
    tmp_path, monkeypatch, means_by_slice, label_names, expected_texts
):
    texts = _texts(monkeypatch)
    path = str(tmp_path / plots.DICE_PER_SLICE)
    plots.plot_dice_per_slice(_slices(means_by_slice), [1, 2], path, label_names)
    assert _is_png(path)
    drawn = "\n".join(texts)
    for expected in expected_texts + [plots.DICE_NATIVE_GRID]:
        assert expected in drawn
    assert plots.DICE_NETWORK_GRID not in drawn and "TFMA" not in drawn  # one definition only


def test_dice_per_slice_refuses_no_slices(tmp_path):
    with pytest.raises(ValueError, match="no slices"):
        plots.plot_dice_per_slice({}, [1], str(tmp_path / "x.png"))


def test_report_pictures_carry_the_label_names(tmp_path, monkeypatch):
    from components.segmentation_evaluator import report

    texts = _texts(monkeypatch)
    metrics = {"dice": 0.8, "hd95_mm": 1.0, "msd_mm": 0.5, "surface_dice": 0.9}
    records = [
        {"case_id": f"c{i}", "modality": "MR", "site": "s", "spacing_bin": "b", "labels": {"1": metrics, "2": metrics}}
        for i in range(3)
    ]
    result = report.build_report(records, [1, 2], 2.0, {}, {"ok": None, "failures": []}, None, "m", {})
    names = {1: "Anterior", 2: "Posterior"}
    report.write_report(result, str(tmp_path), _history(2), None, names)
    drawn = "\n".join(texts)
    assert drawn.count("1 Anterior") >= 3 and drawn.count("2 Posterior") >= 3  # three pictures
