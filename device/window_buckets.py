"""Thread-safe per-window accumulators on one clock: vision and audio workers add, the service closes."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from device.contract.labels import NUM_LABELS


@dataclass
class WindowContents:
    """Everything the workers contributed to one window (per-face rows stay on the device)."""

    index: int
    start: float
    end: float
    frames: int = 0
    faces_max: int = 0
    face_rows: list[np.ndarray] = field(default_factory=list)
    speech_rows: list[np.ndarray] = field(default_factory=list)
    speech_segments: int = 0
    voiced_s: float = 0.0
    text_rows: list[np.ndarray] = field(default_factory=list)

    @property
    def face_probs(self) -> np.ndarray | None:
        return np.concatenate(self.face_rows) if self.face_rows else None

    @property
    def speech_probs(self) -> np.ndarray | None:
        return np.stack(self.speech_rows) if self.speech_rows else None

    @property
    def text_probs(self) -> np.ndarray | None:
        return np.stack(self.text_rows) if self.text_rows else None


class WindowBuckets:
    """Windows [t0 + k*w, t0 + (k+1)*w) keyed by k; late additions to a closed window are counted, not kept."""

    def __init__(self, t0: float, window_s: float):
        self.t0 = t0
        self.window_s = window_s
        self._lock = threading.Lock()
        self._open: dict[int, WindowContents] = {}
        self._closed_upto = -1  # every k <= this has been closed
        self.late = 0

    def index(self, t: float) -> int:
        return math.floor((t - self.t0) / self.window_s)

    def bounds(self, k: int) -> tuple[float, float]:
        return self.t0 + k * self.window_s, self.t0 + (k + 1) * self.window_s

    def _bucket(self, t: float) -> WindowContents | None:
        k = self.index(t)
        if k <= self._closed_upto:
            self.late += 1
            return None
        if k not in self._open:
            self._open[k] = WindowContents(k, *self.bounds(k))
        return self._open[k]

    def add_faces(self, t: float, probs: np.ndarray) -> None:
        """Add one analysed frame: its per-face probabilities (n, 7)."""
        with self._lock:
            b = self._bucket(t)
            if b is None:
                return
            b.frames += 1
            b.faces_max = max(b.faces_max, len(probs))
            if len(probs):
                b.face_rows.append(np.asarray(probs, np.float32).reshape(-1, NUM_LABELS))

    def add_speech(self, t_end: float, probs: np.ndarray | None, voiced_s: float) -> None:
        """Add one speech segment (by its end time) with its emotion probabilities, if a model ran."""
        with self._lock:
            b = self._bucket(t_end)
            if b is None:
                return
            b.speech_segments += 1
            b.voiced_s += voiced_s
            if probs is not None:
                b.speech_rows.append(np.asarray(probs, np.float32))

    def add_text(self, t: float, probs: np.ndarray) -> None:
        """Add one utterance's text-emotion probabilities (the words themselves never reach a window)."""
        with self._lock:
            b = self._bucket(t)
            if b is not None:
                b.text_rows.append(np.asarray(probs, np.float32))

    def close(self, k: int) -> WindowContents:
        """Close window k (and forget any older open one, which can only be empty of news by now)."""
        with self._lock:
            for old in [i for i in self._open if i < k]:
                del self._open[old]
            self._closed_upto = max(self._closed_upto, k)
            return self._open.pop(k, None) or WindowContents(k, *self.bounds(k))
