"""The TFMA Dice metrics' combiner against the numpy reference."""

import numpy as np
import pytest

from modules.metrics.dice import dice_per_label


def _onehot(label, num_classes=3):
    return np.eye(num_classes, dtype=np.float32)[label]


def _cases(n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        truth = rng.integers(0, 3, (6, 5, 4))
        pred = np.where(rng.random((6, 5, 4)) < 0.8, truth, rng.integers(0, 3, (6, 5, 4)))
        out.append((truth, pred))
    return out


def test_dice_per_label_known_values():
    truth = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 0, 2, 2, 0])
    d = dice_per_label(truth, pred, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / 3)
    assert d[2] == pytest.approx(2 * 2 / 5)
    assert np.isnan(d[3])  # absent from both: undefined, skipped in means


def test_combiner_matches_numpy_mean_of_per_case_dice():
    from tensorflow_model_analysis.metrics import metric_types

    from modules.metrics import tfma_dice

    cases = _cases()
    for metric, labels in ((tfma_dice.Dice(label=2), [2]), (tfma_dice.MeanDice(labels=[1, 2]), [1, 2])):
        computation = metric.computations()[0]
        combiner = computation.combiner
        halves = []
        for part in (cases[:2], cases[2:]):  # two workers, then merged
            acc = combiner.create_accumulator()
            for truth, pred in part:
                element = metric_types.StandardMetricInputs(labels=truth, predictions={"probabilities": _onehot(pred)})
                acc = combiner.add_input(acc, element)
            halves.append(acc)
        result = combiner.extract_output(combiner.merge_accumulators(halves))
        expected = np.mean([np.mean([dice_per_label(t, p, [k])[k] for t, p in cases]) for k in labels])
        ((key, value),) = result.items()
        assert key.name == metric.name
        assert value == pytest.approx(expected, abs=1e-12)


def test_batched_inputs_give_one_dice_per_case():
    from modules.metrics.tfma_dice import case_dice

    cases = _cases(3, seed=1)
    truth = np.stack([t for t, _ in cases])
    probs = np.stack([_onehot(p) for _, p in cases])
    per_case = case_dice(truth, probs, [1, 2])
    assert len(per_case) == 3
    for (t, p), got in zip(cases, per_case):
        assert got == dice_per_label(t, p, [1, 2])
