"""Typed messages between the device and the server: one definition, no heavy imports.

Every message is a small dataclass with a type tag, a schema version and explicit to/from payload
methods. `from_payload` validates types, ranges and sizes, so the server can reject garbage with a
reason and never crash on it.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

from device.labels import LABELS

try:  # optional: the server installs it (three times faster); a device works without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _orjson = None

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024
TOPIC_ROOT = "aula/v1"

# Valence and arousal per label, on [-1, 1], after Russell's circumplex (fixed and documented).
VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "angry": (-0.6, 0.7),
    "disgust": (-0.7, 0.3),
    "fear": (-0.7, 0.6),
    "happy": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "sad": (-0.7, -0.4),
    "surprise": (0.3, 0.8),
}


class SchemaError(ValueError):
    """A payload does not match the schema; the message says which field and why."""


class Modality(str, Enum):
    """The three sensing modalities."""

    FACE = "face"
    SPEECH = "speech"
    TEXT = "text"


_MODALITY_NAMES = frozenset(m.value for m in Modality)
_LABEL_SET = frozenset(LABELS)
_TOPIC_FORBIDDEN = frozenset("/+#\x00")


class DeviceState(str, Enum):
    """Values of the retained status topic."""

    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"
    DEGRADED = "degraded"


def topic(site: str, room: str, device: str, leaf: str) -> str:
    """Return `aula/v1/<site>/<room>/<device>/<leaf>`."""
    return f"{TOPIC_ROOT}/{site}/{room}/{device}/{leaf}"


def _check_id(value: Any, name: str, max_len: int = 64) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise SchemaError(f"{name} must be a non-empty string of at most {max_len} characters")
    if not _TOPIC_FORBIDDEN.isdisjoint(value) or not value.isprintable():
        raise SchemaError(f"{name} contains characters not allowed in a topic level")
    return value


def _check_number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{name} must be a finite number")
    if not lo <= value <= hi:
        raise SchemaError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise SchemaError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def check_distribution(value: Any, name: str) -> dict[str, float] | None:
    """Validate a label -> probability mapping over exactly the canonical labels, summing to about 1."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.keys() != _LABEL_SET:
        raise SchemaError(f"{name} must map exactly the labels {', '.join(LABELS)}")
    out = {}
    for k in LABELS:  # the server's hot path: inline checks instead of a call per label
        v = value[k]
        # `0 <= v <= 1` is False for NaN and infinities too.
        if type(v) not in (float, int) or not 0.0 <= v <= 1.0:
            _check_number(v, f"{name}.{k}", 0.0, 1.0)  # raises with the precise reason
        out[k] = float(v)
    total = sum(out.values())
    if abs(total - 1.0) > 0.02:
        raise SchemaError(f"{name} sums to {total:.3f}, not 1")
    return out


def _reject_constant(name: str):
    raise SchemaError(f"{name} is not allowed")


# One decoder for every payload: building one per call (json.loads with options) costs on the server's hot path.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(payload: bytes | str) -> dict:
    """Decode a JSON object payload with a size limit; raise SchemaError on anything else.

    NaN and Infinity are refused either way; a number that overflows (1e999) is refused by orjson and
    decodes to inf in the standard library, which the schema's range checks then refuse.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    data = _decode_orjson(payload) if _orjson is not None else _decode_stdlib(payload)
    if not isinstance(data, dict):
        raise SchemaError("payload must be a JSON object")
    return data


def _decode_orjson(payload: bytes | str) -> Any:
    try:
        return _orjson.loads(payload)
    except _orjson.JSONDecodeError as exc:
        if isinstance(payload, bytes):
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise SchemaError("payload is not UTF-8") from None
        if "depth limit" in exc.msg:
            raise SchemaError("payload nests too deeply") from None
        raise SchemaError(f"payload is not JSON ({exc.msg})") from None


def _decode_stdlib(payload: bytes | str) -> Any:
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        data = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise SchemaError("payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"payload is not JSON ({exc.msg})") from None
    except RecursionError:  # 16 KiB of "[" nests deeper than the decoder's recursion limit
        raise SchemaError("payload nests too deeply") from None
    return data


@dataclass
class Message:
    """Base of every typed message: a type tag and a schema version."""

    type_tag: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"type": self.type_tag, "schema": SCHEMA_VERSION}
        data.update(asdict(self))
        return data

    def to_payload(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def _header(cls, data: dict) -> None:
        if data.get("type") != cls.type_tag:
            raise SchemaError(f"type must be '{cls.type_tag}', got {data.get('type')!r}")
        if data.get("schema") != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {data.get('schema')!r} (expected {SCHEMA_VERSION})")


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
            start = _check_int(data["window_start_ms"], "window_start_ms", 0, 2**53)
            end = _check_int(data["window_end_ms"], "window_end_ms", 0, 2**53)
            if not 0 < end - start <= 3_600_000:
                raise SchemaError("window_end_ms must be after window_start_ms, by at most an hour")
            dist = check_distribution(data["distribution"], "distribution")
            dominant = data["dominant"]
            if dominant is not None and dominant not in LABELS:
                raise SchemaError(f"dominant must be one of the labels or null, got {dominant!r}")
            valence = data["valence"]
            arousal = data["arousal"]
            if valence is not None:
                _check_number(valence, "valence", -1.0, 1.0)
            if arousal is not None:
                _check_number(arousal, "arousal", -1.0, 1.0)
            modalities = data.get("modalities", {})
            if not isinstance(modalities, dict) or not set(modalities) <= _MODALITY_NAMES:
                raise SchemaError("modalities must map face, speech or text to a distribution or null")
            modalities = {k: check_distribution(v, f"modalities.{k}") for k, v in modalities.items()}
            counts = data.get("counts", {})
            if not isinstance(counts, dict) or len(counts) > 16:
                raise SchemaError("counts must be an object of at most 16 integers")
            counts = {_check_id(k, "counts key", 32): _check_int(v, f"counts.{k}", 0, 10**6) for k, v in counts.items()}
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
                device_id=_check_id(data["device_id"], "device_id"),
                site=_check_id(data["site"], "site"),
                room=_check_id(data["room"], "room"),
                seq=_check_int(data["seq"], "seq", 0, 2**53),
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

    @classmethod
    def from_payload(cls, payload: bytes | str) -> EmotionEvent:
        return cls.from_dict(decode_json(payload))


_EVENT_FIELDS = frozenset(EmotionEvent.__dataclass_fields__) | {"type", "schema"}


def valence_arousal(distribution: dict[str, float]) -> tuple[float, float]:
    """Return the probability-weighted valence and arousal of a distribution."""
    v = sum(p * VALENCE_AROUSAL[k][0] for k, p in distribution.items())
    a = sum(p * VALENCE_AROUSAL[k][1] for k, p in distribution.items())
    return round(v, 4), round(a, 4)
