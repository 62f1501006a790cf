"""EmoEvent's English tweets (Plaza-del-Arco et al., LREC 2020) as Aula's 7 labels, for extra training rows.

`emoevent/en/{train,dev,test}.tsv` has the columns id, event, tweet, offensive, emotion; the emotions are anger,
disgust, fear, joy, sadness, surprise and "others". Only the six named emotions are read: "others" means none
of those six, which is not the same as GoEmotions' neutral. Licence: assumed CC BY-NC-SA 4.0 (DATASETS.md), so
a model trained on these rows is for research and teaching only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.datasets import datasets_root
from converter.goemotions import Split
from device.contract.labels import LABELS

EMOTIONS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "joy": "happy", "sadness": "sad",
            "surprise": "surprise"}
SKIPPED = ("others",)


def load(split: str, language: str = "en", root: Path | None = None) -> Split:
    """The rows of `split` that carry one of the six emotions, as single-label targets."""
    path = (root or datasets_root()) / "emoevent" / language / f"{split}.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if header[:5] != ["id", "event", "tweet", "offensive", "emotion"]:
        raise ValueError(f"{path}: expected the columns id, event, tweet, offensive, emotion; found {header}")
    texts, labels = [], []
    for number, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 5:
            raise ValueError(f"{path}:{number}: expected 5 tab-separated columns, found {len(parts)}")
        emotion = parts[4].strip()
        if emotion in SKIPPED:
            continue
        if emotion not in EMOTIONS:
            raise ValueError(f"{path}:{number}: unknown emotion {emotion!r}")
        texts.append(parts[2])
        labels.append(LABELS.index(EMOTIONS[emotion]))
    targets = np.eye(len(LABELS), dtype=np.float32)[labels]
    return Split(texts, targets, np.ones(len(texts), bool))
