"""Pool per-frame face analyses into class-level windows (no per-face data leaves a window)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.labels import LABELS, NUM_LABELS
from device.vision import FaceAnalysis


@dataclass
class FaceWindow:
    """Class-level face summary of one window: counts and the pooled emotion distribution."""

    start: float
    end: float
    frames: int
    faces_mean: float
    faces_max: int
    faces_total: int
    distribution: dict[str, float] | None  # None when fewer than min_faces were seen (privacy)
    detect_ms_mean: float
    classify_ms_mean: float

    def to_dict(self) -> dict:
        return {
            "window_start": round(self.start, 3),
            "window_end": round(self.end, 3),
            "frames_analysed": self.frames,
            "faces_mean": round(self.faces_mean, 2),
            "faces_max": self.faces_max,
            "face_distribution": self.distribution,
            "dominant": max(self.distribution, key=self.distribution.get) if self.distribution else None,
            "detect_ms_mean": round(self.detect_ms_mean, 2),
            "classify_ms_mean": round(self.classify_ms_mean, 2),
        }


class FaceWindowPooler:
    """Accumulate analyses; emit a FaceWindow each time a window of `window_s` seconds closes."""

    def __init__(self, window_s: float = 2.0, min_faces: int = 3):
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.min_faces = min_faces
        self._start: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._frames = 0
        self._counts: list[int] = []
        self._prob_sum = np.zeros(NUM_LABELS, np.float64)
        self._detect_ms = 0.0
        self._classify_ms = 0.0

    def add(self, analysis: FaceAnalysis) -> list[FaceWindow]:
        """Add one analysed frame; return the windows it closed (usually none or one)."""
        if self._start is None:
            self._start = analysis.t_capture
        closed = []
        while analysis.t_capture >= self._start + self.window_s:
            closed.append(self._close(self._start + self.window_s))
        self._frames += 1
        self._counts.append(analysis.n_faces)
        self._prob_sum += analysis.probs.sum(axis=0)
        self._detect_ms += analysis.detect_ms
        self._classify_ms += analysis.classify_ms
        return closed

    def flush(self, end: float) -> FaceWindow | None:
        """Close the current partial window, if it saw any frame."""
        if self._start is None or self._frames == 0:
            return None
        return self._close(end)

    def _close(self, end: float) -> FaceWindow:
        total = int(sum(self._counts))
        faces_max = max(self._counts, default=0)
        # Withhold the distribution for small groups: with fewer faces it describes individuals.
        dist = None
        if total > 0 and faces_max >= self.min_faces:
            p = self._prob_sum / total
            dist = {label: round(float(v), 4) for label, v in zip(LABELS, p, strict=True)}
        frames = max(self._frames, 1)
        window = FaceWindow(
            start=self._start,
            end=end,
            frames=self._frames,
            faces_mean=total / frames if self._frames else 0.0,
            faces_max=faces_max,
            faces_total=total,
            distribution=dist,
            detect_ms_mean=self._detect_ms / frames,
            classify_ms_mean=self._classify_ms / frames,
        )
        self._start = end
        self._reset()
        return window
