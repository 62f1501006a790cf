"""Text-emotion classifier: an English sentence in, probabilities over the 7 labels out.

A fine-tuned all-MiniLM-L6-v2 (converter/text_net.py) behind the `tokenizers` library's WordPiece tokenizer,
whose `tokenizer.json` ships in models_tflite/ beside the model. The model takes any sequence length; each
call pads a batch to its longest sentence only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.errors import ModelError
from device.model_store import ModelEntry, model_entry, models_dir
from device.models.classifier import EmotionClassifier, open_model
from device.models.face_emotion import softmax
from device.models.text_tokens import encode, load_tokenizer
from device.runtime import InferenceBackend

DEFAULT_MODEL = "text_emotion_int8"
TOKENIZER = "text_tokenizer"


class TextEmotionModel(EmotionClassifier):
    """A loaded text-emotion model; load once, then call predict per utterance."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None, tokenizer_path: Path | None = None):
        super().__init__(backend, entry)
        self.temperature = float(self._meta.get("calibration_temperature", 1.0))
        names = [spec.name for spec in backend.inputs]
        masks = [i for i, n in enumerate(names) if "mask" in n]
        if len(names) != 2 or len(masks) != 1 or backend.outputs[0].shape[-1] != 7:
            raise ModelError(f"{backend.path}: expected inputs (input_ids, attention_mask) and 7 outputs, "
                             f"got {names} and {backend.outputs[0].shape}")
        self._mask_first = masks[0] == 0
        if tokenizer_path is None:
            tokenizer_path = _tokenizer_path(entry)
        self.tokenizer = load_tokenizer(tokenizer_path)

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, runtime: str = "auto", threads: int = 1,
             path: str | Path | None = None) -> TextEmotionModel:
        """Load a manifest model by name, or a file by path (checked against its folder's manifest)."""
        return cls(*open_model(name, runtime, threads, path))

    def logits_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 7) float32 logits."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be strings")
        ids, mask = encode(self.tokenizer, texts)
        arrays = (mask, ids) if self._mask_first else (ids, mask)
        (raw,) = self.backend.run(*arrays)
        return np.asarray(self.backend.outputs[0].dequantize(raw), np.float32)

    def predict_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 7) calibrated probabilities."""
        return softmax(self.logits_batch(texts), self.temperature)

    def predict(self, text: str) -> np.ndarray:
        """The 7 calibrated probabilities of one utterance."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        return self.predict_batch([text])[0]


def _tokenizer_path(entry: ModelEntry | None) -> Path:
    """The tokenizer named by the model's entry (`tokenizer`), else the manifest's default, verified."""
    name = (entry.meta.get("tokenizer") if entry else None) or TOKENIZER
    folder = entry.path.parent if entry else models_dir()
    tok = model_entry(name, folder)
    tok.verify()
    return tok.path
