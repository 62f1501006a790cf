"""The committed model folder: manifest lookup, sha256 and shape checks, runtime choice."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from device.common.files import sha256_of
from device.errors import ModelError
from device.runtime import InferenceBackend, open_backend

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models_tflite"
MANIFEST = "manifest.json"


def models_dir() -> Path:
    """Return the model folder: $AULA_MODELS_DIR or models_tflite/ in the checkout."""
    return Path(os.environ.get("AULA_MODELS_DIR", MODELS_DIR))


@lru_cache(maxsize=4)
def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing; restore it with `git checkout -- models_tflite`") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); restore it with `git checkout -- models_tflite`") from None


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest: its file and everything a loader must check."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    def verify(self) -> None:
        """Raise ModelError unless the file, and each companion file beside it, matches the manifest's sha256."""
        self._check(self.path, self.sha256)
        # A model of several files (Whisper: weights, config, tokenizer) lists the others as companions.
        for name, meta in self.meta.get("companions", {}).items():
            self._check(self.path.parent / name, meta["sha256"])

    def _check(self, path: Path, expected: str) -> None:
        if not path.is_file():
            raise ModelError(
                f"model file {path} for '{self.name}' is missing; "
                "restore it with `git checkout -- models_tflite` or rebuild it with `python -m converter`"
            )
        actual = sha256_of(path)
        if actual != expected:
            raise ModelError(
                f"model file {path} for '{self.name}' is corrupt or replaced: sha256 {actual[:12]}... "
                f"does not match the manifest's {expected[:12]}...; restore it (`git checkout -- models_tflite` in a "
                "checkout, `make flash` again for an installed device), or update models_tflite/manifest.json if you "
                "replaced it on purpose"
            )

    def open(self, runtime: str = "auto", threads: int = 1) -> InferenceBackend:
        """Verify the file, open it with a runtime and check its input shape against the manifest."""
        self.verify()
        backend = open_backend(self.path, runtime, threads)
        expected = self.meta.get("input", {}).get("shape")
        if expected is not None:
            actual = list(backend.inputs[0].shape)
            if len(actual) != len(expected) or any(
                e != a for e, a in zip(expected[1:], actual[1:], strict=True) if e > 0 and a > 0
            ):
                raise ModelError(
                    f"model file {self.path}: input shape {actual} does not match the manifest's {expected}"
                )
        return backend


def model_entry(name: str, folder: Path | None = None) -> ModelEntry:
    """Return the manifest entry called `name`."""
    folder = Path(folder) if folder else models_dir()
    manifest = _read_manifest(folder)
    try:
        meta = manifest["models"][name]
    except KeyError:
        known = ", ".join(sorted(manifest.get("models", {})))
        raise ModelError(f"no model '{name}' in {folder / MANIFEST} (known: {known})") from None
    return ModelEntry(name, folder / meta["file"], meta)


def entry_for_file(path: Path) -> ModelEntry | None:
    """Return the manifest entry whose file is `path`, if it lies in a folder with a manifest."""
    path = Path(path).resolve()
    try:
        manifest = _read_manifest(path.parent)
    except ModelError:
        return None
    for name, meta in manifest.get("models", {}).items():
        if meta.get("file") == path.name:
            return ModelEntry(name, path, meta)
    return None


def verify_all(folder: Path | None = None) -> list[tuple[str, Path, str | None]]:
    """Check every model of the manifest (and its companion files): (name, file, problem or None) per model."""
    folder = Path(folder) if folder else models_dir()
    _read_manifest.cache_clear()  # a technician runs this right after copying files in
    results = []
    for name, meta in sorted(_read_manifest(folder).get("models", {}).items()):
        entry = ModelEntry(name, folder / meta["file"], meta)
        try:
            entry.verify()
        except ModelError as exc:
            results.append((name, entry.path, str(exc)))
        else:
            results.append((name, entry.path, None))
    return results
