"""RAVDESS speech for the speech-emotion model: files, canonical labels and the actor-independent split.

Split by actor, never by file: the same voice in training and test inflates accuracy by 20 points or more.
Actors 19-24 are the test actors and are never used for a choice; choices are made by cross-validation grouped
by actor over actors 1-18.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.datasets import datasets_root
from device.contract.labels import LABELS

TEST_ACTORS = frozenset(range(19, 25))
TRAIN_ACTORS = frozenset(range(1, 19))

# RAVDESS emotion codes (the third filename field) -> canonical label; calm counts as neutral.
EMOTION_CODES = {
    1: "neutral", 2: "neutral", 3: "happy", 4: "sad", 5: "angry", 6: "fear", 7: "disgust", 8: "surprise",
}


@dataclass(frozen=True)
class Clip:
    """One RAVDESS speech file and what its name says."""

    path: Path
    label: int  # index into LABELS
    actor: int
    intensity: int  # 1 normal, 2 strong
    statement: int  # 1 "Kids are talking by the door", 2 "Dogs are sitting by the door"

    @property
    def female(self) -> bool:
        return self.actor % 2 == 0


def parse_name(path: Path) -> Clip:
    """`03-01-EE-II-SS-RR-AA.wav` -> Clip; ValueError for a name that is not a RAVDESS speech file."""
    fields = path.stem.split("-")
    if len(fields) != 7 or fields[:2] != ["03", "01"] or not all(f.isdigit() for f in fields):
        raise ValueError(f"{path.name} is not a RAVDESS audio-only speech file name")
    emotion, intensity, statement, _, actor = (int(f) for f in fields[2:])
    return Clip(path, LABELS.index(EMOTION_CODES[emotion]), actor, intensity, statement)


def clips(root: Path | None = None) -> list[Clip]:
    """Every speech clip under ravdess/Actor_NN/, sorted by path."""
    folder = (root or datasets_root()) / "ravdess"
    if not folder.is_dir():
        raise FileNotFoundError(f"RAVDESS not found at {folder}; set AULA_DATASETS to the shared datasets folder")
    found = [parse_name(p) for p in sorted(folder.glob("Actor_*/*.wav"))]
    if not found:
        raise FileNotFoundError(f"no RAVDESS .wav files under {folder}")
    return found


def read_wave(path: Path) -> np.ndarray:
    """16 kHz mono 16-bit PCM -> float32 in [-1, 1]."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (data.astype(np.float32) / 32768.0).copy()


def actor_folds(actors: np.ndarray, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, val_idx) folds over the training actors, grouped by actor, each fold with both sexes."""
    pool = sorted(set(int(a) for a in actors) & TRAIN_ACTORS)
    # Deal actors round-robin in (male, female) pairs, so every fold holds men and women.
    order = [a for pair in zip(pool[0::2], pool[1::2], strict=False) for a in pair] + (
        [pool[-1]] if len(pool) % 2 else []
    )
    groups = [set(order[i::k]) for i in range(k)]
    folds = []
    for g in groups:
        val = np.flatnonzero(np.isin(actors, list(g)))
        train = np.flatnonzero(np.isin(actors, list(set(pool) - g)))
        folds.append((train, val))
    return folds
