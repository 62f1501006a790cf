"""Typed status, command and command-ack messages on `.../status`, `.../cmd` and `.../cmd/ack`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from device.contract.schema import (
    Message,
    SchemaError,
    check_bool,
    check_reason,
    check_timestamp,
    decode_json,
)


class DeviceState(str, Enum):
    """Values of the retained status topic."""

    ONLINE = "online"
    OFFLINE = "offline"
    STOPPED = "stopped"
    DEGRADED = "degraded"


def check_state(data: dict) -> DeviceState:
    try:
        return DeviceState(data.get("state"))
    except ValueError:
        raise SchemaError(f"state must be one of {', '.join(s.value for s in DeviceState)}") from None


def _id(data: dict, name: str, max_len: int = 64) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= max_len or not value.isprintable():
        raise SchemaError(f"{name} must be a string of 1-{max_len} printable characters")
    return value


class CommandName(str, Enum):
    """Commands the server may send on `.../cmd`."""

    PAUSE = "pause"  # privacy: stop sensing until resume
    RESUME = "resume"
    RELOAD = "reload"  # re-read the config file
    PING = "ping"


@dataclass
class StatusMessage(Message):
    """The retained availability of a device on `.../status`."""

    type_tag: ClassVar[str] = "status"

    device_id: str
    state: DeviceState
    ts_ms: int
    reason: str | None = None
    paused: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> StatusMessage:
        cls._header(data)
        cls._known_fields(data)
        state = check_state(data)
        reason = check_reason(data)
        if state is DeviceState.DEGRADED and not reason:
            raise SchemaError("a degraded status needs a reason")
        return cls(
            device_id=_id(data, "device_id"),
            state=state,
            ts_ms=check_timestamp(data),
            reason=reason,
            paused=check_bool(data, "paused", False),
        )


@dataclass
class Command(Message):
    """A command from the server on `.../cmd`; `id` correlates it with its ack."""

    type_tag: ClassVar[str] = "command"

    id: str
    command: CommandName

    @classmethod
    def from_dict(cls, data: dict) -> Command:
        cls._header(data)
        cls._known_fields(data)
        command_id = _id(data, "id")
        try:
            name = CommandName(data.get("command"))
        except ValueError:
            raise SchemaError(
                f"command must be one of {', '.join(c.value for c in CommandName)}, got {data.get('command')!r}"
            ) from None
        return cls(id=command_id, command=name)


def extract_command_id(payload: bytes | str) -> str | None:
    """Return the `id` of a command payload that failed validation, when it has a usable one, so it can be acked."""
    try:
        return _id(decode_json(payload), "id")
    except SchemaError:
        return None


@dataclass
class CommandAck(Message):
    """The device's answer to a command on `.../cmd/ack`; `ok: false` carries the reason."""

    type_tag: ClassVar[str] = "command_ack"

    id: str
    device_id: str
    ok: bool
    ts_ms: int
    command: str | None = None  # None when the command could not be read
    reason: str | None = None
    paused: bool = False  # the privacy state after the command

    @classmethod
    def from_dict(cls, data: dict) -> CommandAck:
        cls._header(data)
        cls._known_fields(data)
        if "ok" not in data:
            raise SchemaError("missing field ok")
        ok = check_bool(data, "ok", False)
        command = data.get("command")
        if command is not None and command not in {c.value for c in CommandName}:
            raise SchemaError(f"command must be a known command or null, got {command!r}")
        reason = check_reason(data)
        if not ok and not reason:
            raise SchemaError("a failed ack needs a reason")
        return cls(
            id=_id(data, "id"),
            device_id=_id(data, "device_id"),
            ok=ok,
            ts_ms=check_timestamp(data),
            command=command,
            reason=reason,
            paused=check_bool(data, "paused", False),
        )
