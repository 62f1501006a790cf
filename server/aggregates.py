"""Mergeable per-room sums of emotion windows, and the means read from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device.contract import EmotionEvent, faces_of
from device.contract.labels import LABELS

BUCKET_MS = 10_000

# Column order of the aggregates table after (room_id, bucket_ms); also the order of Sums.values().
SUM_COLUMNS: tuple[str, ...] = (
    "windows",
    "dist_n",
    *(f"p_{label}" for label in LABELS),
    "valence_n",
    "valence_sum",
    "arousal_n",
    "arousal_sum",
    "faces_n",
    "faces_sum",
)


def bucket_of(t_ms: int) -> int:
    return t_ms - t_ms % BUCKET_MS


@dataclass
class Sums:
    """Counts and sums of a set of windows; two Sums add up to the Sums of the union."""

    windows: int = 0
    dist_n: int = 0
    probs: list[float] = field(default_factory=lambda: [0.0] * len(LABELS))
    valence_n: int = 0
    valence_sum: float = 0.0
    arousal_n: int = 0
    arousal_sum: float = 0.0
    faces_n: int = 0
    faces_sum: int = 0

    def add_event(self, event: EmotionEvent) -> None:
        self.add_values(event.distribution, event.valence, event.arousal, faces_of(event))

    def add_values(
        self, distribution: dict[str, float] | None, valence: float | None, arousal: float | None, faces: int | None
    ) -> None:
        self.windows += 1
        if distribution is not None:
            self.dist_n += 1
            for i, label in enumerate(LABELS):
                self.probs[i] += distribution[label]
        if valence is not None:
            self.valence_n += 1
            self.valence_sum += valence
        if arousal is not None:
            self.arousal_n += 1
            self.arousal_sum += arousal
        if faces is not None:
            self.faces_n += 1
            self.faces_sum += faces

    def values(self) -> tuple:
        return (
            self.windows,
            self.dist_n,
            *self.probs,
            self.valence_n,
            self.valence_sum,
            self.arousal_n,
            self.arousal_sum,
            self.faces_n,
            self.faces_sum,
        )

    @classmethod
    def from_row(cls, row: tuple) -> Sums:
        """Build from SUM_COLUMNS values (PostgreSQL's SUM returns Decimal, and NULL over no rows)."""
        n = len(LABELS)
        row = tuple(0 if v is None else v for v in row)
        return cls(
            windows=int(row[0]),
            dist_n=int(row[1]),
            probs=[float(v) for v in row[2 : 2 + n]],
            valence_n=int(row[2 + n]),
            valence_sum=float(row[3 + n]),
            arousal_n=int(row[4 + n]),
            arousal_sum=float(row[5 + n]),
            faces_n=int(row[6 + n]),
            faces_sum=int(row[7 + n]),
        )

    def summary(self) -> dict[str, Any]:
        """Means: distribution, dominant label, valence, arousal and faces (None where nothing was measured)."""
        distribution = None
        dominant = None
        if self.dist_n:
            distribution = {label: round(p / self.dist_n, 4) for label, p in zip(LABELS, self.probs, strict=True)}
            dominant = max(LABELS, key=lambda label: distribution[label])
        return {
            "windows": self.windows,
            "distribution": distribution,
            "dominant": dominant,
            "valence": round(self.valence_sum / self.valence_n, 4) if self.valence_n else None,
            "arousal": round(self.arousal_sum / self.arousal_n, 4) if self.arousal_n else None,
            "faces": round(self.faces_sum / self.faces_n, 2) if self.faces_n else None,
        }


def accumulate(items: list[tuple[int, EmotionEvent]]) -> dict[tuple[int, int], Sums]:
    """Group (room_id, event) pairs into per-room, per-bucket Sums."""
    out: dict[tuple[int, int], Sums] = {}
    for room_id, event in items:
        key = (room_id, bucket_of(event.window_start_ms))
        sums = out.get(key)
        if sums is None:
            sums = out[key] = Sums()
        sums.add_event(event)
    return out
