"""Evaluate an exported face model: one pass per face, and with its mirror gate fitted on validation.

The mirror gate (`device.models.face_emotion.mirror_gate`) gives a face a second, mirrored pass when the
model's top probability on it is low, and averages the two logits. The gate's threshold is chosen here on
the validation faces only; the test faces are then run through the device's own code path with it.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from converter.metrics import fit_temperature, summarize
from device.contract.labels import LABELS
from device.models.face_emotion import mirror_gate, softmax

# Thresholds tried on validation: 0 is one pass per face, 1 mirrors every face.
GATE_GRID = (0.0, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 1.0)


def batched_logits(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Return the (n, 7) logits of a FaceEmotionModel over face crops x, a batch at a time."""
    return np.concatenate([model.logits_batch(list(x[i:i + batch])) for i in range(0, len(x), batch)])


def latency_ms(model, faces, repeats: int = 300, warmup: int = 20) -> float:
    """Mean ms per face over `repeats` calls of `model.predict`, one face per call, cycling through `faces`.

    A mean, not a median, so the mirror gate's second passes are counted."""
    it = itertools.cycle(faces)
    for _ in range(warmup):
        model.predict(next(it))
    t = time.perf_counter()
    for _ in range(repeats):
        model.predict(next(it))
    return (time.perf_counter() - t) * 1000 / repeats


def gated_logits(single: np.ndarray, mirrored: np.ndarray, below: float) -> np.ndarray:
    """Return what the gate at `below` yields from one-pass and mirror-image logits of the same faces."""
    mask = mirror_gate(single, below)
    return np.where(mask[:, None], (single + mirrored) / 2, single)


def fit_gate(single: np.ndarray, mirrored: np.ndarray, y: np.ndarray,
             grid: tuple[float, ...] = GATE_GRID) -> tuple[float, list[dict]]:
    """Return the threshold with the most correct validation faces (the cheapest of equals) and the table."""
    table = []
    for below in grid:
        correct = int((gated_logits(single, mirrored, below).argmax(1) == y).sum())
        table.append({"below": below, "val_accuracy": correct / len(y),
                      "mirrored_fraction": float(mirror_gate(single, below).mean()), "_correct": correct})
    best = max(table, key=lambda r: (r["_correct"], -r["mirrored_fraction"]))
    for row in table:
        del row["_correct"]
    return best["below"], table


def _scores(y: np.ndarray, logits: np.ndarray, temperature: float) -> dict:
    return summarize(y, softmax(logits, temperature), LABELS)


def evaluate_face_model(model, xva: np.ndarray, yva: np.ndarray, xte: np.ndarray,
                        yte: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Evaluate a FaceEmotionModel one pass per face and gated; set its gate to the fitted threshold.

    Returns (results, test logits {"single": ..., "gated": ...}). The results hold the gated figures at
    the top and the one-pass figures under "single_pass"; every choice uses validation faces only.
    """
    model.mirror_below = 0.0
    single_va, mirror_va = batched_logits(model, xva), batched_logits(model, xva[:, :, ::-1])
    single_te = batched_logits(model, xte)
    t_single = fit_temperature(yva, single_va)
    single = {"test": _scores(yte, single_te, t_single), "calibration_temperature": t_single,
              "val_accuracy": float((single_va.argmax(1) == yva).mean()),
              "latency_ms_per_face_1thread": latency_ms(model, xte)}

    below, table = fit_gate(single_va, mirror_va, yva)
    gated_va = gated_logits(single_va, mirror_va, below)
    t_gated = fit_temperature(yva, gated_va)
    model.mirror_below = below
    model.reset_counts()
    gated_te = batched_logits(model, xte)  # the device's own path, not a recombination
    mirrored_test = model.mirrored_share
    results = {
        "test": _scores(yte, gated_te, t_gated), "calibration_temperature": t_gated,
        "val_accuracy": float((gated_va.argmax(1) == yva).mean()),
        "latency_ms_per_face_1thread": latency_ms(model, xte),
        "mirror_below_confidence": below, "mirror_gate_table": table,
        "mirrored_fraction_val": next(row["mirrored_fraction"] for row in table if row["below"] == below),
        "mirrored_fraction_test": mirrored_test,
        "single_pass": single,
    }
    return results, {"single": single_te, "gated": gated_te}
