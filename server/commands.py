"""Commands from the dashboard to a room's devices: the privacy pause and resume, over MQTT.

The server's account is the only one the broker lets publish on `cmd` (docs/fleet.md), and the dashboard lets
a teacher command only the rooms they may see. So a pause set over MQTT can be lifted only from the room's
own page; one set in a device's config cannot be lifted over MQTT at all (the device refuses the resume).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from device.contract import Command, CommandName, topic
from device.contract.topics import CMD


@dataclass(frozen=True)
class Sent:
    """One command handed to the broker (or not: the device then shows as not reached)."""

    device_id: str
    id: str
    sent: bool

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "id": self.id, "sent": self.sent}


def send_to_room(devices: list[dict[str, Any]], name: CommandName, publish) -> list[Sent]:
    """Send `name` to each device (QoS 1, never retained: a stale pause must not fire on a later reconnect).

    `devices` are rows of the devices table; the command goes to the topic under the room the device itself
    reports, which is where it subscribes. `publish(topic, payload) -> bool` hands a message to the broker.
    """
    out = []
    for d in devices:
        command = Command(id=f"c-{uuid.uuid4().hex[:16]}", command=name)
        ok = publish(topic(d["site"], d["reported_room"], d["device_id"], CMD), command.to_payload())
        out.append(Sent(d["device_id"], command.id, bool(ok)))
    return out
