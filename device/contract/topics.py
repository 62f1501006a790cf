"""MQTT topic names and subscription wildcards: `aula/v1/<site>/<room>/<device>/<leaf>` and the room summaries."""

from __future__ import annotations

from dataclasses import dataclass

TOPIC_ROOT = "aula/v1"

# The leaves of one device's topics.
EVENTS = "events"
STATUS = "status"
HEALTH = "health"
CMD = "cmd"
CMD_ACK = "cmd/ack"
DEVICE_LEAVES = (EVENTS, STATUS, HEALTH)  # what devices publish and the server ingests

SUMMARY = "summary"

# Wildcards over every device.
ALL_EVENTS = f"{TOPIC_ROOT}/+/+/+/{EVENTS}"
ALL_STATUS = f"{TOPIC_ROOT}/+/+/+/{STATUS}"
ALL_HEALTH = f"{TOPIC_ROOT}/+/+/+/{HEALTH}"
ALL_SUMMARIES = f"{TOPIC_ROOT}/+/+/{SUMMARY}"
ALL_ACKS = f"{TOPIC_ROOT}/+/+/+/{CMD_ACK}"

_WILDCARDS = frozenset("+#")


def topic(site: str, room: str, device: str, leaf: str) -> str:
    """Return `aula/v1/<site>/<room>/<device>/<leaf>`."""
    return f"{TOPIC_ROOT}/{site}/{room}/{device}/{leaf}"


def alerts_topic(site: str) -> str:
    """Return `aula/v1/<site>/alerts`, the retained alerts of one site (empty payload: none)."""
    return f"{TOPIC_ROOT}/{site}/alerts"


def summary_topic(site: str, room: str) -> str:
    """Return `aula/v1/<site>/<room>/summary`, the retained summary of one room."""
    return f"{TOPIC_ROOT}/{site}/{room}/{SUMMARY}"


@dataclass(frozen=True)
class DeviceTopics:
    """The topics of one device under `aula/v1/<site>/<room>/<device>/`."""

    events: str
    status: str
    health: str
    cmd: str
    cmd_ack: str

    @classmethod
    def for_device(cls, site: str, room: str, device_id: str) -> DeviceTopics:
        return cls(*(topic(site, room, device_id, leaf) for leaf in (EVENTS, STATUS, HEALTH, CMD, CMD_ACK)))


def parse_ack_topic(name: str) -> tuple[str, str, str] | None:
    """Split a device's `.../cmd/ack` topic into (site, room, device); None when it is not one."""
    parts = name.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or f"{parts[5]}/{parts[6]}" != CMD_ACK:
        return None
    site, room, device = parts[2:5]
    if not (_level(site) and _level(room) and _level(device)):
        return None
    return site, room, device


def _level(value: str) -> bool:
    return 0 < len(value) <= 64 and value.isprintable() and _WILDCARDS.isdisjoint(value)


def parse_device_topic(name: str) -> tuple[str, str, str, str] | None:
    """Split a device's publishing topic into (site, room, device, leaf); None when it is not one."""
    parts = name.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[5] not in DEVICE_LEAVES:
        return None
    site, room, device, leaf = parts[2:]
    if not (_level(site) and _level(room) and _level(device)):
        return None
    return site, room, device, leaf
