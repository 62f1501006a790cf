"""The periodic health message on `.../health`: the device's state, host figures and each stage's counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from device.contract.messages import DeviceState, check_state
from device.contract.schema import (
    Message,
    SchemaError,
    check_bool,
    check_id,
    check_reason,
    check_timestamp,
)

MAX_SECTION_KEYS = 64
MAX_TEXT_CHARS = 256

# The sections of a health message: who fills them, and what they hold (docs/mqtt.md lists the keys).
SECTIONS = ("models", "host", "vision", "audio", "mqtt")


def check_section(value: Any, name: str, depth: int = 2) -> dict[str, Any] | None:
    """A JSON object of figures: names to finite numbers, booleans, short strings, null or (nested) such objects."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_SECTION_KEYS:
        raise SchemaError(f"{name} must be an object of at most {MAX_SECTION_KEYS} figures")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise SchemaError(f"{name} has a key that is not a name of 1-64 characters")
        where = f"{name}.{key}"
        if isinstance(item, dict):
            if depth <= 1:
                raise SchemaError(f"{where} nests too deeply")
            item = check_section(item, where, depth - 1)
        elif isinstance(item, float) and not math.isfinite(item):
            raise SchemaError(f"{where} must be a finite number")
        elif isinstance(item, str) and len(item) > MAX_TEXT_CHARS:
            raise SchemaError(f"{where} must be at most {MAX_TEXT_CHARS} characters")
        elif item is not None and not isinstance(item, bool | int | float | str):
            raise SchemaError(f"{where} must be a number, a string, true, false, null or an object")
        out[key] = item
    return out


def _optional_number(data: dict, name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SchemaError(f"{name} must be a finite number >= 0 or null")
    return value


@dataclass
class HealthMessage(Message):
    """One device's health, every `health_interval_s`; the server stores the latest per device."""

    type_tag: ClassVar[str] = "health"

    device_id: str
    ts_ms: int
    state: DeviceState
    paused: bool = False
    reason: str | None = None  # why the device is degraded
    uptime_s: float | None = None
    windows_emitted: int | None = None
    late_results: int | None = None  # analyses that finished after their window was published
    models: dict[str, Any] = field(default_factory=dict)  # model name -> version
    host: dict[str, Any] | None = None  # CPU load and temperature, memory (device/system_metrics.py)
    vision: dict[str, Any] | None = None  # the vision stage's counters and timings
    audio: dict[str, Any] | None = None  # the audio stage's counters
    mqtt: dict[str, Any] | None = None  # the publisher's counters (device/mqtt/publisher.py: PublisherStats)
    provider_error: str | None = None  # set when the device could not gather its figures

    @classmethod
    def from_dict(cls, data: dict) -> HealthMessage:
        cls._header(data)
        cls._known_fields(data)
        state = check_state(data)
        windows, late = data.get("windows_emitted"), data.get("late_results")
        for name, value in (("windows_emitted", windows), ("late_results", late)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SchemaError(f"{name} must be an integer >= 0 or null")
        error = data.get("provider_error")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_TEXT_CHARS):
            raise SchemaError(f"provider_error must be a string of at most {MAX_TEXT_CHARS} characters or null")
        sections = {name: check_section(data.get(name), name) for name in SECTIONS}
        return cls(
            device_id=check_id(data.get("device_id"), "device_id"),
            ts_ms=check_timestamp(data),
            state=state,
            paused=check_bool(data, "paused", False),
            reason=check_reason(data),
            uptime_s=_optional_number(data, "uptime_s"),
            windows_emitted=windows,
            late_results=late,
            provider_error=error,
            models=sections.pop("models") or {},
            **sections,
        )
