"""Locate the shared datasets and load FER2013 into numpy once (cached)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from device.contract.labels import LABELS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def datasets_root() -> Path:
    """Return the dataset folder: $AULA_DATASETS or ../shared/datasets beside the checkout."""
    env = os.environ.get("AULA_DATASETS")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


def cache_dir() -> Path:
    """Return a writable cache folder outside the repository."""
    path = Path(os.environ.get("AULA_CACHE", Path.home() / ".cache" / "aula"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images: list[np.ndarray] = []
    labels: list[int] = []
    for idx, name in enumerate(LABELS):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise FileNotFoundError(f"FER2013 class folder missing: {class_dir}")
        for path in sorted(class_dir.glob("*.jpg")):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("L"), dtype=np.uint8))
            labels.append(idx)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_fer2013(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (n, 48, 48), labels int64) for 'train' or 'test'."""
    folder = datasets_root() / "fer2013" / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FER2013 split not found at {folder}; set AULA_DATASETS to the shared datasets folder"
        )
    cached = cache_dir() / f"fer2013_{split}.npz"
    if cached.exists():
        with np.load(cached) as data:
            return data["x"], data["y"]
    logger.info("decoding FER2013 %s JPEGs from %s (once)", split, folder)
    x, y = _read_split(folder)
    np.savez(cached, x=x, y=y)
    return x, y


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int = 13
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, val_idx) with `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
