"""Speech emotion from Whisper tiny.en's encoder: the encoder's pooled features in, an int8 head, 7 labels out.

The head (models_tflite/speech_emotion_whisper_int8.tflite) is small; the work is the encoder, which runs
unpadded on each 2 s window (device/models/whisper_encoder.py). Its manifest entry names the encoder
(`front_end.encoder`, the same Whisper model the words path loads), and both files are checked against their
sha256 before anything runs.

Where the entry names `front_end.layers`, the pooled frames are the means of those layers of the encoder, run in
numpy (device/models/whisper_layers.py), rather than CTranslate2's encoder output. Where the entry says
`front_end.voice_statistics`, the window's voice statistics (device/models/
voice_statistics.py: spectrum, pitch, loudness contour) follow the pooled frames in the head's input. Where it
names `front_end.standardise` (a companion file, checked against its sha256 with the head, of each feature's
training mean and standard deviation), the features are standardised before the head: an int8 input has one
scale for all its columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device.errors import ModelError
from device.model_store import ModelEntry, model_entry
from device.models.classifier import EmotionClassifier
from device.models.face_emotion import softmax
from device.models.voice_statistics import N_FEATURES, window_statistics
from device.models.whisper_encoder import POOLING, SAMPLE_RATE, WINDOW_S, WhisperEncoder, pooled_width, window_starts
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
        self.voice = bool(front.get("voice_statistics", False))
        self.layers = tuple(front.get("layers") or ())
        if self.layers and (self.pooling != "mean" or not all(isinstance(k, int) and 1 <= k <= 4 for k in self.layers)):
            raise ModelError(f"{backend.path}: front_end.layers must be encoder layers 1-4 with mean pooling, got "
                             f"{list(self.layers)} with {self.pooling!r}")
        width = pooled_width(self.pooling, self.layers) + (N_FEATURES if self.voice else 0)
        if tuple(self._in.shape[-1:]) != (width,) or self._out.shape[-1] != len(self.labels):
            raise ModelError(f"{backend.path}: expected input (n, {width}) and 7 outputs, got "
                             f"{self._in.shape}, {self._out.shape}")
        self._mean, self._scale = self._standardisation(front.get("standardise"), width, backend.path)
        name = front.get("encoder")
        if not name:
            raise ModelError(f"{backend.path}: the manifest entry does not name its encoder (front_end.encoder)")
        encoder = model_entry(name, entry.path.parent if entry else None)
        encoder.verify()
        self.encoder = WhisperEncoder(encoder.path.parent, threads=threads, layers=self.layers or None)
        self.encoder_version = encoder.meta.get("version", name)

    def features(self, wave: np.ndarray) -> np.ndarray:
        """(n_windows, inputs) float32: each 2 s window's (1 s apart) pooled encoder frames, and its voice
        statistics where the head takes them; heads with the same front end take the same features."""
        wave = np.asarray(wave)
        if wave.ndim != 1 or wave.dtype.kind != "f":
            raise ValueError(f"speech must be 1-D float samples in [-1, 1], got {wave.dtype} {wave.shape}")
        wave = wave.astype(np.float32)
        x = self.encoder.features(wave, self.pooling)
        return np.hstack([x, window_statistics(wave)]) if self.voice else x

    def head_logits(self, x: np.ndarray) -> np.ndarray:
        """(n_windows, 7) float32 logits of `features` rows: standardised, then the head."""
        if self._mean is not None:
            x = (x - self._mean) / self._scale
        (raw,) = self.backend.run(self._in.quantize(x))
        return np.array(self._out.dequantize(raw), dtype=np.float32)

    def logits(self, wave: np.ndarray) -> np.ndarray:
        """(n_windows, 7) float32 logits of the 2 s windows (1 s apart) of `wave`."""
        return self.head_logits(self.features(wave))

    @staticmethod
    def _standardisation(name: str | None, width: int, path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
        if name is None:
            return None, None
        file = Path(path).parent / name
        try:
            section = json.loads(file.read_text())
            mean = np.asarray(section["mean"], dtype=np.float32)
            scale = np.asarray(section["scale"], dtype=np.float32)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{file}: the head's standardisation must be a JSON object with 'mean' and 'scale' "
                             f"lists: {exc}") from exc
        if mean.shape != (width,) or scale.shape != (width,) or not (scale > 0).all():
            raise ModelError(f"{file}: the head's standardisation needs {width} means and {width} positive scales, "
                             f"got {mean.shape} and {scale.shape}")
        return mean, scale

    def window_probs(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 7) calibrated probabilities of each 2 s window, and each window's end in seconds from the start."""
        probs = softmax(self.logits(wave), self.temperature)
        starts = np.array(window_starts(len(wave)), dtype=np.float64) / SAMPLE_RATE
        return probs, np.minimum(starts + WINDOW_S, len(wave) / SAMPLE_RATE)

    def predict(self, wave: np.ndarray) -> np.ndarray:
        """The 7 calibrated probabilities of a stretch of speech (mean over its 2 s windows)."""
        return self.predict_features(self.features(wave))

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """`predict` from the stretch's `features` rows."""
        return softmax(self.head_logits(x), self.temperature).mean(axis=0)

