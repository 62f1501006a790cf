"""The converter's metrics, split and weighting rules, checked against hand-computed values."""

import numpy as np
import pytest

from converter.datasets import stratified_split
from converter.metrics import confusion_matrix, expected_calibration_error, fit_temperature, per_class_f1, summarize
from converter.train_face import class_weights
from device.contract.labels import LABELS


def test_confusion_and_macro_f1_match_hand_computation():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    p, r, f1 = per_class_f1(cm)
    assert np.allclose(p, [0.5, 2 / 3, 1.0])
    assert np.allclose(r, [0.5, 1.0, 0.5])
    assert np.allclose(f1, [0.5, 0.8, 2 / 3])


def test_summarize_reports_accuracy_and_macro_f1():
    y = np.arange(7).repeat(3)
    probs = np.eye(7)[y] * 0.9 + 0.1 / 7
    s = summarize(y, probs, LABELS)
    assert s["accuracy"] == 1.0 and s["macro_f1"] == 1.0
    assert set(s["per_class"]) == set(LABELS)


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 7))
    true_t = 2.5
    p = np.exp(logits / true_t)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(7, p=row) for row in p])
    assert fit_temperature(y, logits) == pytest.approx(true_t, rel=0.08)


def test_calibration_error_is_zero_for_perfectly_calibrated_confidence():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)


def test_stratified_split_holds_out_each_class_proportionally():
    labels = np.array([0] * 100 + [1] * 20 + [2] * 5)
    tr, va = stratified_split(labels, 0.2, seed=1)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [20, 4, 1]


def test_class_weights_favour_rare_classes_and_average_one():
    labels = np.array([0] * 900 + [1] * 100)
    w = class_weights(labels, 0.5)
    assert w[1] == pytest.approx(3 * w[0])
    assert (900 * w[0] + 100 * w[1]) / 1000 == pytest.approx(1.0)
