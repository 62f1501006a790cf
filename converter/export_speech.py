"""Export the trained speech-emotion CNN (int8 and float TFLite, ONNX), evaluate it through the device's own
SpeechEmotionModel on RAVDESS test actors 19-24, and write its manifest entries, metrics and card.

`evaluate_committed` re-evaluates the committed files (`python -m converter evaluate-speech`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from converter import ravdess
from converter.datasets import REPO_ROOT, cache_dir
from converter.metrics import summarize
from converter.speech_augment import coloured_noise, mix_at_snr, reverberate, voiced_range
from converter.speech_net import FRAMES, WIDTHS, multiply_adds
from converter.tflite_export import convert, onnx_export, saved_model
from device.contract.labels import LABELS
from device.models.log_mel import LogMelConfig, log_mel

logger = logging.getLogger(__name__)

MODELS = REPO_ROOT / "models_tflite"
FILES = {"speech_emotion_int8": "speech_emotion_int8.tflite", "speech_emotion_float": "speech_emotion_float.tflite",
         "speech_emotion_onnx": "speech_emotion.onnx"}
GAINS_DB = (-12, -6, 0, 6, 12)
SNRS_DB = (20, 10, 5)
RT60S_MS = (300, 600, 900)  # synthetic rooms, direct and reverberant sound equally loud (DRR 0 dB)
CALIBRATION_WINDOWS = 500


def voiced_part(wave: np.ndarray) -> np.ndarray:
    """The clip from its first to its last voiced frame, with 0.1 s either side (what the voice detector keeps)."""
    start, end = voiced_range(log_mel(wave, normalise=False))
    return wave[max(0, (start - 10) * 160) : (end + 10) * 160]


def calibration_windows(waves: list[np.ndarray], n: int, seed: int = 3) -> list[np.ndarray]:
    """`n` real 2 s windows of training-actor speech, normalised as the device normalises them."""
    from device.models.speech_emotion import window_features

    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(waves), size=min(n, len(waves)), replace=False):
        wins = window_features(voiced_part(waves[i]), FRAMES, FRAMES // 2, LogMelConfig())
        out.append(wins[rng.integers(0, len(wins))][..., None])
    return out


def _babble(waves: list[np.ndarray], actors: np.ndarray, actor: int, n: int, rng) -> np.ndarray:
    """Three other test actors talking at once (never the clip's own voice)."""
    pool = np.flatnonzero(actors != actor)
    out = np.zeros(n, np.float32)
    for i in rng.choice(pool, size=3, replace=False):
        w = waves[i] / (np.sqrt(np.mean(waves[i] ** 2)) + 1e-9)
        out += np.resize(w, n)
    return out


def evaluate(model, waves: list[np.ndarray], labels: np.ndarray, actors: np.ndarray, robustness: bool = True) -> dict:
    """Clip-level scores of a SpeechEmotionModel on the given clips; with `robustness`, under gain, noise and
    reverberation as well."""
    clean = [voiced_part(w) for w in waves]
    probs = np.stack([model.predict(w) for w in clean])
    result = {"clean": summarize(labels, probs, LABELS), "probs": probs}
    if not robustness:
        return result
    gains = {}
    for g in GAINS_DB:
        p = np.stack([model.predict(np.clip(w * np.float32(10 ** (g / 20)), -1, 1)) for w in clean])
        gains[str(g)] = _short(summarize(labels, p, LABELS))
    noise = {}
    rng = np.random.default_rng(7)
    for kind in ("babble", "fan"):
        for snr in SNRS_DB:
            p = []
            for w, a in zip(clean, actors, strict=True):
                n = _babble(waves, actors, a, len(w), rng) if kind == "babble" else coloured_noise(len(w), "fan", rng)
                p.append(model.predict(np.clip(mix_at_snr(w, n, snr, rng), -1, 1)))
            noise[f"{kind}_{snr}db"] = _short(summarize(labels, np.stack(p), LABELS))
    reverb = {}
    for rt60 in RT60S_MS:
        rooms = np.random.default_rng(rt60)
        p = [model.predict(np.clip(reverberate(w, rt60 / 1000, 0.0, rooms), -1, 1)) for w in clean]
        reverb[f"rt60_{rt60}ms"] = _short(summarize(labels, np.stack(p), LABELS))
    result.update(gain=gains, noise=noise, reverb=reverb)
    return result


def robustness_figures(result: dict) -> dict:
    """The gain, noise and reverberation figures of an `evaluate` result, where it measured them."""
    return {k: result[k] for k in ("gain", "noise", "reverb") if k in result}


def _short(summary: dict) -> dict:
    return {"accuracy": round(summary["accuracy"], 4), "macro_f1": round(summary["macro_f1"], 4)}


def by_sex(labels: np.ndarray, probs: np.ndarray, actors: np.ndarray) -> dict:
    female = actors % 2 == 0
    return {name: _short(summarize(labels[m], probs[m], LABELS)) for name, m in (("female", female),
                                                                               ("male", ~female))}


def _test_set():
    clips = [c for c in ravdess.clips() if c.actor in ravdess.TEST_ACTORS]
    waves = [ravdess.read_wave(c.path) for c in clips]
    return waves, np.array([c.label for c in clips]), np.array([c.actor for c in clips])


def _entry(name: str, quantized: bool, file: str, version: str, metrics: dict) -> dict:
    from device.models.manifest_tools import file_meta

    meta = file_meta(MODELS / file)
    meta.update({
        "task": "speech_emotion",
        "runtime": "onnxruntime" if file.endswith(".onnx") else "litert",
        "version": version,
        "labels": list(LABELS),
        "card": "cards/speech_emotion.md",
        "input": {"shape": [1, FRAMES, 64, 1], "dtype": "int8" if quantized else "float32"},
        "front_end": {**LogMelConfig().__dict__, "normalise": "per-band mean over the window",
                      "window_hop_frames": FRAMES // 2},
        "output": "logits (7); apply softmax(logits / calibration_temperature), average over 2 s windows",
        "calibration_temperature": 1.0,
        "licence": "Weights: trained by Aula on RAVDESS (CC BY-NC-SA 4.0: non-commercial research and teaching). "
                   "Code: Apache-2.0.",
        "training_data": "RAVDESS speech, actors 1-18 (calm counted as neutral)",
        "evaluation_data": "RAVDESS speech, test actors 19-24 (never used for a choice)",
        "metrics": metrics,
    })
    if quantized:
        meta["quantization"] = (f"full-integer int8 (weights and activations), calibrated on {CALIBRATION_WINDOWS} "
                                "2 s windows of training-actor speech")
    return meta


def export_speech(keras_path: Path, report_path: Path | None = None, version: str = "speech-emotion-cnn") -> dict:
    """Convert, evaluate and register the speech model trained by `train_speech --final`."""
    import keras

    from device.models.manifest_tools import update_manifest_entry
    from device.models.speech_emotion import SpeechEmotionModel

    net = keras.models.load_model(keras_path)
    train_clips = [c for c in ravdess.clips() if c.actor in ravdess.TRAIN_ACTORS]
    train_waves = [ravdess.read_wave(c.path) for c in train_clips]
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved"
        saved_model(net, saved)
        (MODELS / FILES["speech_emotion_float"]).write_bytes(convert(saved, None))
        (MODELS / FILES["speech_emotion_int8"]).write_bytes(
            convert(saved, calibration_windows(train_waves, CALIBRATION_WINDOWS)))
        onnx_export(saved, MODELS / FILES["speech_emotion_onnx"])
    waves, labels, actors = _test_set()
    results = {}
    for name, file in FILES.items():
        update_manifest_entry(name, _entry(name, name.endswith("int8"), file, version, {}))
        model = SpeechEmotionModel.load(name)
        r = evaluate(model, waves, labels, actors, robustness=name != "speech_emotion_onnx")
        results[name] = r
    report = _report(results, labels, actors, report_path, version)
    for name, file in FILES.items():
        update_manifest_entry(name, _entry(name, name.endswith("int8"), file, version, report["models"][name]))
    return report


def _report(results: dict, labels, actors, report_path: Path | None, version: str) -> dict:
    from converter.speech_card import write_speech_card

    int8, flt = results["speech_emotion_int8"], results["speech_emotion_float"]
    training = json.loads(report_path.read_text()) if report_path and report_path.exists() else {}
    cv_path = cache_dir() / "speech_cv.json"
    cv = json.loads(cv_path.read_text()) if cv_path.exists() else None
    report = {
        "version": version,
        "architecture": {"widths": list(WIDTHS), "multiply_adds_per_window": multiply_adds()},
        "training": {k: training.get(k) for k in ("recipe", "epochs")},
        "test_clips": len(labels),
        "models": {
            name: {
                "accuracy": round(r["clean"]["accuracy"], 4),
                "macro_f1": round(r["clean"]["macro_f1"], 4),
                **robustness_figures(r),
            }
            for name, r in results.items()
        },
        "int8_minus_float_points": round(100 * (int8["clean"]["accuracy"] - flt["clean"]["accuracy"]), 2),
        "int8_float_agreement": round(float((int8["probs"].argmax(1) == flt["probs"].argmax(1)).mean()), 4),
        "by_sex_int8": by_sex(labels, int8["probs"], actors),
        "confusion_int8": int8["clean"]["confusion"],
        "per_class_int8": int8["clean"]["per_class"],
        "cross_validation": cv_summary(cv) if cv else None,
    }
    (MODELS / "cards").mkdir(exist_ok=True)
    (MODELS / "cards" / "speech_emotion_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_speech_card(report, MODELS / "cards" / "speech_emotion.md")
    return report


def cv_summary(cv: dict) -> dict:
    """Mean and spread of the last epoch's validation scores over the actor-grouped folds."""
    last = [fold[-1] for fold in cv["folds"] if fold]
    accs = [r["val_acc"] for r in last if "val_acc" in r]
    f1s = [r["val_f1"] for r in last if "val_f1" in r]
    return {"folds": len(accs), "accuracy_mean": round(float(np.mean(accs)), 4),
            "accuracy_std": round(float(np.std(accs)), 4), "macro_f1_mean": round(float(np.mean(f1s)), 4),
            "epochs": cv["folds"][0][-1]["epoch"] if cv["folds"] and cv["folds"][0] else None}


def evaluate_committed() -> dict:
    """Evaluate the committed speech models again and print their figures (the card's)."""
    from device.models.speech_emotion import SpeechEmotionModel

    waves, labels, actors = _test_set()
    out = {}
    for name in FILES:
        r = evaluate(SpeechEmotionModel.load(name), waves, labels, actors, robustness=name == "speech_emotion_int8")
        out[name] = {"accuracy": round(r["clean"]["accuracy"], 4), "macro_f1": round(r["clean"]["macro_f1"], 4),
                     **robustness_figures(r)}
        print(name, json.dumps(out[name]))
    return out
