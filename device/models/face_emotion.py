"""Facial-emotion classifier: 2-D uint8 face crops in, probabilities over the 7 labels out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from device.errors import ModelError
from device.labels import LABELS
from device.model_store import ModelEntry, entry_for_file, model_entry
from device.runtime import InferenceBackend, TensorSpec, open_backend

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "face_emotion_int8"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return softmax(logits / temperature) along the last axis."""
    z = logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _uint8_fast_path(spec: TensorSpec) -> bool:
    # With scale 1/255 and zero point -128, q = pixel - 128 exactly; skip the float round trip.
    return spec.dtype == np.int8 and spec.zero_point == -128 and abs(spec.scale * 255.0 - 1.0) < 1e-3


class FaceEmotionModel:
    """A loaded face-emotion model; load once, then call predict per face or per batch."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None):
        self.backend = backend
        self.entry = entry
        meta = entry.meta if entry else {}
        self.labels: tuple[str, ...] = tuple(meta.get("labels", LABELS))
        if self.labels != LABELS:
            raise ModelError(f"{backend.path}: labels {self.labels} are not the canonical {LABELS}")
        self.temperature = float(meta.get("calibration_temperature", 1.0))
        self.version = meta.get("version", Path(backend.path).stem)
        self._in = backend.inputs[0]
        self._out = backend.outputs[0]
        shape = self._in.shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or self._out.shape[-1] != len(LABELS):
            raise ModelError(
                f"{backend.path}: expected input (n, s, s, 1) and 7 outputs, got {shape}, {self._out.shape}"
            )
        self.size = int(shape[1])
        self._fast = _uint8_fast_path(self._in)

    @classmethod
    def load(
        cls, name: str = DEFAULT_MODEL, runtime: str = "auto", threads: int = 1, path: str | Path | None = None
    ) -> FaceEmotionModel:
        """Load a manifest model by name, or a file by path (checked against its folder's manifest)."""
        if path is not None:
            entry = entry_for_file(Path(path))
            backend = entry.open(runtime, threads) if entry else open_backend(Path(path), runtime, threads)
            return cls(backend, entry)
        entry = model_entry(name)
        return cls(entry.open(runtime, threads), entry)

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Resize crops to the input size and convert them to the input tensor's dtype."""
        batch = np.empty((len(crops), self.size, self.size), dtype=np.uint8)
        for i, crop in enumerate(crops):
            if crop.ndim != 2 or crop.dtype != np.uint8:
                raise ValueError(f"face crop {i} must be a 2-D uint8 array, got {crop.dtype} {crop.shape}")
            if crop.shape != (self.size, self.size):
                interp = cv2.INTER_AREA if crop.shape[0] > self.size else cv2.INTER_LINEAR
                crop = cv2.resize(crop, (self.size, self.size), interpolation=interp)
            batch[i] = crop
        if self._fast:
            return (batch.view(np.int8) ^ np.int8(-128))[..., None]
        return self._in.quantize(batch.astype(np.float32)[..., None] / np.float32(255.0))

    def logits_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Return the (n, 7) float32 logits for the crops."""
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        (raw,) = self.backend.run(self.preprocess(crops))
        return self._out.dequantize(raw)

    def predict_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Return an (n, 7) array of probabilities (uncalibrated softmax)."""
        return softmax(self.logits_batch(crops))

    def predict(self, crop: np.ndarray) -> np.ndarray:
        """Return the 7 probabilities for one 2-D uint8 face crop of any size."""
        return self.predict_batch([crop])[0]
