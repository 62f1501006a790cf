"""Speech-emotion classifier: 16 kHz mono float32 speech in, probabilities over the 7 labels out.

This module is the log-mel CNN's; `SpeechEmotionModel.load()` returns the default model, a head on Whisper's
encoder (device/models/speech_emotion_whisper.py), which has the same calls.

The model sees 2 s of normalised log-mel (device/models/log_mel.py). Longer speech is cut into 2 s windows 1 s
apart and their probabilities are averaged; shorter speech (at least 0.5 s) is padded with the band means.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.contract.labels import LABELS
from device.errors import ModelError
from device.model_store import ModelEntry
from device.models.classifier import EmotionClassifier, open_model
from device.models.face_emotion import softmax
from device.models.log_mel import LogMelConfig, log_mel, normalised_crop
from device.runtime import InferenceBackend

if TYPE_CHECKING:
    from device.models.speech_emotion_whisper import WhisperHeadSpeechModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "speech_emotion_whisper_int8"
MIN_SECONDS = 0.5


def window_features(wave: np.ndarray, frames: int, hop: int, config: LogMelConfig) -> np.ndarray:
    """(n, frames, n_mels) normalised log-mel windows covering `wave`: every `hop` frames, at least one."""
    raw = log_mel(wave, config, normalise=False)
    starts = [0] if len(raw) <= frames else list(range(0, len(raw) - frames + 1, hop))
    return np.stack([normalised_crop(raw, s, frames) for s in starts])


class SpeechEmotionModel(EmotionClassifier):
    """A loaded speech-emotion model; load once, then call predict per stretch of speech."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None):
        super().__init__(backend, entry)
        meta = self._meta
        self.temperature = float(meta.get("calibration_temperature", 1.0))
        front = meta.get("front_end", {})
        self.config = LogMelConfig(**{k: v for k, v in front.items() if k in LogMelConfig.__dataclass_fields__})
        self._in = backend.inputs[0]
        self._out = backend.outputs[0]
        shape = self._in.shape
        if len(shape) != 4 or shape[2] != self.config.n_mels or shape[3] != 1 or self._out.shape[-1] != len(LABELS):
            raise ModelError(
                f"{backend.path}: expected input (n, frames, {self.config.n_mels}, 1) and 7 outputs, "
                f"got {shape}, {self._out.shape}"
            )
        self.frames = int(shape[1])
        self.hop = int(front.get("window_hop_frames", self.frames // 2))

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, runtime: str = "auto", threads: int = 1,
             path: str | Path | None = None) -> SpeechEmotionModel | WhisperHeadSpeechModel:
        """Load a manifest model by name, or a file by path (checked against its folder's manifest).

        A model whose manifest entry says `front_end.kind: whisper_encoder` is a head on Whisper's encoder and
        comes back as a WhisperHeadSpeechModel, which has the same calls."""
        backend, entry = open_model(name, runtime, threads, path)
        if entry is not None and entry.meta.get("front_end", {}).get("kind") == "whisper_encoder":
            from device.models.speech_emotion_whisper import WhisperHeadSpeechModel

            return WhisperHeadSpeechModel(backend, entry, threads)
        return cls(backend, entry)

    def logits(self, wave: np.ndarray) -> np.ndarray:
        """(n_windows, 7) float32 logits of the 2 s windows of `wave`."""
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.dtype.kind != "f":
            raise ValueError(f"speech must be 1-D float samples in [-1, 1], got {wave.dtype} {wave.shape}")
        if len(wave) < MIN_SECONDS * self.config.sample_rate:
            raise ValueError(f"speech must be at least {MIN_SECONDS} s long, got {len(wave) / 16000:.2f} s")
        x = window_features(wave.astype(np.float32), self.frames, self.hop, self.config)[..., None]
        (raw,) = self.backend.run(self._in.quantize(x))
        return np.array(self._out.dequantize(raw), dtype=np.float32)

    def window_probs(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 7) calibrated probabilities of each 2 s window, and each window's end in seconds from the start."""
        probs = softmax(self.logits(wave), self.temperature)
        hop_s = self.hop * self.config.hop / self.config.sample_rate
        span_s = self.frames * self.config.hop / self.config.sample_rate
        duration = len(wave) / self.config.sample_rate
        ends = np.minimum(np.arange(len(probs)) * hop_s + span_s, duration)
        return probs, ends

    def predict(self, wave: np.ndarray) -> np.ndarray:
        """The 7 calibrated probabilities of a stretch of speech (mean over its 2 s windows)."""
        return softmax(self.logits(wave), self.temperature).mean(axis=0)
