"""Facial-emotion classifier: 2-D uint8 face crops in, probabilities over the 7 labels out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from device.contract.labels import LABELS
from device.errors import ModelError
from device.model_store import ModelEntry
from device.models.classifier import EmotionClassifier, open_model
from device.runtime import InferenceBackend, TensorSpec

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "face_emotion_int8"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return softmax(logits / temperature) along the last axis."""
    z = logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mirror_gate(logits: np.ndarray, below: float) -> np.ndarray:
    """Return the mask of faces that get a second, mirrored pass: top uncalibrated probability < `below`.

    0 turns the mirror pass off and 1 runs it for every face. Averaging a face's logits with its mirror
    image's gains about a point of accuracy, nearly all of it on the faces the model is unsure of, so the
    gate buys most of the gain for a fraction of the second pass's cost.
    """
    if below <= 0.0:
        return np.zeros(len(logits), dtype=bool)
    if below >= 1.0:
        return np.ones(len(logits), dtype=bool)
    return softmax(logits).max(axis=-1) < below


def _uint8_fast_path(spec: TensorSpec) -> bool:
    # With scale 1/255 and zero point -128, q = pixel - 128 exactly; skip the float round trip.
    return spec.dtype == np.int8 and spec.zero_point == -128 and abs(spec.scale * 255.0 - 1.0) < 1e-3


class FaceEmotionModel(EmotionClassifier):
    """A loaded face-emotion model; load once, then call predict per face or per batch."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None,
                 mirror_below: float | None = None):
        super().__init__(backend, entry)
        meta = self._meta
        # The mirror gate fitted on validation data (manifest), unless the caller sets one (0 = single pass).
        self.mirror_below = meta.get("mirror_below_confidence") if mirror_below is None else mirror_below
        self.reset_counts()
        self._in = backend.inputs[0]
        self._out = backend.outputs[0]
        shape = self._in.shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or self._out.shape[-1] != len(LABELS):
            raise ModelError(
                f"{backend.path}: expected input (n, s, s, 1) and 7 outputs, got {shape}, {self._out.shape}"
            )
        self.size = int(shape[1])
        self._fast = _uint8_fast_path(self._in)

    @property
    def mirror_below(self) -> float:
        """The mirror gate's threshold (see `mirror_gate`): 0 is one pass per face, 1 mirrors every face."""
        return self._mirror_below

    @mirror_below.setter
    def mirror_below(self, value: float | None) -> None:
        below = float(value or 0.0)
        if not 0.0 <= below <= 1.0:
            raise ModelError(f"{self.backend.path}: mirror_below_confidence {below} is not in [0, 1]")
        self._mirror_below = below

    @property
    def temperature(self) -> float:
        """Calibration temperature: the manifest's is fitted on the gated output; one pass has its own."""
        temperature = self._meta.get("calibration_temperature", 1.0)
        if self._mirror_below == 0.0:
            single = self._meta.get("metrics", {}).get("single_pass", {})
            temperature = single.get("calibration_temperature", temperature)
        return float(temperature)

    @property
    def mirrored_share(self) -> float | None:
        """Share of the faces classified since `reset_counts` that got the mirrored pass (None before any)."""
        return self.faces_mirrored / self.faces_classified if self.faces_classified else None

    def reset_counts(self) -> None:
        """Start counting classified and mirrored faces from zero."""
        self.faces_classified = 0
        self.faces_mirrored = 0

    @classmethod
    def load(
        cls, name: str = DEFAULT_MODEL, runtime: str = "auto", threads: int = 1, path: str | Path | None = None,
        mirror_below: float | None = None,
    ) -> FaceEmotionModel:
        """Load a manifest model by name, or a file by path (checked against its folder's manifest).

        `mirror_below` overrides the manifest's mirror gate (see `mirror_gate`); 0 gives one pass per face.
        """
        return cls(*open_model(name, runtime, threads, path), mirror_below)

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
        """Return the (n, 7) float32 logits for the crops (mirror-averaged where the gate says so)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        x = self.preprocess(crops)
        logits = self._logits(x)
        mirror = mirror_gate(logits, self.mirror_below)
        if mirror.any():
            logits[mirror] = (logits[mirror] + self._logits(np.ascontiguousarray(x[mirror][:, :, ::-1]))) / 2
        self.faces_classified += len(x)
        self.faces_mirrored += int(mirror.sum())
        return logits

    def _logits(self, x: np.ndarray) -> np.ndarray:
        (raw,) = self.backend.run(x)
        return np.array(self._out.dequantize(raw), dtype=np.float32)

    def predict_batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Return an (n, 7) array of probabilities (uncalibrated softmax)."""
        return softmax(self.logits_batch(crops))

    def predict(self, crop: np.ndarray) -> np.ndarray:
        """Return the 7 probabilities for one 2-D uint8 face crop of any size."""
        return self.predict_batch([crop])[0]
