"""Speech-emotion benchmark, in one run, for both routes (the default head on Whisper tiny.en's encoder, and the
log-mel CNN): time per 2 s window (int8 and float, one thread), accuracy on the test actors beside the MFCC +
RBF-SVM baseline's, the voice detector's cost per second of audio, and the whole speech path's real-time factor
on one core. Writes artifacts/bench_speech.json.

Target: the speech path (detector plus model) at <= 0.1x real time on one core with the CNN route; the encoder
route's figure is stated beside it.
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
ROUTES = {"whisper_head": "speech_emotion_whisper_int8", "cnn": "speech_emotion_int8"}


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
    for name in (*ROUTES.values(), *(r.replace("int8", "float") for r in ROUTES.values())):
        model = SpeechEmotionModel.load(name)
        results[f"{name}_ms_per_window"] = round(_ms(lambda m=model: m.predict(window), repeats=20), 3)

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

    y = np.array([c.label for c in test])
    for route, name in ROUTES.items():
        model = SpeechEmotionModel.load(name)
        t = time.perf_counter()
        ours = np.stack([model.predict(w) for w in test_waves]).argmax(1)
        ours_ms = (time.perf_counter() - t) * 1000 / len(test)
        acc, f1 = accuracy_and_macro_f1(y, ours)
        results[f"aula_{route}_int8"] = {"accuracy": round(acc, 4), "macro_f1": round(f1, 4),
                                         "ms_per_clip": round(ours_ms, 2)}

    # The whole path on one core: test clips through the voice gate (Silero), then the model on each segment.
    audio = np.concatenate([np.concatenate([np.zeros(8000, np.float32), w]) for w in test_waves[:120]])
    pcm = (audio * 32767).astype(np.int16)
    gate = VoiceGate(VoiceGateConfig(detector="silero"))
    t = time.perf_counter()
    segments = []
    for i in range(0, len(pcm), 480):
        segments += gate.process(AudioChunk(pcm[i : i + 480], i / 16000))
    detect_s = time.perf_counter() - t
    audio_s = len(pcm) / 16000
    for route, name in ROUTES.items():
        model = SpeechEmotionModel.load(name)
        t = time.perf_counter()
        windows = 0
        for seg in segments:
            if seg.duration >= 0.5:
                windows += len(model.window_probs(seg.samples.astype(np.float32) / 32768.0)[0])
        model_s = time.perf_counter() - t
        rtf = (detect_s + model_s) / audio_s
        results[f"speech_path_{route}"] = {
            "audio_s": round(audio_s, 1), "segments": len(segments), "windows": windows,
            "detector_ms_per_audio_s": round(1000 * detect_s / audio_s, 2),
            "model_ms_per_audio_s": round(1000 * model_s / audio_s, 2), "real_time_factor": round(rtf, 4),
        }
    for route, name in ROUTES.items():
        print(f"{route}: speech emotion per 2 s window, int8 {results[f'{name}_ms_per_window']:.2f} ms, float "
              f"{results[name.replace('int8', 'float') + '_ms_per_window']:.2f} ms")
    print(f"test actors 19-24 ({len(test)} clips): " + "; ".join(
        f"Aula {route} int8 {results[f'aula_{route}_int8']['accuracy']:.1%} (macro-F1 "
        f"{results[f'aula_{route}_int8']['macro_f1']:.3f}, {results[f'aula_{route}_int8']['ms_per_clip']:.2f} ms "
        "per clip)" for route in ROUTES) + f"; MFCC+SVM {results['mfcc_svm']['accuracy']:.1%} (macro-F1 "
        f"{results['mfcc_svm']['macro_f1']:.3f}, {baseline_ms:.2f} ms per clip)")
    for route in ROUTES:
        sp = results[f"speech_path_{route}"]
        print(f"speech path on one core, {route}: {sp['audio_s']} s of audio, {sp['segments']} segments, "
              f"{sp['windows']} windows; detector {sp['detector_ms_per_audio_s']} ms/s, model "
              f"{sp['model_ms_per_audio_s']} ms/s; real-time factor {sp['real_time_factor']:.3f}x"
              + (f" (target <= {TARGET_RTF}x: {'met' if sp['real_time_factor'] <= TARGET_RTF else 'MISSED'})"
                 if route == "cnn" else ""))
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "bench_speech.json").write_text(json.dumps(results, indent=2))
    return 0 if results["speech_path_cnn"]["real_time_factor"] <= TARGET_RTF else 1


if __name__ == "__main__":
    raise SystemExit(main())
