"""The device's MQTT settings: identity, the offline queue, pacing and health, on top of the broker connection."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from device.common.broker_settings import BrokerConnection
from device.common.config_loader import StrictModel


def _check_topic_level(value: str, name: str) -> str:
    if not value or len(value) > 64 or any(c in value for c in "/+#") or not value.isprintable():
        raise ValueError(f"{name} must be 1-64 printable characters without '/', '+' or '#' (it is a topic level)")
    return value


class QueueConfig(StrictModel):
    """The on-disk store-and-forward queue of events."""

    path: Path = Field(
        Path("/var/lib/aula/mqtt-queue.sqlite3"),
        description="SQLite file of events not yet acknowledged by the broker (systemd StateDirectory=aula).",
    )
    max_rows: int = Field(100_000, ge=1, description="Most events kept; beyond it the oldest are dropped and counted.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Most payload bytes kept; beyond it the oldest events are dropped and counted.",
    )
    max_age_s: float = Field(
        3 * 24 * 3600.0, gt=0,
        description="Events older than this (seconds, counted on the monotonic clock) are dropped and counted.",
    )
    synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite synchronous mode for enqueues: full survives power cuts, normal only process crashes.",
    )


class MqttConfig(BrokerConnection):
    """How the device reaches the broker and what it publishes where."""

    site: str = Field(..., description="Site (school) id; the second topic level under aula/v1.")
    room: str = Field(..., description="Room id; a topic level.")
    device_id: str = Field(..., description="Device id; a topic level and the MQTT client id.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Store-and-forward queue of events.")
    drain_rate: float = Field(
        50.0, gt=0, le=10_000, description="Most events sent per second, so a backlog does not flood the server."
    )
    max_inflight: int = Field(
        20, ge=1, le=1000, description="Most events sent and not yet acknowledged; more waits in the queue."
    )
    refused_retry_s: float = Field(
        30.0, gt=0, le=3600,
        description="An event the broker refused (an ACL or quota not yet fixed) stays queued and is sent again after "
        "this long, doubling up to ten times as long while it keeps being refused.",
    )
    health_interval_s: float = Field(30.0, ge=1, le=3600, description="Seconds between health messages (1 to 3600).")
    health_qos: Literal[0, 1] = Field(0, description="QoS of health messages; they are never queued while offline.")
    stop_timeout_s: float = Field(
        2.0, ge=0, le=60, description="On a clean stop, seconds to wait for in-flight events before disconnecting."
    )

    @field_validator("site", "room", "device_id")
    @classmethod
    def _topic_level(cls, value: str, info) -> str:
        return _check_topic_level(value, info.field_name)
