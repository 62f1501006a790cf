"""Speech-emotion benchmark, in one run: the model's time per 2 s window (int8 and float, one thread), the
MFCC + RBF-SVM baseline's accuracy and time on the same test actors, the voice detector's cost per second of
audio, and the whole speech path's real-time factor on one core. Writes artifacts/bench_speech.json.

Target: the speech path (detector plus model) at <= 0.1x real time on one core.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import banner, describe  # noqa: E402

TARGET_RTF = 0.1


def _ms(fn, repeats: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) * 1000 / repeats


def main() -> int:
    from converter import ravdess
    from converter.export_speech import voiced_part
    from converter.metrics import accuracy_and_macro_f1
    from converter.speech_baseline import fit_svm, mfcc_stats
    from device.audio.base import AudioChunk
    from device.audio.voice_gate import VoiceGate, VoiceGateConfig
    from device.models.speech_emotion import SpeechEmotionModel

    info = describe()
    print(banner(info))
    results: dict = {"machine": info}
    rng = np.random.default_rng(0)
    window = (rng.standard_normal(32000) * 0.05).astype(np.float32)
    for name in ("speech_emotion_int8", "speech_emotion_float"):
        model = SpeechEmotionModel.load(name)
        results[f"{name}_ms_per_window"] = round(_ms(lambda m=model: m.predict(window)), 3)

    clips = ravdess.clips()
    test = [c for c in clips if c.actor in ravdess.TEST_ACTORS]
    train = [c for c in clips if c.actor in ravdess.TRAIN_ACTORS]
    x_train = np.stack([mfcc_stats(voiced_part(ravdess.read_wave(c.path))) for c in train])
    svm = fit_svm(x_train, np.array([c.label for c in train]))
    test_waves = [voiced_part(ravdess.read_wave(c.path)) for c in test]
    t = time.perf_counter()
    x_test = np.stack([mfcc_stats(w) for w in test_waves])
    pred = svm.predict(x_test)
    baseline_ms = (time.perf_counter() - t) * 1000 / len(test)
    acc, f1 = accuracy_and_macro_f1(np.array([c.label for c in test]), pred)
    results["mfcc_svm"] = {"accuracy": round(acc, 4), "macro_f1": round(f1, 4), "ms_per_clip": round(baseline_ms, 2)}

    model = SpeechEmotionModel.load("speech_emotion_int8")
    y = np.array([c.label for c in test])
    t = time.perf_counter()
    ours = np.stack([model.predict(w) for w in test_waves]).argmax(1)
    ours_ms = (time.perf_counter() - t) * 1000 / len(test)
    acc, f1 = accuracy_and_macro_f1(y, ours)
    results["aula_int8"] = {"accuracy": round(acc, 4), "macro_f1": round(f1, 4), "ms_per_clip": round(ours_ms, 2)}

    # The whole path on one core: every test clip through the voice gate (Silero), then the model on each segment.
    audio = np.concatenate([np.concatenate([np.zeros(8000, np.float32), w]) for w in test_waves[:120]])
    pcm = (audio * 32767).astype(np.int16)
    gate = VoiceGate(VoiceGateConfig(detector="silero"))
    t = time.perf_counter()
    segments = []
    for i in range(0, len(pcm), 480):
        segments += gate.process(AudioChunk(pcm[i : i + 480], i / 16000))
    detect_s = time.perf_counter() - t
    t = time.perf_counter()
    windows = 0
    for seg in segments:
        if seg.duration >= 0.5:
            windows += len(model.window_probs(seg.samples.astype(np.float32) / 32768.0)[0])
    model_s = time.perf_counter() - t
    audio_s = len(pcm) / 16000
    rtf = (detect_s + model_s) / audio_s
    results["speech_path"] = {
        "audio_s": round(audio_s, 1), "segments": len(segments), "windows": windows,
        "detector_ms_per_audio_s": round(1000 * detect_s / audio_s, 2),
        "model_ms_per_audio_s": round(1000 * model_s / audio_s, 2), "real_time_factor": round(rtf, 4),
        "target": TARGET_RTF,
    }
    print(f"speech emotion per 2 s window: int8 {results['speech_emotion_int8_ms_per_window']:.2f} ms, "
          f"float {results['speech_emotion_float_ms_per_window']:.2f} ms")
    print(f"test actors 19-24 ({len(test)} clips): Aula int8 {results['aula_int8']['accuracy']:.1%} "
          f"(macro-F1 {results['aula_int8']['macro_f1']:.3f}, {ours_ms:.2f} ms per clip); MFCC+SVM "
          f"{results['mfcc_svm']['accuracy']:.1%} (macro-F1 {results['mfcc_svm']['macro_f1']:.3f}, "
          f"{baseline_ms:.2f} ms per clip)")
    sp = results["speech_path"]
    print(f"speech path on one core: {sp['audio_s']} s of audio, {sp['segments']} segments, {sp['windows']} "
          f"windows; detector {sp['detector_ms_per_audio_s']} ms/s, model {sp['model_ms_per_audio_s']} ms/s; "
          f"real-time factor {rtf:.3f}x (target <= {TARGET_RTF}x): {'met' if rtf <= TARGET_RTF else 'MISSED'}")
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "bench_speech.json").write_text(json.dumps(results, indent=2))
    return 0 if rtf <= TARGET_RTF else 1


if __name__ == "__main__":
    raise SystemExit(main())
