"""What every emotion classifier shares: a backend opened from the manifest, the canonical labels, a version."""

from __future__ import annotations

from pathlib import Path

from device.contract.labels import LABELS
from device.errors import ModelError
from device.model_store import ModelEntry, entry_for_file, model_entry
from device.runtime import InferenceBackend, open_backend


def open_model(name: str, runtime: str, threads: int, path: str | Path | None) -> tuple[InferenceBackend,
                                                                                          ModelEntry | None]:
    """Open a manifest model by name, or a file by path (checked against its folder's manifest when it has one)."""
    if path is not None:
        entry = entry_for_file(Path(path))
        return (entry.open(runtime, threads) if entry else open_backend(Path(path), runtime, threads)), entry
    entry = model_entry(name)
    return entry.open(runtime, threads), entry


class EmotionClassifier:
    """A loaded model whose outputs are the 7 canonical labels; subclasses add their input's preprocessing."""

    def __init__(self, backend: InferenceBackend, entry: ModelEntry | None = None):
        self.backend = backend
        self.entry = entry
        self._meta = entry.meta if entry else {}
        self.labels: tuple[str, ...] = tuple(self._meta.get("labels", LABELS))
        if self.labels != LABELS:
            raise ModelError(f"{backend.path}: labels {self.labels} are not the canonical {LABELS}")
        self.version = self._meta.get("version", Path(backend.path).stem)
