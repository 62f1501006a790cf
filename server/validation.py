"""Check one MQTT message against the shared schema and its topic; every rejection has a short reason code."""

from __future__ import annotations

from dataclasses import dataclass

from device.contract import (
    MAX_PAYLOAD_BYTES,
    EmotionEvent,
    HealthMessage,
    SchemaError,
    StatusMessage,
    decode_json,
    faces_of,
    parse_device_topic,
)
from device.contract import schema as contract_schema
from device.contract.topics import EVENTS, STATUS

# Reason codes are a fixed set, so they are safe as metric labels whatever a payload contains.
REASONS = (
    "empty",
    "oversized",
    "not_utf8",
    "not_json",
    "not_object",
    "schema",
    "topic",
    "topic_mismatch",
    "privacy",
    "too_old",
    "future",
    # Readable by a newer release; events with it go to quarantine, status and health are refused.
    "newer_schema",
    # Bounds on what a sender can cost (server/config.py: intake); the message was readable but is not kept.
    "unknown_device",
    "rate_limited",
    "shed",
    "unassigned_full",
    "quarantine_full",
)

# The smallest group whose face distribution the server stores: below it a distribution describes individuals.
# Devices withhold it themselves (fusion.min_faces, default 3); the server does not trust them to.
MIN_FACES = 3


class Rejected(ValueError):
    """A message that is not stored; `reason` is one of REASONS and `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Incoming:
    """A valid message: an event, a status or a health report from one device."""

    leaf: str
    site: str
    room: str
    device_id: str
    event: EmotionEvent | None = None
    status: StatusMessage | None = None
    health: HealthMessage | None = None
    payload: bytes = b""


def parse_topic(topic: str) -> tuple[str, str, str, str]:
    """Split `aula/v1/<site>/<room>/<device>/<leaf>`; raise Rejected('topic') otherwise."""
    parts = parse_device_topic(topic)
    if parts is None:
        raise Rejected("topic", f"not a device topic: {topic[:200]!r}")
    return parts


def _decode(payload: bytes) -> dict:
    if not payload:
        raise Rejected("empty", "empty payload")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected("oversized", f"{len(payload)} bytes exceed {MAX_PAYLOAD_BYTES}")
    try:
        return decode_json(payload)
    except SchemaError as exc:
        text = str(exc)
        if text.startswith("payload is not UTF-8"):
            raise Rejected("not_utf8", text) from None
        if text.startswith("payload is not JSON"):
            raise Rejected("not_json", text) from None
        if text.startswith("payload must be a JSON object"):
            raise Rejected("not_object", text) from None
        raise Rejected("schema", text) from None
    except RecursionError:
        # json.loads recurses per nesting level; 16 KiB of '[' is enough to exhaust the stack.
        raise Rejected("not_json", "payload nests too deeply") from None


def _check_privacy(event: EmotionEvent) -> None:
    """Refuse what no device may send: a transcript, or a face distribution of fewer than MIN_FACES faces."""
    if event.transcript is not None:
        raise Rejected("privacy", "events must not carry a transcript; no text leaves the device")
    faces = faces_of(event)
    if event.modalities.get("face") is not None and (faces is None or faces < MIN_FACES):
        raise Rejected("privacy", f"a face distribution needs a group of at least {MIN_FACES} faces, got {faces}")


def check_times(event: EmotionEvent, now_ms: int, max_age_ms: int, max_ahead_ms: int) -> None:
    """Refuse a window that ends too far after `now_ms` (future) or started too long before it (too_old)."""
    if event.window_end_ms > now_ms + max_ahead_ms:
        ahead = (event.window_end_ms - now_ms) / 1000
        raise Rejected("future", f"window ends {ahead:.0f} s after the server's clock")
    if event.window_start_ms < now_ms - max_age_ms:
        raise Rejected("too_old", f"window started {(now_ms - event.window_start_ms) / 1000:.0f} s ago")


def validate_message(topic: str, payload: bytes) -> Incoming:
    """Return the typed message, or raise Rejected with a reason code."""
    site, room, device, leaf = parse_topic(topic)
    data = _decode(payload)
    version = data.get("schema")
    # Read at call time (not imported by name), so the check follows the contract this process runs.
    if isinstance(version, int) and not isinstance(version, bool) and version > contract_schema.SCHEMA_VERSION:
        raise Rejected("newer_schema", f"schema version {version}; this release reads {contract_schema.SCHEMA_VERSION}")
    try:
        if leaf == EVENTS:
            event = EmotionEvent.from_dict(data)
            if (event.site, event.room, event.device_id) != (site, room, device):
                raise Rejected("topic_mismatch", "site, room or device_id differs from the topic")
            _check_privacy(event)
            return Incoming(leaf, site, room, device, event=event, payload=payload)
        if leaf == STATUS:
            status = StatusMessage.from_dict(data)
            if status.device_id != device:
                raise Rejected("topic_mismatch", "device_id differs from the topic")
            return Incoming(leaf, site, room, device, status=status, payload=payload)
        health = HealthMessage.from_dict(data)
        if health.device_id != device:
            raise Rejected("topic_mismatch", "device_id differs from the topic")
        return Incoming(leaf, site, room, device, health=health, payload=payload)
    except SchemaError as exc:
        raise Rejected("schema", str(exc)) from None
    except (TypeError, AttributeError, RecursionError) as exc:
        # A value of an unexpected type deep inside (e.g. a list as a dict key check); still just invalid.
        raise Rejected("schema", f"{type(exc).__name__}: {exc}") from None
