"""The retained room summary the server publishes on `aula/v1/<site>/<room>/summary`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from device.contract.labels import LABELS
from device.contract.schema import (
    Message,
    SchemaError,
    check_distribution,
    check_id,
    check_int,
    check_number,
    check_timestamp,
)


@dataclass
class RoomSummary(Message):
    """The mean of a room's recent windows, for monitoring that subscribes to MQTT instead of the dashboard."""

    type_tag: ClassVar[str] = "room_summary"

    site: str
    room: str
    room_id: int
    ts_ms: int
    window_start_ms: int
    window_end_ms: int
    windows: int  # how many device windows the means are over
    distribution: dict[str, float] | None
    dominant: str | None
    valence: float | None
    arousal: float | None
    faces: float | None  # mean face count per window
    devices_online: int

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["window"] = {
            "start_ms": data.pop("window_start_ms"),
            "end_ms": data.pop("window_end_ms"),
            "windows": data.pop("windows"),
        }
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RoomSummary:
        cls._header(data)
        window = data.get("window")
        if not isinstance(window, dict) or window.keys() != {"start_ms", "end_ms", "windows"}:
            raise SchemaError("window must be an object with start_ms, end_ms and windows")
        flat = {k: v for k, v in data.items() if k != "window"}
        flat.update(window_start_ms=window["start_ms"], window_end_ms=window["end_ms"], windows=window["windows"])
        cls._known_fields(flat)
        try:
            dominant = flat["dominant"]
            if dominant is not None and dominant not in LABELS:
                raise SchemaError(f"dominant must be one of the labels or null, got {dominant!r}")
            optional = {}
            for name, lo, hi in (("valence", -1.0, 1.0), ("arousal", -1.0, 1.0), ("faces", 0.0, 1e6)):
                value = flat[name]
                optional[name] = None if value is None else check_number(value, name, lo, hi)
            return cls(
                site=check_id(flat["site"], "site"),
                room=check_id(flat["room"], "room"),
                room_id=check_int(flat["room_id"], "room_id", 0, 2**53),
                ts_ms=check_timestamp(flat),
                window_start_ms=check_timestamp(flat, "window_start_ms"),
                window_end_ms=check_timestamp(flat, "window_end_ms"),
                windows=check_int(flat["windows"], "window.windows", 0, 2**31),
                distribution=check_distribution(flat["distribution"], "distribution"),
                dominant=dominant,
                devices_online=check_int(flat["devices_online"], "devices_online", 0, 10**6),
                **optional,
            )
        except KeyError as exc:
            raise SchemaError(f"missing field {exc.args[0]}") from None
