"""The pages and metrics the Kubeflow dashboard shows (components/dashboard, the evaluator's
dashboard_* functions), and writing them as KFP's UI reads them: one file at the artifact URI,
named by a display_name, metrics as float custom properties."""

import base64
import json
import math
import re

import pytest

from components.dashboard import render


def _record(case_id, status, reason="", inputs=("/data/Doe^John/1.dcm",)):
    return {"case_id": case_id, "status": status, "reason": reason, "inputs": list(inputs)}


@pytest.mark.parametrize(
    "records,max_listed,expected,absent",
    [
        ([_record("a", "ok"), _record("b", "ok")], 50, ["- cases: 2: 2 ingested, 0 quarantined"], ["## Quarantine"]),
        (
            [
                _record("a", "ok"),
                _record("b", "quarantined", "gantry tilt"),
                _record("c", "quarantined", "gantry tilt"),
            ],
            50,
            [
                "- cases: 3: 1 ingested, 2 quarantined",
                "| 2 | gantry tilt |",
                "| b | gantry tilt |",
                "| c | gantry tilt |",
            ],
            ["more"],
        ),
        # A pipe or newline in a reason stays inside its cell.
        ([_record("d", "quarantined", "bad | header\nline 2")], 50, ["| d | bad \\| header line 2 |"], []),
        (
            [_record(f"q{i}", "quarantined", "missing slices") for i in range(4)],
            2,
            ["| 4 | missing slices |", "| q0 |", "| q1 |", "... and 2 more"],
            ["| q2 |", "| q3 |"],
        ),
    ],
)
def test_inventory_markdown(records, max_listed, expected, absent):
    text = render.inventory_markdown(records, max_listed)
    assert text.startswith("# Inventory\n")
    for line in expected:
        assert line in text
    for line in absent + ["Doe", "/data/"]:  # input paths (patient folder names) never shown
        assert line not in text


def test_plan_markdown_keeps_the_plan_table_fixed_width():
    text = render.plan_markdown("# Dataset fingerprint\n\n- Cases: 4\n\n", "setting  value\nspacing  1 1 1\n")
    assert text == ("# Dataset fingerprint\n\n- Cases: 4\n\n# Plan\n\n```\nsetting  value\nspacing  1 1 1\n```\n")


@pytest.mark.parametrize(
    "anomalies,expected",
    [
        (None, "not run"),
        ({}, "no anomalies (no split)"),
        ({"train": [], "eval": []}, "no anomalies (eval, train)"),
        (
            {"train": [("spacing", "Out-of-range values: x|y")], "eval": [("(dataset)", "Low count: 0 cases")]},
            "| eval | (dataset) | Low count: 0 cases |\n| train | spacing | Out-of-range values: x\\|y |",
        ),
    ],
)
def test_anomalies_markdown(anomalies, expected):
    text = render.anomalies_markdown(anomalies)
    assert text.startswith("## Data validation (ExampleValidator)\n") and expected in text


def test_html_page_renders_tables_and_embeds_the_pictures():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    text = render.html_page(
        "Eval <1>", "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nx  y\n```\n", [("dice.png", "Dice & co", png)]
    )
    assert "<title>Eval &lt;1&gt;</title>" in text and "<table>" in text and "<td>2</td>" in text
    assert "<pre><code>x  y" in text
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [png]
    assert "<b>dice.png</b>: Dice &amp; co" in text
    assert "<h2>Pictures</h2>" not in render.html_page("t", "text")


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"a": 0.5, "b": None, "c": math.nan, "d": math.inf, "e": -math.inf, "f": 2}, {"a": 0.5, "f": 2.0}),
        ({}, {}),
    ],
)
def test_finite_metrics(values, expected):
    assert render.finite_metrics(values) == expected


# --- writing the artifacts ----------------------------------------------------------------


def _outputs(tmp_path, cls, key="report", make_dir=True):
    artifact = cls()
    artifact.uri = str(tmp_path / "root" / "Task" / key / "7")
    if make_dir:  # as TFX's local launcher leaves it; KFP's creates only the parent
        (tmp_path / "root" / "Task" / key / "7").mkdir(parents=True)
    return {key: [artifact]}, artifact


@pytest.mark.parametrize("make_dir", [True, False])
@pytest.mark.parametrize("content", ["# text\n", b"<html></html>"])
def test_write_file_puts_one_file_at_the_uri(tmp_path, make_dir, content):
    from components.dashboard import artifacts

    outputs, artifact = _outputs(tmp_path, artifacts.Markdown, make_dir=make_dir)
    assert artifacts.write_file(outputs, "report", content) == artifact.uri
    with open(artifact.uri, "rb") as fh:
        assert fh.read() == (content if isinstance(content, bytes) else content.encode())
    assert artifact.get_string_custom_property(artifacts.DISPLAY_NAME) == "report"


def test_write_file_refuses_a_directory_with_data(tmp_path):
    from components.dashboard import artifacts

    outputs, artifact = _outputs(tmp_path, artifacts.HTML)
    with open(f"{artifact.uri}/other", "w") as fh:
        fh.write("x")
    with pytest.raises(ValueError, match="must be a file, but a directory with files is there"):
        artifacts.write_file(outputs, "report", "x")


def test_write_metrics_records_floats_and_refuses_nan(tmp_path):
    from components.dashboard import artifacts

    outputs, artifact = _outputs(tmp_path, artifacts.Metrics, key="metrics")
    artifacts.write_metrics(outputs, "metrics", {"dice_label_1": 0.75, "hd95_mm_label_1": 3})
    assert artifact.get_float_custom_property("dice_label_1") == 0.75
    assert artifact.get_float_custom_property("hd95_mm_label_1") == 3.0
    with open(artifact.uri) as fh:
        assert json.load(fh) == {"dice_label_1": 0.75, "hd95_mm_label_1": 3.0}
    for bad in (math.nan, math.inf, None, "0.5", True):
        with pytest.raises(ValueError, match="not a finite number"):
            artifacts.write_metrics(outputs, "metrics", {"x": bad})


@pytest.mark.parametrize("title", ["system.Markdown", "system.HTML", "system.Metrics"])
def test_types_carry_kfp_titles(title):
    from tfx.orchestration.kubeflow.v2 import compiler_utils

    from components.dashboard import artifacts

    cls = {c.TYPE_NAME: c for c in (artifacts.Markdown, artifacts.HTML, artifacts.Metrics)}[title]
    # What the compiler writes as the schema title: KFP's UI picks its viewer by this name.
    assert compiler_utils.get_artifact_schema(cls) == f"title: {title}\ntype: object\n"
    assert artifacts.TITLE_TO_CLASS_PATH[title] == f"components.dashboard.artifacts.{cls.__name__}"


# --- the evaluator's dashboard view ---------------------------------------------------------


def _case(case_id, modality, dice, hd95, surface_dice):
    return {
        "case_id": case_id,
        "modality": modality,
        "site": "s",
        "spacing_bin": "iso",
        "spacing": [1.0, 1.0, 1.0],
        "shape": [4, 4, 4],
        "labels": {
            str(k): {"dice": dice[i], "hd95_mm": hd95[i], "msd_mm": 0.0, "surface_dice": surface_dice[i]}
            for i, k in enumerate((1, 2))
        },
    }


def _eval_report(cases, tfma=None):
    from components.segmentation_evaluator import report

    return report.build_report(
        cases, [1, 2], 2.0, tfma or {}, {"ok": True, "failures": []}, None, "model", {"min_mean_dice": 0.5}
    )


@pytest.mark.parametrize(
    "cases,tfma,expected",
    [
        (
            [
                _case("a", "CT", (0.8, 0.6), (2.0, 4.0), (0.9, 0.7)),
                _case("b", "MR", (1.0, 0.4), (4.0, 6.0), (1.0, 0.5)),
            ],
            {"overall": {"mean_dice": 0.7}, "modality=CT": {"mean_dice": 0.1}},
            {
                "dice_label_1": 0.9,
                "dice_label_2": 0.5,
                "hd95_mm_label_1": 3.0,
                "hd95_mm_label_2": 5.0,
                "surface_dice_label_1": 0.95,
                "surface_dice_label_2": 0.6,
                "tfma_mean_dice": 0.7,
            },
        ),
        # Label 2 missed in every case: no finite HD95, which is left out; no TFMA value either.
        (
            [_case("a", "CT", (1.0, 0.0), (0.0, math.inf), (1.0, 0.0))],
            {},
            {
                "dice_label_1": 1.0,
                "dice_label_2": 0.0,
                "hd95_mm_label_1": 0.0,
                "surface_dice_label_1": 1.0,
                "surface_dice_label_2": 0.0,
            },
        ),
    ],
)
def test_dashboard_metrics_are_the_overall_per_label_means(cases, tfma, expected):
    from components.segmentation_evaluator import report

    metrics = report.dashboard_metrics(_eval_report(cases, tfma))
    assert metrics == pytest.approx(expected)


def test_dashboard_markdown_drops_picture_links_and_adds_anomalies():
    from components.segmentation_evaluator import report

    result = {**_eval_report([_case("a", "CT", (0.8, 0.6), (2.0, 4.0), (0.9, 0.7))]), "pictures": {"d.png": "cap"}}
    assert "](d.png)" in report.summary_markdown(result)
    text = report.dashboard_markdown(result, {"train": []})
    assert "](" not in text and "| overall | 1 | 1 | 0.800 | 2.00 | 0.900 |" in text
    assert text.endswith("## Data validation (ExampleValidator)\n\nno anomalies (train)\n")
    other = report.dashboard_markdown(None, None, "classification")
    assert other.startswith("# Evaluation\n\nTask classification: no segmentation report") and "not run" in other


def test_dashboard_html_embeds_the_pictures_write_report_drew(tmp_path):
    from components.segmentation_evaluator import report

    result = _eval_report([_case("a", "CT", (0.8, 0.6), (2.0, 4.0), (0.9, 0.7))])
    paths = report.write_report(result, str(tmp_path / "evaluation"))
    pngs = [p for p in paths.values() if p.endswith(".png")]
    text = report.dashboard_html(report.dashboard_markdown(result, None), paths)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(embedded) == len(pngs) >= 2
    assert [base64.b64decode(e) for e in embedded] == [open(p, "rb").read() for p in pngs]


def test_read_anomalies_from_example_validator_output(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from components.segmentation_evaluator import report

    for split, features in (("train", {"spacing": "Out-of-range values"}), ("eval", {})):
        proto = anomalies_pb2.Anomalies()
        for name, short in features.items():
            proto.anomaly_info[name].short_description = short
            proto.anomaly_info[name].description = "Unexpectedly large value: 9."
        (tmp_path / f"Split-{split}").mkdir()
        (tmp_path / f"Split-{split}" / report.ANOMALIES_FILE).write_bytes(proto.SerializeToString())
    assert report.read_anomalies(str(tmp_path)) == {
        "eval": [],
        "train": [("spacing", "Out-of-range values: Unexpectedly large value: 9.")],
    }
    assert report.read_anomalies(None) is None
