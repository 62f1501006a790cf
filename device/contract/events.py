"""The class-level emotion window a device publishes on `.../events`, and the modalities it fuses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from device.contract.labels import LABELS
from device.contract.schema import (
    Message,
    SchemaError,
    check_distribution,
    check_id,
    check_int,
    check_number,
    field_names,
)


class Modality(str, Enum):
    """The three sensing modalities."""

    FACE = "face"
    SPEECH = "speech"
    TEXT = "text"


# The `counts` key of each modality: how many faces, speech segments or utterances a window pooled.
COUNT_KEYS: dict[Modality, str] = {
    Modality.FACE: "faces",
    Modality.SPEECH: "speech_segments",
    Modality.TEXT: "text_utterances",
}
FACES = COUNT_KEYS[Modality.FACE]

_MODALITY_NAMES = frozenset(m.value for m in Modality)


@dataclass
class EmotionEvent(Message):
    """One fused class-level window from one device; published on `.../events` with QoS 1."""

    type_tag: ClassVar[str] = "emotion_window"

    device_id: str
    site: str
    room: str
    seq: int
    window_start_ms: int
    window_end_ms: int
    distribution: dict[str, float] | None
    dominant: str | None
    valence: float | None
    arousal: float | None
    modalities: dict[str, dict[str, float] | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    paused: bool = False
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    transcript: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> EmotionEvent:
        cls._header(data)
        unknown = data.keys() - _EVENT_FIELDS
        if unknown:
            raise SchemaError(f"unknown fields: {', '.join(sorted(unknown))}")
        try:
            event_id = data["event_id"]
            if not isinstance(event_id, str) or not 8 <= len(event_id) <= 64 or not event_id.isalnum():
                raise SchemaError("event_id must be 8-64 letters or digits")
            start = check_int(data["window_start_ms"], "window_start_ms", 0, 2**53)
            end = check_int(data["window_end_ms"], "window_end_ms", 0, 2**53)
            if not 0 < end - start <= 3_600_000:
                raise SchemaError("window_end_ms must be after window_start_ms, by at most an hour")
            dist = check_distribution(data["distribution"], "distribution")
            dominant = data["dominant"]
            if dominant is not None and dominant not in LABELS:
                raise SchemaError(f"dominant must be one of the labels or null, got {dominant!r}")
            valence = data["valence"]
            arousal = data["arousal"]
            if valence is not None:
                check_number(valence, "valence", -1.0, 1.0)
            if arousal is not None:
                check_number(arousal, "arousal", -1.0, 1.0)
            modalities = data.get("modalities", {})
            if not isinstance(modalities, dict) or not set(modalities) <= _MODALITY_NAMES:
                raise SchemaError("modalities must map face, speech or text to a distribution or null")
            modalities = {k: check_distribution(v, f"modalities.{k}") for k, v in modalities.items()}
            counts = data.get("counts", {})
            if not isinstance(counts, dict) or len(counts) > 16:
                raise SchemaError("counts must be an object of at most 16 integers")
            counts = {check_id(k, "counts key", 32): check_int(v, f"counts.{k}", 0, 10**6) for k, v in counts.items()}
            models = data.get("models", {})
            if not isinstance(models, dict) or len(models) > 16 or not all(
                isinstance(v, str) and len(v) <= 128 for v in models.values()
            ):
                raise SchemaError("models must map names to version strings")
            paused = data.get("paused", False)
            if not isinstance(paused, bool):
                raise SchemaError("paused must be true or false")
            transcript = data.get("transcript")
            if transcript is not None and (not isinstance(transcript, str) or len(transcript) > 4000):
                raise SchemaError("transcript must be a string of at most 4000 characters or null")
            return cls(
                device_id=check_id(data["device_id"], "device_id"),
                site=check_id(data["site"], "site"),
                room=check_id(data["room"], "room"),
                seq=check_int(data["seq"], "seq", 0, 2**53),
                window_start_ms=start,
                window_end_ms=end,
                distribution=dist,
                dominant=dominant,
                valence=valence,
                arousal=arousal,
                modalities=modalities,
                counts=counts,
                models=dict(models),
                paused=paused,
                event_id=event_id,
                transcript=transcript,
            )
        except KeyError as exc:
            raise SchemaError(f"missing field {exc.args[0]}") from None


_EVENT_FIELDS = field_names(EmotionEvent)


def faces_of(event: EmotionEvent) -> int | None:
    """The window's face count (the group size), or None when the device sent none."""
    value = event.counts.get(FACES)
    return value if isinstance(value, int) else None
