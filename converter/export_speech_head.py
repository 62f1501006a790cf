"""Export the speech-emotion head on Whisper's encoder (int8 and float TFLite, ONNX), evaluate it through the
device's own model class on RAVDESS test actors 19-24, and write its manifest entries, metrics and card.

`evaluate_committed` re-evaluates the committed files (`python -m converter evaluate-speech`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from converter import ravdess
from converter import whisper_features as wf
from converter.datasets import REPO_ROOT, cache_dir
from converter.export_speech import _short, _test_set, by_sex, evaluate, robustness_figures
from converter.metrics import summarize
from converter.tflite_export import convert, onnx_export, saved_model
from device.contract.labels import LABELS

MODELS = REPO_ROOT / "models_tflite"
FILES = {"speech_emotion_whisper_int8": "speech_emotion_whisper_int8.tflite",
         "speech_emotion_whisper_float": "speech_emotion_whisper_float.tflite",
         "speech_emotion_whisper_onnx": "speech_emotion_whisper.onnx"}
DEFAULT = "speech_emotion_whisper_int8"
VERSION = "speech-emotion-whisper-head"
CALIBRATION_ROWS = 1000
REPORT = "speech_emotion_whisper_metrics.json"
OUT_OF_FOLD = "cards/speech_emotion_whisper_out_of_fold.json"
STANDARDISE = "speech_emotion_whisper_standardise.json"  # a companion file of each head: features' mean and scale


def write_out_of_fold(training: dict) -> None:
    """Each training-actor clip's calibrated probabilities from the fold network that did not train on its actor.

    Fusion chooses its weights on actors 1-18 (converter/evaluate_fusion.py); the shipped head, the mean of the
    five fold networks, has heard four fifths of them, so its own outputs there are over-confident."""
    clips = ravdess.clips()
    logp = np.asarray(training["oof"]["logp"]) / float(training["calibration_temperature"])
    p = np.exp(logp - logp.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = {clips[i].path.name: [round(float(v), 5) for v in row]
            for i, row in zip(training["oof"]["clip"], p, strict=True)}
    (MODELS / OUT_OF_FOLD).write_text(json.dumps({"version": VERSION, "labels": list(LABELS),
                                                  "probabilities": rows}, indent=0) + "\n")


def calibration_rows(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, n: int = CALIBRATION_ROWS,
                     seed: int = 3) -> list[np.ndarray]:
    """`n` of the training rows `x` (training-actor speech, clean and augmented), standardised, as the int8
    calibration set."""
    x = (x - mean) / scale
    rng = np.random.default_rng(seed)
    return [x[i].astype(np.float32) for i in rng.choice(len(x), size=min(n, len(x)), replace=False)]


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and standard deviation over the training rows `x` (clean and augmented), as the device
    applies them before the head: an int8 input has one scale for all its columns, and the encoder's pooled
    frames (about +-2) beside the voice statistics (log-mel levels down to -100 dB) would not share one."""
    x = x.astype(np.float64)
    mean = np.array([float(f"{v:.6g}") for v in x.mean(0)])
    scale = np.array([float(f"{v:.6g}") for v in x.std(0) + 1e-6])
    return mean, scale


def standardised_head(w: np.ndarray, b: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    """(W', b') with (x - mean) / scale @ W' + b' == x @ W + b."""
    return w * scale[:, None], b + mean @ w


def keras_head(w: np.ndarray, b: np.ndarray):
    """The linear head as a one-layer Keras model (raw pooled features in, 7 logits out), for the converters."""
    import keras

    inp = keras.Input((w.shape[0],), name="features")
    dense = keras.layers.Dense(w.shape[1], name="logits")
    net = keras.Model(inp, dense(inp), name="speech_head")  # a fixed name: the ONNX node names come from it
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return net


def validation_agreement(net_float: Path, net_int8: Path, clean: np.ndarray, mean: np.ndarray,
                         scale: np.ndarray) -> dict:
    """int8 against float top-1 agreement on the training actors' clean feature rows `clean` (no test actor is
    read)."""
    from device.runtime import open_backend

    x = ((clean - mean) / scale).astype(np.float32)
    outs = []
    for path in (net_float, net_int8):
        backend = open_backend(path, "litert")
        (raw,) = backend.run(backend.inputs[0].quantize(x))
        outs.append(backend.outputs[0].dequantize(raw))
    return {"rows": len(x), "top1_agreement": round(float((outs[0].argmax(1) == outs[1].argmax(1)).mean()), 4),
            "max_logit_difference": round(float(np.abs(outs[0] - outs[1]).max()), 4)}


def _entry(name: str, quantized: bool, file: str, temperature: float, stats: str, voice: bool,
           metrics: dict, layers: tuple[int, ...] = ()) -> dict:
    from device.models.manifest_tools import file_meta
    from device.models.voice_statistics import N_FEATURES
    from device.models.whisper_encoder import HOP_S, WINDOW_S, pooled_width

    meta = file_meta(MODELS / file)
    meta.update({
        "task": "speech_emotion",
        "runtime": "onnxruntime" if file.endswith(".onnx") else "litert",
        "version": VERSION,
        "labels": list(LABELS),
        "card": "cards/speech_emotion_whisper.md",
        "input": {"shape": [1, pooled_width(stats, layers) + (N_FEATURES if voice else 0)],
                  "dtype": "int8" if quantized else "float32"},
        "front_end": {"kind": "whisper_encoder", "encoder": "whisper_tiny_en", "window_s": WINDOW_S, "hop_s": HOP_S,
                      "loudness": "active level normalised to -20 dBFS", "pooling": stats,
                      "voice_statistics": voice, "padding": "none: the encoder runs on the window itself",
                      "standardise": STANDARDISE},
        "companions": {STANDARDISE: {k: v for k, v in file_meta(MODELS / STANDARDISE).items() if k != "file"}},
        "output": "logits (7); apply softmax(logits / calibration_temperature), average over 2 s windows",
        "calibration_temperature": temperature,
        "licence": "Head: trained by Aula on RAVDESS (CC BY-NC-SA 4.0: non-commercial research and teaching). "
                   "Encoder: Whisper tiny.en (MIT), see LICENSE-whisper.txt. Code: Apache-2.0.",
        "training_data": "RAVDESS speech, actors 1-18 (calm counted as neutral), clean and augmented copies",
        "evaluation_data": "RAVDESS speech, test actors 19-24 (never used for a choice)",
        "metrics": metrics,
        "out_of_fold": OUT_OF_FOLD,
    })
    if layers:
        meta["front_end"]["layers"] = list(layers)
    if quantized:
        meta["quantization"] = (f"full-integer int8 (weights and activations), calibrated on {CALIBRATION_ROWS} "
                                "feature rows of training-actor speech, clean and augmented")
    return meta


def held_out_sex(training: dict) -> dict:
    """The chosen recipe trained on one sex's training actors, scored on each sex's test actors' clean clips."""
    from converter.train_speech_head import HeadConfig, clip_log_probs, fit, training_rows

    cfg = HeadConfig(**training["chosen"])
    clips = ravdess.clips()
    rows = training_rows(cfg.stats, cfg.copies, voice=cfg.voice, rooms=cfg.rooms, layers=cfg.layers)
    x, ci = wf.load("clean", cfg.stats, voice=cfg.voice, layers=cfg.layers)
    test = np.array([clips[i].actor in ravdess.TEST_ACTORS for i in ci])
    out = {}
    for trained_on, female in (("male", False), ("female", True)):
        keep = (rows["actor"] % 2 == 0) == female
        head = fit(cfg, rows["x"][keep], rows["label"][keep])
        for tested_on, tf_ in (("male", False), ("female", True)):
            sel = test & np.array([(clips[i].actor % 2 == 0) == tf_ for i in ci])
            ids, lp = clip_log_probs(head, x[sel], ci[sel])
            y = np.array([clips[i].label for i in ids])
            out[f"train_{trained_on}_test_{tested_on}"] = _short(summarize(y, np.exp(lp), LABELS))
    return out


def export(head_path: Path) -> dict:
    """Convert, evaluate and register the head trained by `python -m converter train-speech --route whisper`."""
    from converter.train_speech_head import AUGMENTED, training_rows
    from device.models.manifest_tools import update_manifest_entry
    from device.models.speech_emotion import SpeechEmotionModel

    training = json.loads(head_path.with_suffix(".json").read_text())
    temperature = float(training["calibration_temperature"])
    stats, voice = training["chosen"]["stats"], bool(training["chosen"].get("voice", False))
    layers = tuple(training["chosen"].get("layers", ()))
    head = np.load(head_path)
    training_set = training_rows(stats, len(AUGMENTED), voice=voice, rooms=int(training["chosen"].get("rooms", 0)),
                                 layers=layers)
    rows = training_set["x"]
    standardise = standardisation(rows)
    (MODELS / STANDARDISE).write_text(json.dumps({"version": VERSION, "mean": standardise[0].tolist(),
                                                  "scale": standardise[1].tolist()}) + "\n")
    net = keras_head(*standardised_head(head["w"], head["b"], *standardise))
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"
        saved_model(net, saved)
        (MODELS / FILES["speech_emotion_whisper_float"]).write_bytes(convert(saved, None))
        calibration = calibration_rows(rows, *standardise)
        (MODELS / FILES["speech_emotion_whisper_int8"]).write_bytes(convert(saved, calibration))
        onnx_export(saved, MODELS / FILES["speech_emotion_whisper_onnx"])
    training["int8_on_training_actors"] = validation_agreement(
        MODELS / FILES["speech_emotion_whisper_float"], MODELS / FILES["speech_emotion_whisper_int8"],
        rows[training_set["clean"]], *standardise)
    print("int8 against float on actors 1-18:", json.dumps(training["int8_on_training_actors"]), flush=True)
    waves, labels, actors = _test_set()
    results = {}
    for name, file in FILES.items():
        update_manifest_entry(name, _entry(name, name.endswith("int8"), file, temperature, stats, voice, {}, layers))
        results[name] = evaluate(SpeechEmotionModel.load(name), waves, labels, actors,
                                 robustness=name == DEFAULT)
    report = _report(results, labels, actors, training)
    write_out_of_fold(training)
    for name, file in FILES.items():
        update_manifest_entry(name, _entry(name, name.endswith("int8"), file, temperature, stats, voice,
                                           report["models"][name], layers))
    return report


def _report(results: dict, labels, actors, training: dict) -> dict:
    from converter.speech_head_card import write_card

    int8, flt = results[DEFAULT], results["speech_emotion_whisper_float"]
    report = {
        "version": VERSION,
        "training": {k: training[k] for k in ("grid", "chosen", "cv_accuracy", "cv_accuracy_std", "cv_macro_f1",
                                              "cv_room_accuracy", "cv_folds", "calibration_temperature",
                                              "int8_on_training_actors") if k in training},
        "test_clips": len(labels),
        "models": {
            name: {"accuracy": round(r["clean"]["accuracy"], 4), "macro_f1": round(r["clean"]["macro_f1"], 4),
                   **robustness_figures(r)}
            for name, r in results.items()
        },
        "int8_minus_float_points": round(100 * (int8["clean"]["accuracy"] - flt["clean"]["accuracy"]), 2),
        "int8_float_agreement": round(float((int8["probs"].argmax(1) == flt["probs"].argmax(1)).mean()), 4),
        "by_sex_int8": by_sex(labels, int8["probs"], actors),
        "held_out_sex_float": held_out_sex(training),
        "confusion_int8": int8["clean"]["confusion"],
        "per_class_int8": int8["clean"]["per_class"],
    }
    (MODELS / "cards").mkdir(exist_ok=True)
    (MODELS / "cards" / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    write_card(report, MODELS / "cards" / "speech_emotion_whisper.md")
    return report


def evaluate_committed() -> dict:
    """Evaluate the committed encoder-head speech models again and print their figures (the card's)."""
    from device.models.speech_emotion import SpeechEmotionModel

    waves, labels, actors = _test_set()
    out = {}
    for name in FILES:
        r = evaluate(SpeechEmotionModel.load(name), waves, labels, actors, robustness=name == DEFAULT)
        out[name] = {"accuracy": round(r["clean"]["accuracy"], 4), "macro_f1": round(r["clean"]["macro_f1"], 4),
                     **robustness_figures(r)}
        print(name, json.dumps(out[name]))
    return out


def default_head_path() -> Path:
    return cache_dir() / "speech_head" / "head.npz"
