"""The retained alerts the server publishes per site on `aula/v1/<site>/alerts` while any device is offline or
degraded for longer than the fleet's alert time; an empty retained payload clears the topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from device.contract.schema import Message, SchemaError, check_id, check_reason, check_timestamp

ALERT_STATES = ("offline", "degraded")
MAX_ALERTS = 10_000  # a site's devices; more is not a site but a malformed message
MAX_ROOM_NAME = 200


@dataclass(frozen=True)
class DeviceAlert:
    """One device that has been offline or degraded since `since_ms`."""

    device_id: str
    room: str | None  # the room's name, as the dashboard shows it
    state: str  # offline | degraded
    reason: str | None
    since_ms: int

    @classmethod
    def from_dict(cls, data: Any) -> DeviceAlert:
        if not isinstance(data, dict):
            raise SchemaError("each alert must be an object")
        unknown = data.keys() - cls.__dataclass_fields__.keys()
        if unknown:
            raise SchemaError(f"unknown alert fields: {', '.join(sorted(unknown))}")
        room, state = data.get("room"), data.get("state")
        if room is not None and (not isinstance(room, str) or len(room) > MAX_ROOM_NAME):
            raise SchemaError(f"room must be a string of at most {MAX_ROOM_NAME} characters or null")
        if state not in ALERT_STATES:
            raise SchemaError(f"state must be one of {', '.join(ALERT_STATES)}, got {state!r}")
        return cls(device_id=check_id(data.get("device_id"), "device_id"), room=room, state=state,
                   reason=check_reason(data), since_ms=check_timestamp(data, "since_ms"))


@dataclass
class SiteAlerts(Message):
    """A site's active alerts, newest state first as the server lists them."""

    type_tag: ClassVar[str] = "alerts"

    site: str
    ts_ms: int
    alerts: list[DeviceAlert]

    @classmethod
    def from_dict(cls, data: dict) -> SiteAlerts:
        cls._header(data)
        cls._known_fields(data)
        items = data.get("alerts")
        if not isinstance(items, list) or not items or len(items) > MAX_ALERTS:
            raise SchemaError(f"alerts must be a list of 1 to {MAX_ALERTS} alerts (an empty payload clears the topic)")
        return cls(site=check_id(data.get("site"), "site"), ts_ms=check_timestamp(data),
                   alerts=[DeviceAlert.from_dict(a) for a in items])
