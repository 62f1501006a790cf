"""The schema's building blocks: version, size limit, JSON decoding, field checks and the Message base class."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from enum import Enum
from functools import cache
from typing import Any, ClassVar

from device.contract.labels import LABELS

try:  # optional: the server installs it (three times faster); a device works without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _orjson = None

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_REASON_CHARS = 256

_LABEL_SET = frozenset(LABELS)
_TOPIC_FORBIDDEN = frozenset("/+#\x00")


class SchemaError(ValueError):
    """A payload does not match the schema; the message says which field and why."""


def check_id(value: Any, name: str, max_len: int = 64) -> str:
    """A non-empty printable string that can stand as one topic level."""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise SchemaError(f"{name} must be a non-empty string of at most {max_len} characters")
    if not _TOPIC_FORBIDDEN.isdisjoint(value) or not value.isprintable():
        raise SchemaError(f"{name} contains characters not allowed in a topic level")
    return value


def check_number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"{name} must be a finite number")
    if not lo <= value <= hi:
        raise SchemaError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise SchemaError(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def check_bool(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise SchemaError(f"{name} must be true or false")
    return value


def check_timestamp(data: dict, name: str = "ts_ms") -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**53:
        raise SchemaError(f"{name} must be an integer of milliseconds since the epoch")
    return value


def check_reason(data: dict) -> str | None:
    value = data.get("reason")
    if value is not None and (not isinstance(value, str) or len(value) > MAX_REASON_CHARS):
        raise SchemaError(f"reason must be a string of at most {MAX_REASON_CHARS} characters or null")
    return value


def short_reason(text: str) -> str:
    """Clip free text to the reason limit so a long exception message cannot break the schema."""
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


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
            check_number(v, f"{name}.{k}", 0.0, 1.0)  # raises with the precise reason
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


def encode_json(data: dict[str, Any]) -> bytes:
    """Compact JSON; NaN and infinities are refused (ValueError), as the decoder refuses them."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


@cache
def field_names(cls: type) -> frozenset[str]:
    """The keys a payload of message class `cls` may hold: its fields plus the type tag and schema version."""
    return frozenset(f.name for f in fields(cls)) | {"type", "schema"}


@dataclass
class Message:
    """Base of every typed message: a type tag, a schema version and explicit to/from payload methods."""

    type_tag: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        data = {"type": self.type_tag, "schema": SCHEMA_VERSION}
        data.update((k, v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items())
        return data

    def to_payload(self) -> bytes:
        return encode_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Message:  # pragma: no cover - every message defines it
        raise NotImplementedError

    @classmethod
    def from_payload(cls, payload: bytes | str):
        return cls.from_dict(decode_json(payload))

    @classmethod
    def _header(cls, data: dict) -> None:
        if data.get("type") != cls.type_tag:
            raise SchemaError(f"type must be '{cls.type_tag}', got {data.get('type')!r}")
        if data.get("schema") != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {data.get('schema')!r} (expected {SCHEMA_VERSION})")

    @classmethod
    def _known_fields(cls, data: dict) -> None:
        unknown = data.keys() - field_names(cls)
        if unknown:
            raise SchemaError(f"unknown fields: {', '.join(sorted(unknown))}")
