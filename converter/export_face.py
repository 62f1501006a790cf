"""Quantise the trained face model to full-integer int8, export float TFLite and ONNX, evaluate, card."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from converter.datasets import REPO_ROOT, load_fer2013
from converter.face_card import history_summary
from converter.face_net import INPUT_SIZE, build_face_net
from converter.tflite_export import convert, onnx_export, saved_model
from converter.train_face import architecture_of, face_splits, load_best_net
from device.contract.labels import LABELS, NUM_LABELS

logger = logging.getLogger(__name__)

MODELS = REPO_ROOT / "models_tflite"
INT8_FILE = "face_emotion_int8.tflite"
FLOAT_FILE = "face_emotion_float.tflite"
ONNX_FILE = "face_emotion.onnx"
CALIBRATION_SAMPLES = 1000


def _val_accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    logits = net.predict((x.astype(np.float32) / 255.0)[..., None], batch_size=512, verbose=0)
    return float((logits.argmax(1) == y).mean())


def _select_net(work_dir: Path, x_train: np.ndarray, xva: np.ndarray, yva: np.ndarray, swa_last: tuple[int, ...],
                soup_with: Path | None = None):
    """Return (net, how it was chosen): the best-validation checkpoint, or the average of the last N epoch
    snapshots (N from `swa_last`, each tried) when that scores higher on validation (never on test).

    With `soup_with` (the weights the run started from), each candidate's half-and-half weight average with
    those weights is tried too."""
    import keras

    from converter.swa import averaged_net, snapshot_epochs

    keras.mixed_precision.set_global_policy("float32")
    arch = architecture_of(work_dir)
    weights = work_dir / "best.weights.h5"
    if weights.exists():
        best = build_face_net(NUM_LABELS, arch=arch)
        best.load_weights(str(weights))
    else:  # training still running or interrupted: take the best checkpoint so far
        best = load_best_net(work_dir)
    best_acc = _val_accuracy(best, xva, yva)
    choice = (best, f"best-validation checkpoint (val accuracy {best_acc:.4f})")
    chosen = "best-validation checkpoint"
    top = best_acc
    snapshots = list(snapshot_epochs(work_dir / "snapshots").values())
    for n in sorted({min(n, len(snapshots)) for n in swa_last}):
        if n < 2:
            continue
        swa = averaged_net(snapshots[-n:], x_train, arch)
        swa_acc = _val_accuracy(swa, xva, yva)
        logger.info("validation accuracy: best checkpoint %.4f, average of last %d epochs %.4f", best_acc, n, swa_acc)
        if swa_acc > top:
            top = swa_acc
            chosen = f"average of the last {n} epochs' weights with batch-norm statistics recomputed"
            choice = (swa, f"{chosen} (val accuracy {swa_acc:.4f}; best single checkpoint {best_acc:.4f})")
    if soup_with is not None:
        from converter.swa import soup_net

        soup = soup_net(choice[0], soup_with, x_train, arch)
        soup_acc = _val_accuracy(soup, xva, yva)
        logger.info("validation accuracy: chosen %.4f, its half-and-half soup with %s %.4f", top, soup_with.name,
                    soup_acc)
        if soup_acc > top:
            choice = (soup, f"half-and-half weight average (a model soup, batch-norm statistics recomputed) of the "
                            f"{chosen} and the starting weights `{soup_with.name}` (val accuracy "
                            f"{soup_acc:.4f}; without the soup {top:.4f}; best single checkpoint {best_acc:.4f})")
    return choice


def _calibration_faces(x_train: np.ndarray, y_train: np.ndarray, n: int, seed: int = 3) -> np.ndarray:
    """Return n real training faces, stratified by class, as float32 (n, 48, 48, 1) in [0, 1]."""
    rng = np.random.default_rng(seed)
    per_class = max(1, n // NUM_LABELS)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y_train == c), min(per_class, int((y_train == c).sum())), replace=False)
         for c in range(NUM_LABELS)]
    )
    rng.shuffle(idx)
    return (x_train[idx].astype(np.float32) / 255.0)[..., None]


def _plot_confusion(cm: np.ndarray, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / cm.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(NUM_LABELS), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(NUM_LABELS), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def export_face(
    work_dir: Path, swa_last: tuple[int, ...] = (8,), notes: str | None = None,
    soup_with: Path | None = None,
) -> dict:
    """Export the best weights in work_dir to models_tflite/, evaluate them and write the card."""
    from device.models.face_emotion import FaceEmotionModel
    from device.runtime import open_backend

    (xtr, ytr), (xva, yva) = face_splits()
    net, selection = _select_net(work_dir, xtr, xva, yva, swa_last, soup_with)
    saved = work_dir / "saved_model"
    saved_model(net, saved)
    xte, yte = load_fer2013("test")

    MODELS.mkdir(exist_ok=True)
    (MODELS / FLOAT_FILE).write_bytes(convert(saved, None))
    (MODELS / INT8_FILE).write_bytes(convert(saved, _calibration_faces(xtr, ytr, CALIBRATION_SAMPLES)))
    onnx_export(saved, MODELS / ONNX_FILE)

    models = {
        "int8": FaceEmotionModel(open_backend(MODELS / INT8_FILE)),
        "float": FaceEmotionModel(open_backend(MODELS / FLOAT_FILE)),
        "onnx": FaceEmotionModel(open_backend(MODELS / ONNX_FILE)),
    }
    train_cfg = json.loads((work_dir / "train_config.json").read_text())
    return write_face_outputs(models, xva, yva, xte, yte, {
        "train_config": train_cfg, "selection": selection, "run_notes": notes,
        "history": history_summary(work_dir)}, version=time.strftime("face-emotion-%Y%m%d"))


def write_face_outputs(models: dict, xva: np.ndarray, yva: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                       report: dict, version: str) -> dict:
    """Evaluate the exported int8, float and ONNX models (`face_eval`), then write their manifest entries,
    the metrics JSON, the confusion matrix and the card. `report` holds how the weights were made."""
    from converter.face_eval import evaluate_face_model
    from device.model_store import sha256_of
    from device.models.manifest_tools import update_manifest_entry

    results: dict[str, dict] = {}
    test_logits = {}
    for key, model in models.items():
        results[key], test_logits[key] = evaluate_face_model(model, xva, yva, xte, yte)
        r = results[key]
        logger.info("%s: test acc %.4f (one pass %.4f) macro-F1 %.4f, val acc %.4f, mirror gate < %.2f, T=%.3f",
                    key, r["test"]["accuracy"], r["single_pass"]["test"]["accuracy"], r["test"]["macro_f1"],
                    r["val_accuracy"], r["mirror_below_confidence"], r["calibration_temperature"])
    agree = float((test_logits["int8"]["gated"].argmax(1) == test_logits["float"]["gated"].argmax(1)).mean())
    agree_single = float((test_logits["int8"]["single"].argmax(1)
                          == test_logits["float"]["single"].argmax(1)).mean())
    onnx_diff = float(np.abs(test_logits["onnx"]["single"] - test_logits["float"]["single"]).max())
    _plot_confusion(np.asarray(results["int8"]["test"]["confusion"]),
                    f"int8 face model, FER2013 test (acc {results['int8']['test']['accuracy']:.3f})",
                    MODELS / "face_emotion_confusion.png")

    common = {
        "task": "face_emotion",
        "version": version,
        "labels": list(LABELS),
        "training_data": "FER2013 train (28,709 faces); validation: stratified 10% carved from train (seed 13)",
        "evaluation_data": "FER2013 test (PublicTest + PrivateTest, 7,178 faces)",
        "licence": "Weights: trained by Aula on FER2013 (research use only; the image rights were never cleared). "
                   "Code: Apache-2.0.",
        "card": "cards/face_emotion.md",
    }
    input_common = {"shape": [1, INPUT_SIZE, INPUT_SIZE, 1], "colour": "grayscale",
                    "resize": "square face crop resized to 48x48 (INTER_AREA when shrinking)",
                    "normalisation": "pixel / 255 -> [0, 1]"}
    for key, file in (("int8", INT8_FILE), ("float", FLOAT_FILE), ("onnx", ONNX_FILE)):
        r = results[key]
        spec = models[key].backend.inputs[0]
        entry = dict(common)
        entry.update({
            "file": file,
            "sha256": sha256_of(MODELS / file),
            "size_bytes": (MODELS / file).stat().st_size,
            "runtime": "onnxruntime" if file.endswith(".onnx") else "litert",
            "input": {**input_common, "dtype": str(spec.dtype), "quantization": {
                "scale": spec.scale, "zero_point": spec.zero_point} if spec.quantized else None},
            "output": "logits (7); apply softmax(logits / calibration_temperature)",
            "calibration_temperature": r["calibration_temperature"],
            "mirror_below_confidence": r["mirror_below_confidence"],
            "mirror_gate": ("faces whose top uncalibrated probability is below mirror_below_confidence get a "
                            "second pass on their mirror image, and the two logits are averaged (threshold "
                            "fitted on validation; the metrics and the temperature are for this gated output)"),
            "metrics": {
                "fer2013_test_accuracy": r["test"]["accuracy"],
                "fer2013_test_macro_f1": r["test"]["macro_f1"],
                "fer2013_test_ece_calibrated": r["test"]["ece"],
                "val_accuracy": r["val_accuracy"],
                "per_class_f1": {k: v["f1"] for k, v in r["test"]["per_class"].items()},
                "mirrored_fraction_test": r["mirrored_fraction_test"],
                "single_pass": {
                    "fer2013_test_accuracy": r["single_pass"]["test"]["accuracy"],
                    "fer2013_test_macro_f1": r["single_pass"]["test"]["macro_f1"],
                    "val_accuracy": r["single_pass"]["val_accuracy"],
                    "calibration_temperature": r["single_pass"]["calibration_temperature"],
                },
            },
        })
        if key == "int8":
            entry["metrics"]["float_test_accuracy"] = results["float"]["test"]["accuracy"]
            entry["metrics"]["int8_minus_float_accuracy_points"] = 100 * (
                r["test"]["accuracy"] - results["float"]["test"]["accuracy"])
            entry["metrics"]["top1_agreement_with_float"] = agree
            entry["metrics"]["single_pass"]["float_test_accuracy"] = results["float"]["single_pass"]["test"]["accuracy"]
            entry["metrics"]["single_pass"]["top1_agreement_with_float"] = agree_single
            entry["quantization"] = (f"full-integer int8 (weights and activations), calibrated on "
                                     f"{CALIBRATION_SAMPLES} real FER2013 training faces, stratified")
        if key == "onnx":
            entry["metrics"]["max_abs_logit_diff_vs_float_tflite"] = onnx_diff
        update_manifest_entry(f"face_emotion_{key}", entry)

    int8_spec = models["int8"].backend.inputs[0]
    report = {**report, "results": results, "int8_float_top1_agreement": agree,
              "int8_float_top1_agreement_single_pass": agree_single, "onnx_max_abs_logit_diff": onnx_diff,
              "int8_input_scale": int8_spec.scale, "int8_input_zero_point": int8_spec.zero_point,
              "int8_size_bytes": (MODELS / INT8_FILE).stat().st_size}
    (MODELS / "cards").mkdir(exist_ok=True)
    (MODELS / "cards" / "face_emotion_metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    from converter.face_card import write_face_card

    write_face_card(report, MODELS / "cards" / "face_emotion.md")
    return report


def evaluate_committed(work_dir: Path | None = None) -> dict:
    """Evaluate the committed face models again (fitting their mirror gates) and rewrite their manifest
    entries, metrics and card; the weights, their version and how they were made are kept as they are.

    `work_dir`: the training run the weights came from, to record its history on the card."""
    from device.model_store import model_entry
    from device.models.face_emotion import FaceEmotionModel
    from device.runtime import open_backend

    previous = json.loads((MODELS / "cards" / "face_emotion_metrics.json").read_text())
    report = {k: previous[k] for k in ("train_config", "selection", "run_notes", "history") if k in previous}
    if work_dir is not None and (work_dir / "history.csv").exists():
        report["history"] = history_summary(work_dir)
    models = {key: FaceEmotionModel(open_backend(MODELS / file))
              for key, file in (("int8", INT8_FILE), ("float", FLOAT_FILE), ("onnx", ONNX_FILE))}
    (_, _), (xva, yva) = face_splits()
    xte, yte = load_fer2013("test")
    return write_face_outputs(models, xva, yva, xte, yte, report,
                              version=model_entry("face_emotion_int8").meta["version"])
