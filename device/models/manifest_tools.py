"""Read-modify-write helpers for models_tflite/manifest.json, shared by every model producer."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device import model_store
from device.model_store import MANIFEST, models_dir, sha256_of

logger = logging.getLogger(__name__)

SCHEMA = 1


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    """Return the manifest of `folder` (default: the model folder), or an empty one if absent."""
    path = Path(folder or models_dir()) / MANIFEST
    if not path.is_file():
        return {"schema": SCHEMA, "models": {}}
    return json.loads(path.read_text())


def update_manifest(change: Callable[[dict[str, Any]], None], folder: Path | None = None) -> Path:
    """Apply `change` to the manifest of `folder` (default: the model folder) in place; return its path."""
    folder = Path(folder or models_dir())
    path = folder / MANIFEST
    # The lock serialises writers (the detector and the emotion converter may both update entries);
    # the temporary file plus rename means a reader never sees half a manifest.
    # Locking the folder itself leaves no lock file behind for git to see.
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(folder)
        manifest["schema"] = SCHEMA
        change(manifest)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        os.close(lock)  # closing releases the lock
    model_store._read_manifest.cache_clear()  # later model_entry() calls in this process see the update
    return path


def update_manifest_entry(name: str, meta: dict[str, Any], folder: Path | None = None) -> Path:
    """Set models[name] = meta in the manifest, keeping every other entry; return the manifest path."""
    def put(manifest: dict[str, Any]) -> None:
        manifest.setdefault("models", {})[name] = meta

    path = update_manifest(put, folder)
    logger.info("manifest %s: wrote entry '%s'", path, name)
    return path


def file_meta(path: Path) -> dict[str, Any]:
    """Return the file name and sha256 fields of a manifest entry for a model file."""
    path = Path(path)
    return {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
