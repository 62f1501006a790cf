"""Voice-activity detectors measured on real speech and on classroom non-speech, in one run.

Speech: RAVDESS test actors 19-24, each clip clean and mixed with fan noise at
10 dB SNR and with silence; the reference label of each 10 ms frame comes from the clean studio clip (within
35 dB of the clip's loudest frame), so the detectors are judged on what they hear in the noisy mix. Non-speech:
silence, fan noise, chairs and doors (sox-synthesised knocks and scrapes), and music (sox-synthesised chords).
Reports frame precision and recall on speech, the share of non-speech time let through, and the cost per second
of audio on one thread. Writes artifacts/bench_vad.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import banner, describe  # noqa: E402
from device.audio.speech_detectors import LoudnessDetector, SileroDetector, WebRtcDetector  # noqa: E402

SR = 16000
GRID = 160  # 10 ms reference grid


def detectors():
    return {
        "loudness": lambda: LoudnessDetector(),
        "silero": lambda: SileroDetector(),
        "webrtc_2": lambda: WebRtcDetector(30, 2),
        "webrtc_3": lambda: WebRtcDetector(30, 3),
    }


def frame_decisions(detector, samples: np.ndarray) -> np.ndarray:
    """The detector's decision for each 10 ms grid cell (the decision of the frame that covers it)."""
    n = detector.frame_samples
    cells = np.zeros(len(samples) // GRID, bool)
    for i in range(0, len(samples) - n + 1, n):
        if detector.is_speech(samples[i : i + n]):
            cells[i // GRID : (i + n) // GRID] = True
    return cells


def reference(clean: np.ndarray) -> np.ndarray:
    x = clean[: len(clean) // GRID * GRID].astype(np.float64).reshape(-1, GRID) / 32768
    db = 10 * np.log10(np.maximum((x * x).mean(axis=1), 1e-12))
    return db > db.max() - 35


def fan(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    spectrum = np.fft.rfft(x) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0))
    t = np.arange(n) / SR
    x = np.fft.irfft(spectrum, n)
    hum = rng.uniform(80, 160)
    return x / x.std() + sum(np.sin(2 * np.pi * hum * k * t) / k for k in (1, 2, 3))


def to_int16(x: np.ndarray, dbfs: float) -> np.ndarray:
    x = x / (np.sqrt(np.mean(x**2)) + 1e-12) * 32768 * 10 ** (dbfs / 20)
    return np.clip(x, -32768, 32767).astype(np.int16)


def sox_sound(args: list[str], folder: Path, name: str) -> np.ndarray:
    path = folder / f"{name}.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), *args], check=True, timeout=60)
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def non_speech(folder: Path) -> dict[str, np.ndarray]:
    sounds = {"silence": np.zeros(SR * 20, np.int16), "fan": to_int16(fan(SR * 20, 1), -35.0)}
    if shutil.which("sox"):
        knocks = [sox_sound(["synth", "0.08", "brownnoise", "fade", "0", "0.08", "0.07", "gain", "-6"], folder, f"k{i}")
                  for i in range(3)]
        scrape = sox_sound(["synth", "0.6", "pinknoise", "band", "900", "400", "fade", "0.05", "0.6", "0.2"],
                           folder, "scrape")
        rng = np.random.default_rng(2)
        bumps = np.zeros(SR * 20, np.float64)
        for _ in range(25):  # chairs and doors: knocks and scrapes at random times over a quiet room
            s = knocks[rng.integers(0, 3)] if rng.random() < 0.6 else scrape
            at = rng.integers(0, len(bumps) - len(s))
            bumps[at : at + len(s)] += s * rng.uniform(0.3, 1.0)
        bumps += np.random.default_rng(3).standard_normal(len(bumps)) * 30
        sounds["chairs_doors"] = np.clip(bumps, -32768, 32767).astype(np.int16)
        chords = [sox_sound(["synth", "2.5", "pluck", a, "pluck", b, "pluck", c, "gain", "-8"], folder, f"m{i}")
                  for i, (a, b, c) in enumerate([("C4", "E4", "G4"), ("A3", "C4", "E4"), ("F3", "A3", "C4"),
                                                  ("G3", "B3", "D4")] * 2)]
        sounds["music"] = np.concatenate(chords)
    return sounds


def main() -> int:
    from converter import ravdess

    info = describe()
    print(banner(info))
    clips = [c for c in ravdess.clips() if c.actor in ravdess.TEST_ACTORS]
    waves = [(ravdess.read_wave(c.path) * 32767).astype(np.int16) for c in clips]
    results: dict = {"machine": info, "speech_clips": len(clips), "detectors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        others = non_speech(Path(tmp))
    for name, make in detectors().items():
        row: dict = {}
        for condition, snr in (("clean", None), ("fan_10db", 10.0)):
            tp = fp = fn = 0
            spent = audio_s = 0.0
            for i, w in enumerate(waves):
                ref = reference(w)
                x = w if snr is None else np.clip(
                    w + to_int16(fan(len(w), i), 20 * np.log10(np.sqrt(np.mean((w / 32768.0) ** 2)) + 1e-12) - snr),
                    -32768, 32767).astype(np.int16)
                det = make()
                t = time.perf_counter()
                got = frame_decisions(det, np.concatenate([np.zeros(SR, np.int16), x]))[100:][: len(ref)]
                spent += time.perf_counter() - t
                audio_s += len(x) / SR + 1
                ref = ref[: len(got)]
                tp += int((got & ref).sum())
                fp += int((got & ~ref).sum())
                fn += int((~got & ref).sum())
            row[condition] = {"precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, tp + fn), 4)}
            if condition == "clean":
                row["ms_per_audio_s"] = round(1000 * spent / audio_s, 3)
        for sound, x in others.items():
            got = frame_decisions(make(), x)
            row[f"let_through_{sound}"] = round(float(got[100:].mean()), 4)  # after 1 s to learn the room
        results["detectors"][name] = row
    cols = ["clean P", "clean R", "fan10 P", "fan10 R", *[f"pass {k}" for k in others], "ms/s audio"]
    print(f"{'detector':10s} " + " ".join(f"{c:>13s}" for c in cols))
    for name, r in results["detectors"].items():
        vals = [r["clean"]["precision"], r["clean"]["recall"], r["fan_10db"]["precision"], r["fan_10db"]["recall"],
                *[r[f"let_through_{k}"] for k in others], r["ms_per_audio_s"]]
        print(f"{name:10s} " + " ".join(f"{v:13.3f}" for v in vals))
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "bench_vad.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
