"""Mergeable per-room sums of emotion windows, and the means read from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device.contract import COUNT_KEYS, EmotionEvent, Modality, faces_of, valence_arousal
from device.contract.labels import LABELS

BUCKET_MS = 10_000


@dataclass(frozen=True)
class ModalitySums:
    """A modality whose own distribution is summed beside the fused one (columns `<name>_n`, `<name>_p_<label>`)."""

    name: str  # the key in EmotionEvent.modalities
    summary_key: str  # its key in Sums.summary()
    count_key: str | None = None  # a `counts` key summed as column `<count_key>_sum`
    count_field: str | None = None  # that sum's name inside the modality's summary

    @property
    def columns(self) -> tuple[str, ...]:
        sums = (f"{self.count_key}_sum",) if self.count_key else ()
        return (f"{self.name}_n", *(f"{self.name}_p_{label}" for label in LABELS), *sums)


# Each needs its columns in a migration (server/migrations.py: modality_columns), appended in migration order.
# `words` is the mood of the words the microphone hears (mostly the teacher's); the words stay on the device.
MODALITIES: tuple[ModalitySums, ...] = (
    ModalitySums(Modality.FACE.value, "face"),
    ModalitySums(Modality.SPEECH.value, "voices", count_key=COUNT_KEYS[Modality.SPEECH], count_field="segments"),
    ModalitySums(Modality.TEXT.value, "words", count_key=COUNT_KEYS[Modality.TEXT], count_field="utterances"),
)

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
    *(column for m in MODALITIES for column in m.columns),
)


def bucket_of(t_ms: int) -> int:
    return t_ms - t_ms % BUCKET_MS


def _zeros() -> dict[str, list[float]]:
    return {m.name: [0.0] * len(LABELS) for m in MODALITIES}


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
    # Per modality: windows that carried its distribution, and its per-label probability sums.
    modality_n: dict[str, int] = field(default_factory=lambda: {m.name: 0 for m in MODALITIES})
    modality_probs: dict[str, list[float]] = field(default_factory=_zeros)
    # Per summed `counts` key (speech_segments, text_utterances): the total over all windows.
    count_sums: dict[str, int] = field(default_factory=lambda: {m.count_key: 0 for m in MODALITIES if m.count_key})

    def add_event(self, event: EmotionEvent) -> None:
        self.add_values(
            event.distribution,
            event.valence,
            event.arousal,
            faces_of(event),
            modalities=event.modalities,
            counts=event.counts,
        )

    def add_values(
        self,
        distribution: dict[str, float] | None,
        valence: float | None,
        arousal: float | None,
        faces: int | None,
        modalities: dict[str, dict[str, float] | None] | None = None,
        counts: dict[str, int] | None = None,
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
        for m in MODALITIES:
            dist = (modalities or {}).get(m.name)
            if dist is not None:
                self.modality_n[m.name] += 1
                probs = self.modality_probs[m.name]
                for i, label in enumerate(LABELS):
                    probs[i] += dist[label]
            if m.count_key:
                value = (counts or {}).get(m.count_key)
                if isinstance(value, int):
                    self.count_sums[m.count_key] += value

    def values(self) -> tuple:
        out: list[Any] = [
            self.windows,
            self.dist_n,
            *self.probs,
            self.valence_n,
            self.valence_sum,
            self.arousal_n,
            self.arousal_sum,
            self.faces_n,
            self.faces_sum,
        ]
        for m in MODALITIES:
            out += [self.modality_n[m.name], *self.modality_probs[m.name]]
            if m.count_key:
                out.append(self.count_sums[m.count_key])
        return tuple(out)

    @classmethod
    def from_row(cls, row: tuple) -> Sums:
        """Build from SUM_COLUMNS values (PostgreSQL's SUM returns Decimal, and NULL over no rows)."""
        n = len(LABELS)
        row = tuple(0 if v is None else v for v in row)
        sums = cls(
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
        i = 8 + n
        for m in MODALITIES:
            sums.modality_n[m.name] = int(row[i])
            sums.modality_probs[m.name] = [float(v) for v in row[i + 1 : i + 1 + n]]
            i += 1 + n
            if m.count_key:
                sums.count_sums[m.count_key] = int(row[i])
                i += 1
        return sums

    def modality_summary(self, m: ModalitySums) -> dict[str, Any] | None:
        """One modality's means (distribution, dominant, valence, arousal, windows), or None without its data."""
        count = self.modality_n[m.name]
        if not count:
            return None
        distribution = {
            label: round(p / count, 4) for label, p in zip(LABELS, self.modality_probs[m.name], strict=True)
        }
        valence, arousal = valence_arousal(distribution)
        out: dict[str, Any] = {
            "distribution": distribution,
            "dominant": max(LABELS, key=lambda label: distribution[label]),
            "valence": valence,
            "arousal": arousal,
            "windows": count,
        }
        if m.count_key and m.count_field:
            out[m.count_field] = self.count_sums[m.count_key]
        return out

    def summary(self) -> dict[str, Any]:
        """Means: distribution, dominant label, valence, arousal and faces (None where nothing was measured);
        per modality (`face`, `voices`, `words`) its own means, or None; `speech_segments` and `text_utterances` as
        totals."""
        distribution = None
        dominant = None
        if self.dist_n:
            distribution = {label: round(p / self.dist_n, 4) for label, p in zip(LABELS, self.probs, strict=True)}
            dominant = max(LABELS, key=lambda label: distribution[label])
        out: dict[str, Any] = {
            "windows": self.windows,
            "distribution": distribution,
            "dominant": dominant,
            "valence": round(self.valence_sum / self.valence_n, 4) if self.valence_n else None,
            "arousal": round(self.arousal_sum / self.arousal_n, 4) if self.arousal_n else None,
            "faces": round(self.faces_sum / self.faces_n, 2) if self.faces_n else None,
        }
        for m in MODALITIES:
            out[m.summary_key] = self.modality_summary(m)
        for key, total in self.count_sums.items():
            out[key] = total
        return out


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
