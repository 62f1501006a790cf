"""Classification metrics in numpy: accuracy, macro-F1, confusion matrix, calibration."""

from __future__ import annotations

import itertools

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Return the n x n count matrix, rows = true class, columns = predicted."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (precision, recall, f1) per class from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def accuracy_and_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int = 7) -> tuple[float, float]:
    """Accuracy and macro-F1 of predicted class indices (n classes)."""
    cm = confusion_matrix(y_true, y_pred, n)
    return float((y_true == y_pred).mean()), float(per_class_f1(cm)[2].mean())


def summarize(y_true: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Return accuracy, macro-F1, per-class scores and the confusion matrix."""
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    p, r, f1 = per_class_f1(cm)
    return {
        "n": len(y_true),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(cm[i].sum())}
            for i, name in enumerate(labels)
        },
        "confusion": cm.tolist(),
        "ece": expected_calibration_error(y_true, probs),
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Return the expected calibration error of the top-1 confidence."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def nll(y_true: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    """Return the mean negative log-likelihood of softmax(logits / T)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y_true)), y_true].mean())


def fit_temperature(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Return the temperature in [0.25, 10] that minimises validation NLL (golden-section on log T)."""
    lo, hi = np.log(0.25), np.log(10.0)
    phi = (np.sqrt(5) - 1) / 2
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    for _ in range(60):
        if nll(y_true, logits, np.exp(a)) < nll(y_true, logits, np.exp(b)):
            hi = b
        else:
            lo = a
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    return float(np.exp((lo + hi) / 2))
