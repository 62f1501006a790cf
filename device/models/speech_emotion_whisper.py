"""Speech emotion from Whisper tiny.en's encoder: the encoder's pooled features in, an int8 head, 7 labels out.

The head (models_tflite/speech_emotion_whisper_int8.tflite) is small; the work is the encoder, which runs
unpadded on each 2 s window (device/models/whisper_encoder.py). Its manifest entry names the encoder
(`front_end.encoder`, the same Whisper model the words path loads), and both files are checked against their
sha256 before anything runs.
"""

from __future__ import annotations

import numpy as np

from device.errors import ModelError
from device.model_store import ModelEntry, model_entry
from device.models.classifier import EmotionClassifier
from device.models.face_emotion import softmax
from device.models.whisper_encoder import POOLING, SAMPLE_RATE, WINDOW_S, WhisperEncoder, window_starts
from device.runtime import InferenceBackend


class WhisperHeadSpeechModel(EmotionClassifier):
    """A loaded encoder-and-head speech model with the same calls as the log-mel CNN's SpeechEmotionModel."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None, threads: int = 1):
        super().__init__(backend, entry)
        meta = self._meta
        self.temperature = float(meta.get("calibration_temperature", 1.0))
        self._in = backend.inputs[0]
        self._out = backend.outputs[0]
        front = meta.get("front_end", {})
        self.pooling = front.get("pooling", "mean")
        if self.pooling not in POOLING:
            raise ModelError(f"{backend.path}: unknown pooling {self.pooling!r} in the manifest (front_end.pooling)")
        width = POOLING[self.pooling]
        if tuple(self._in.shape[-1:]) != (width,) or self._out.shape[-1] != len(self.labels):
            raise ModelError(f"{backend.path}: expected input (n, {width}) and 7 outputs, got "
                             f"{self._in.shape}, {self._out.shape}")
        name = front.get("encoder")
        if not name:
            raise ModelError(f"{backend.path}: the manifest entry does not name its encoder (front_end.encoder)")
        encoder = model_entry(name, entry.path.parent if entry else None)
        encoder.verify()
        self.encoder = WhisperEncoder(encoder.path.parent, threads=threads)
        self.encoder_version = encoder.meta.get("version", name)

    def logits(self, wave: np.ndarray) -> np.ndarray:
        """(n_windows, 7) float32 logits of the 2 s windows (1 s apart) of `wave`."""
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.dtype.kind != "f":
            raise ValueError(f"speech must be 1-D float samples in [-1, 1], got {wave.dtype} {wave.shape}")
        x = self.encoder.features(wave.astype(np.float32), self.pooling)
        (raw,) = self.backend.run(self._in.quantize(x))
        return np.array(self._out.dequantize(raw), dtype=np.float32)

    def window_probs(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 7) calibrated probabilities of each 2 s window, and each window's end in seconds from the start."""
        probs = softmax(self.logits(wave), self.temperature)
        starts = np.array(window_starts(len(wave)), dtype=np.float64) / SAMPLE_RATE
        return probs, np.minimum(starts + WINDOW_S, len(wave) / SAMPLE_RATE)

    def predict(self, wave: np.ndarray) -> np.ndarray:
        """The 7 calibrated probabilities of a stretch of speech (mean over its 2 s windows)."""
        return softmax(self.logits(wave), self.temperature).mean(axis=0)

