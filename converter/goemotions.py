"""GoEmotions' Ekman grouping (Demszky et al. 2020, Apache-2.0) as Aula's 7 labels.

`ekman/labels.txt` is anger, disgust, fear, joy, neutral, sadness, surprise: the canonical order, with anger,
joy and sadness named angry, happy and sad. A row may carry several comma-separated label ids (3,855 of the
43,410 training rows). Training uses every row, with its target mass shared equally among its labels; test
figures are on single-label rows only, where one right answer exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.datasets import datasets_root
from device.contract.labels import LABELS

SOURCE_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


@dataclass(frozen=True)
class Split:
    texts: list[str]
    targets: np.ndarray  # float32 [N, 7], each row sums to 1
    single: np.ndarray  # bool [N]: the row has exactly one label

    def labels(self) -> np.ndarray:
        """The argmax label of each row (for single-label rows, its one label)."""
        return self.targets.argmax(axis=1)


def folder(root: Path | None = None) -> Path:
    return (root or datasets_root()) / "goemotions" / "ekman"


def load(split: str, root: Path | None = None) -> Split:
    """Read `train`, `dev` or `test`; raise FileNotFoundError naming the file when it is missing."""
    base = folder(root)
    names = tuple((base / "labels.txt").read_text().split())
    if names != SOURCE_LABELS or len(LABELS) != len(SOURCE_LABELS):
        raise ValueError(f"{base / 'labels.txt'}: expected {SOURCE_LABELS}, found {names}")
    path = base / f"{split}.tsv"
    texts, rows = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{number}: expected text<TAB>label_ids<TAB>id")
        ids = [int(i) for i in parts[1].split(",")]
        target = np.zeros(len(LABELS), np.float32)
        target[ids] = 1.0 / len(ids)
        texts.append(parts[0])
        rows.append(target)
    targets = np.stack(rows)
    return Split(texts, targets, (targets == 1.0).any(axis=1))


def load_fine(split: str, root: Path | None = None) -> np.ndarray:
    """The same rows' 27 emotions plus neutral (`original/`), as float32 [N, 28] targets shared like `load`'s.

    The rows are those of the Ekman files, in the same order (checked by comment id); training uses them for an
    auxiliary head only: the finer labels tell apart what the grouping merges (annoyance and anger, say).
    """
    base = (root or datasets_root()) / "goemotions"
    n = len((base / "original" / "labels.txt").read_text().split())
    ekman = (base / "ekman" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    rows = []
    path = base / "original" / f"{split}.tsv"
    for number, (line, other) in enumerate(zip(path.read_text(encoding="utf-8").splitlines(), ekman, strict=True), 1):
        parts = line.split("\t")
        if parts[-1] != other.split("\t")[-1]:
            raise ValueError(f"{path}:{number}: comment {parts[-1]} is not the Ekman file's {other.split(chr(9))[-1]}")
        ids = [int(i) for i in parts[1].split(",")]
        target = np.zeros(n, np.float32)
        target[ids] = 1.0 / len(ids)
        rows.append(target)
    return np.stack(rows)
