"""Voice-activity detectors behind one interface: each judges one frame of 16 kHz int16 audio as speech or not.

- `loudness`: the dependency-free fallback; louder than the noise floor (minimum statistics) by a margin.
- `silero`: Silero VAD (MIT) on ONNX Runtime, the model file from models_tflite/ (32 ms frames).
- `webrtc`: WebRTC's GMM detector (`webrtcvad-wheels`), 10, 20 or 30 ms frames.

The voice gate (device/audio/voice_gate.py) turns these per-frame decisions into segments with pre-roll and
hangover. A detector whose library or model is missing raises BackendUnavailable or ModelError when it is built;
`build_detector` then reports it once and falls back to the loudness detector, so the audio path keeps running.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from device.audio.base import SAMPLE_RATE
from device.errors import AulaError, BackendUnavailable

logger = logging.getLogger(__name__)

SILENCE_DBFS = -120.0  # level reported for digital silence (log of 0)


def frame_levels(samples: np.ndarray, frame: int) -> np.ndarray:
    """Return the RMS level in dBFS of each whole frame of int16 samples."""
    n = len(samples) // frame
    x = samples[: n * frame].astype(np.float32).reshape(n, frame) / 32768.0
    rms = np.sqrt((x * x).mean(axis=1))
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(rms), SILENCE_DBFS)


class SpeechDetector(ABC):
    """Judges consecutive frames of `frame_samples` int16 samples; keeps whatever state it needs between them."""

    name = "detector"
    frame_samples: int

    @abstractmethod
    def is_speech(self, frame: np.ndarray) -> bool:
        """True when this frame holds speech."""

    def reset(self) -> None:
        """Forget the state (a gap in the audio, a new stream)."""
        return None


class LoudnessDetector(SpeechDetector):
    """Speech is what stands `margin_db` above the quietest frame of the last `noise_window_s` seconds."""

    name = "loudness"

    def __init__(self, frame_ms: int = 30, margin_db: float = 10.0, min_level_dbfs: float = -50.0,
                 noise_window_s: float = 5.0, warmup_s: float = 0.3, sample_rate: int = SAMPLE_RATE):
        self.frame_samples = sample_rate * frame_ms // 1000
        frame_s = self.frame_samples / sample_rate
        self.margin_db = margin_db
        self.min_level_dbfs = min_level_dbfs
        self._noise: deque[float] = deque(maxlen=max(1, round(noise_window_s / frame_s)))
        self._warmup_frames = round(warmup_s / frame_s)
        self._frames_seen = 0
        self.level_dbfs = SILENCE_DBFS
        self.noise_floor_dbfs = SILENCE_DBFS

    def is_speech(self, frame: np.ndarray) -> bool:
        level = float(frame_levels(frame, len(frame))[0])
        self.level_dbfs = level
        # Judge against the floor of the frames before this one; then let this one teach the floor.
        floor = min(self._noise) if self._noise else level
        self._noise.append(level)
        self.noise_floor_dbfs = min(self._noise)
        self._frames_seen += 1
        return self._frames_seen > self._warmup_frames and level > max(floor + self.margin_db, self.min_level_dbfs)


class SileroDetector(SpeechDetector):
    """Silero VAD: a small recurrent network giving each 32 ms frame a speech probability."""

    name = "silero"
    CONTEXT = 64  # samples of the previous frame the model sees with each new one

    def __init__(self, threshold: float = 0.5, model: str = "silero_vad_16k", threads: int = 1):
        from device.model_store import model_entry

        entry = model_entry(model)
        self._backend = entry.open("onnxruntime", threads)
        self.frame_samples = int(entry.meta["input"]["frame_samples"])
        self.threshold = threshold
        self.probability = 0.0
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(self.CONTEXT, np.float32)

    def is_speech(self, frame: np.ndarray) -> bool:
        x = frame.astype(np.float32) / 32768.0
        window = np.concatenate([self._context, x])[None, :]
        out, self._state = self._backend.run(window, self._state, self._sr)
        self._context = x[-self.CONTEXT :]
        self.probability = float(out.reshape(-1)[0])
        return self.probability >= self.threshold


class WebRtcDetector(SpeechDetector):
    """WebRTC's voice-activity detector; `aggressiveness` 0 (lets most through) to 3 (strictest)."""

    name = "webrtc"

    def __init__(self, frame_ms: int = 30, aggressiveness: int = 2, sample_rate: int = SAMPLE_RATE):
        try:
            import webrtcvad
        except ImportError as exc:
            raise BackendUnavailable("webrtcvad is not installed (pip install webrtcvad-wheels)") from exc
        if frame_ms not in (10, 20, 30):
            raise ValueError("the WebRTC detector takes 10, 20 or 30 ms frames")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_samples = sample_rate * frame_ms // 1000
        self._rate = sample_rate

    def is_speech(self, frame: np.ndarray) -> bool:
        return self._vad.is_speech(frame.astype("<i2").tobytes(), self._rate)


_reported: set[str] = set()


def build_detector(config) -> SpeechDetector:
    """The detector `config.detector` names (a VoiceGateConfig); the loudness one when that cannot be built."""
    loud = dict(frame_ms=config.frame_ms, margin_db=config.margin_db, min_level_dbfs=config.min_level_dbfs,
                noise_window_s=config.noise_window_s, warmup_s=config.warmup_s)
    try:
        if config.detector == "silero":
            return SileroDetector(config.silero_threshold)
        if config.detector == "webrtc":
            return WebRtcDetector(config.frame_ms if config.frame_ms in (10, 20, 30) else 30,
                                  config.webrtc_aggressiveness)
    except AulaError as exc:
        if config.detector not in _reported:  # once per process, not at every restart of the audio stage
            _reported.add(config.detector)
            logger.error("voice detector %s is unavailable (%s); using the loudness detector", config.detector, exc)
    return LoudnessDetector(**loud)
