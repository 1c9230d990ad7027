"""Evaluation: eval_config for both tasks, the segmentation report (the surface metrics it calls
are tested in test_surface_metrics.py)."""

import json

import pytest


def _metric_names(spec):
    return [m.class_name for m in spec.metrics]


def test_segmentation_eval_config_gates_mean_dice_and_slices_by_modality_site_spacing():
    import tensorflow_model_analysis as tfma

    from components.segmentation_evaluator.eval_config import eval_config
    from modules import features as es
    from pipeline.config import make_config

    cfg = make_config(min_mean_dice=0.6, max_dice_drop=0.05)
    config = eval_config(cfg.evaluation, 3)
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], [es.MODALITY], [es.SITE], [es.SPACING_BIN]]
    assert _metric_names(config.metrics_specs[0]) == ["Dice", "Dice", "MeanDice"]
    # With a baseline, TFX gates on the value AND on the candidate-minus-baseline diff.
    with_baseline = tfma.utils.update_eval_config_with_defaults(config, has_baseline=True, rubber_stamp=False)
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(
        with_baseline.metrics_specs, eval_config=with_baseline
    )
    candidate = {(k.name, k.is_diff): v for k, v in thresholds.items() if k.model_name == "candidate"}
    ((value_slice, value),) = candidate[("mean_dice", False)]
    ((change_slice, change),) = candidate[("mean_dice", True)]
    assert value_slice == change_slice == tfma.SlicingSpec()  # gates on the overall slice only
    assert value.lower_bound.value == pytest.approx(0.6)
    assert change.absolute.value == pytest.approx(-0.05)
    assert change.direction == tfma.MetricDirection.HIGHER_IS_BETTER


def test_classification_eval_config_has_auc_and_accuracy_with_a_macro_auc_gate():
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.metrics import metric_specs

    from components.segmentation_evaluator.eval_config import eval_config
    from pipeline.config import ConfigError, make_config

    cfg = make_config(task="classification", min_auc=0.8, max_auc_drop=0.01)
    config = tfma.utils.update_eval_config_with_defaults(
        eval_config(cfg.evaluation, 3), has_baseline=False, rubber_stamp=True
    )
    tfma.utils.verify_eval_config(config)
    names = [n for spec in config.metrics_specs for n in _metric_names(spec)]
    assert {"ExampleCount", "SparseCategoricalAccuracy", "AUC"} <= set(names)
    keys = {k for c in metric_specs.to_computations(config.metrics_specs, eval_config=config) for k in c.keys}
    per_class_auc = {k.sub_key.class_id for k in keys if k.name == "auc" and k.sub_key}
    assert per_class_auc == {0, 1, 2}
    thresholds = tfma.metrics.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
    (gated,) = thresholds
    assert gated.name == "auc" and gated.aggregation_type.macro_average
    ((spec, threshold),) = thresholds[gated]
    assert spec == tfma.SlicingSpec() and threshold.lower_bound.value == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="task"):
        make_config(task="detection")


def test_spacing_bins_name_the_coarsest_axis():
    from modules import features as es

    assert es.spacing_bin([1.0, 1.0, 1.0]) == "le1.0mm"
    assert es.spacing_bin([0.7, 0.7, 1.5]) == "1.0-1.5mm"
    assert es.spacing_bin([0.9, 2.2, 1.0]) == "1.5-2.5mm"
    assert es.spacing_bin([0.5, 0.5, 7.0]) == "gt5.0mm"


def test_report_with_perfect_predictions_and_its_files(tmp_path):
    """A predictor returning the ground truth: Dice 1, HD95 and mean distance 0, surface Dice 1 on
    every slice;
    the JSON, markdown and PNG land in the output directory."""
    from components.segmentation_evaluator import report
    from modules import features as es
    from tests.serving_double import phantom_examples

    examples = phantom_examples(3)
    serialized = [e.SerializeToString() for e in examples]

    def oracle(batch):
        import tensorflow as tf

        return [es.decode_case(tf.train.Example.FromString(b))["label"] for b in batch]

    records = report.evaluate_cases(oracle, serialized, [1, 2], 2.0)
    assert len(records) == 3 and {r["modality"] for r in records} == {"CT", "MR"}
    result = report.build_report(
        records,
        [1, 2],
        2.0,
        {"overall": {"mean_dice": 0.9, "dice_label_1": 0.95, "dice_label_2": 0.85}},
        {"ok": True, "failures": []},
        None,
        "model-uri",
        {"min_mean_dice": 0.5},
    )
    slices = result["surface"]["slices"]
    assert {"overall", "modality=CT", "modality=MR", "site=phantom-site"} <= set(slices)
    assert any(name.startswith("spacing_bin=") for name in slices)
    for label in ("1", "2"):
        m = slices["overall"]["labels"][label]
        assert m["dice"]["mean"] == 1.0 and m["hd95_mm"]["mean"] == 0.0 and m["surface_dice"]["mean"] == 1.0
        assert m["msd_mm"]["mean"] == 0.0
    paths = report.write_report(result, str(tmp_path / "evaluation"))
    with open(paths["json"]) as fh:
        assert json.load(fh)["surface"]["tolerance_mm"] == 2.0
    with open(paths["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = open(paths["summary"]).read()
    assert "blessed: **yes**" in summary and "| overall | 3 | 1 | 1.000 | 0.00 | 1.000 |" in summary


def test_report_runs_the_exported_model_on_native_grids(tmp_path):
    """The real predictor (serving_examples signature of an exported model) on phantom cases:
    masks come back on each case's own grid and every metric is in range."""
    from components.segmentation_evaluator import report
    from tests.serving_double import exported_test_model

    model = exported_test_model()
    predict = report.saved_model_predictor(model["model_dir"])
    serialized = [e.SerializeToString() for e in model["examples"]]
    records = report.evaluate_cases(predict, serialized, [1, 2], 2.0, max_cases=2)
    assert len(records) == 2
    for r in records:
        for metrics in r["labels"].values():
            assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["surface_dice"] <= 1.0
            assert metrics["hd95_mm"] >= 0.0 and metrics["msd_mm"] >= 0.0
    # The band model finds something of each label somewhere.
    assert max(r["labels"]["1"]["dice"] for r in records) > 0.0
