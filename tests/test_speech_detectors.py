"""Voice-activity detectors: Silero VAD and WebRTC VAD tell real speech from noise; a missing one falls back."""

from __future__ import annotations

import logging
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from device.audio.speech_detectors import LoudnessDetector, SileroDetector, WebRtcDetector, build_detector
from device.audio.voice_gate import VoiceGate, VoiceGateConfig
from device.model_store import models_dir
from tests.system_deps import require_system_dep

SR = 16000


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """Two English sentences from espeak-ng at 16 kHz: real speech sounds, made on the spot."""
    exe = require_system_dep(shutil.which("espeak-ng"), "espeak-ng is not installed (apt-get install espeak-ng)")
    sox = require_system_dep(shutil.which("sox"), "sox is not installed (apt-get install sox)")
    folder = tmp_path_factory.mktemp("vad")
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    text = "Open your books at page twelve. Who can tell me what a verb is?"
    subprocess.run([exe, "-w", str(raw), text], check=True, capture_output=True, timeout=30)
    subprocess.run([sox, str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True, timeout=30)
    with wave.open(str(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def _noise(seconds: float, kind: str, dbfs: float = -30.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = rng.standard_normal(n)
    if kind == "fan":  # pink noise plus a 120 Hz hum and its harmonics, like a projector fan
        spectrum = np.fft.rfft(x) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0))
        t = np.arange(n) / SR
        x = np.fft.irfft(spectrum, n)
        x = x / x.std() + sum(np.sin(2 * np.pi * 120 * k * t) / k for k in (1, 2, 3))
    x = x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(x, -32768, 32767).astype(np.int16)


def _share(detector, samples: np.ndarray) -> float:
    n = detector.frame_samples
    frames = [samples[i : i + n] for i in range(0, len(samples) - n + 1, n)]
    return float(np.mean([detector.is_speech(f) for f in frames]))


@pytest.mark.parametrize(
    ("make", "fan_at_most"),
    # WebRTC's detector calls a loud fan speech (every frame here): it is kept as a second detector, not the default.
    [(lambda: SileroDetector(), 0.2), (lambda: WebRtcDetector(30, 3), 1.0)],
    ids=["silero", "webrtc"],
)
def test_speech_is_voiced_and_silence_is_not(make, fan_at_most, speech):
    voiced = np.abs(speech.astype(np.int32)) > 300
    active = speech[np.flatnonzero(voiced)[0] : np.flatnonzero(voiced)[-1]]
    assert _share(make(), active) > 0.5
    assert _share(make(), np.zeros(SR * 2, np.int16)) < 0.05
    assert _share(make(), _noise(3.0, "fan")) <= fan_at_most


def test_silero_ignores_steady_white_noise_that_the_loudness_detector_would_pass_at_first():
    noise = _noise(3.0, "white", dbfs=-25.0)
    assert _share(SileroDetector(), noise) < 0.1
    assert _share(LoudnessDetector(warmup_s=0.0), np.concatenate([np.zeros(SR, np.int16), noise])) > 0.05


def test_the_gate_cuts_segments_with_silero(speech):
    pad = np.zeros(SR, np.int16)
    room = np.concatenate([pad, speech, pad])
    gate = VoiceGate(VoiceGateConfig(detector="silero"))
    chunk = 480
    from device.audio.base import AudioChunk

    segments = []
    for i in range(0, len(room), chunk):
        segments += gate.process(AudioChunk(room[i : i + chunk], 100.0 + i / SR))
    tail = gate.flush()
    segments += [tail] if tail else []
    assert gate.frame == 512 and 1 <= len(segments) <= 4
    assert segments[0].t_start < 101.0 + 0.3 and sum(s.voiced_s for s in segments) > 0.5 * len(speech) / SR
    assert 0.2 < gate.voiced_share < 0.9


def test_a_missing_detector_model_is_reported_once_and_the_loudness_detector_takes_over(tmp_path, monkeypatch,
                                                                                        caplog):
    from device.audio import speech_detectors

    folder = tmp_path / "models"
    shutil.copytree(models_dir(), folder)
    (folder / "silero_vad_16k.onnx").write_bytes(b"\x00" * 64)
    monkeypatch.setenv("AULA_MODELS_DIR", str(folder))
    monkeypatch.setattr(speech_detectors, "_reported", set())
    with caplog.at_level(logging.ERROR):
        first = build_detector(VoiceGateConfig(detector="silero"))
        second = build_detector(VoiceGateConfig(detector="silero"))
    assert isinstance(first, LoudnessDetector) and isinstance(second, LoudnessDetector)
    errors = [r for r in caplog.records if "silero is unavailable" in r.getMessage()]
    assert len(errors) == 1 and "corrupt" in errors[0].getMessage()


def test_the_silero_model_is_in_the_manifest_with_its_licence():
    from device.model_store import model_entry

    entry = model_entry("silero_vad_16k")
    entry.verify()
    assert entry.meta["licence"] == "MIT"
    assert (Path(entry.path).parent / entry.meta["licence_file"]).read_text().startswith("MIT License")


def test_an_unknown_detector_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="detector"):
        VoiceGateConfig(detector="magic")
