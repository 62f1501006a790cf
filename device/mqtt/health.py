"""The periodic health message: the service's figures and the publisher's counters, as one HealthMessage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from device.contract import SCHEMA_VERSION, HealthMessage, SchemaError, short_reason
from device.mqtt.connection import DeviceConnection, now_ms

logger = logging.getLogger(__name__)

HealthProvider = Callable[[], dict[str, Any]]


class HealthReporter:
    """Builds a health message from `provider()` (the service's sections) and `mqtt_stats()`, and sends it."""

    def __init__(
        self,
        connection: DeviceConnection,
        provider: HealthProvider | None,
        mqtt_stats: Callable[[], dict[str, Any]],
        interval_s: float,
        qos: int,
    ):
        self.connection = connection
        self.provider = provider
        self.mqtt_stats = mqtt_stats
        self.interval_s = interval_s
        self.qos = qos
        self.errors = 0
        self._next = time.monotonic() + interval_s
        self._last_ts_ms = 0
        self._ts_lock = threading.Lock()  # the sender thread's periodic messages and publish() from any thread

    def _ts_ms(self) -> int:
        """Now, but later than the last message's: a message's ts_ms identifies it, and the server takes a ts_ms
        it already holds for a redelivery (server/fleet.py). Two messages in one millisecond (the periodic one and
        a publish() beside it) would otherwise share one, and the second would be dropped from the trend."""
        with self._ts_lock:
            self._last_ts_ms = max(now_ms(), self._last_ts_ms + 1)
            return self._last_ts_ms

    def message(self, data: dict[str, Any] | None = None) -> HealthMessage:
        """The message for `data` (the provider's fields); raises SchemaError when a field does not fit the schema."""
        conn = self.connection
        fields = dict(data or {})
        fields.update(
            type=HealthMessage.type_tag,
            schema=SCHEMA_VERSION,
            device_id=conn.config.device_id,
            ts_ms=self._ts_ms(),
            state=conn.state.value,
            paused=conn.paused,
            mqtt=self.mqtt_stats(),
        )
        return HealthMessage.from_dict(fields)

    def publish(self, data: dict[str, Any] | None = None) -> bool:
        """Send one health message now; False when not connected or when the figures do not fit the schema."""
        if not self.connection.connected:
            return False
        try:
            body = self.message(data).to_payload()
        except (SchemaError, TypeError, ValueError) as exc:
            self.errors += 1
            logger.warning("health message does not fit the schema (%s); not sent", exc)
            return False
        return self.connection.publish(self.connection.topics.health, body, qos=self.qos) is not None

    def tick(self) -> float:
        """Send the periodic message when it is due (called from the sender thread); seconds until the next."""
        now = time.monotonic()
        if now < self._next:
            return self._next - now
        self._next = now + self.interval_s
        if not self.connection.connected:
            return self.interval_s
        data: dict[str, Any] = {}
        if self.provider is not None:
            try:
                data = dict(self.provider())
            except Exception as exc:
                self.errors += 1
                logger.warning("health provider failed: %s", exc)
                data = {"provider_error": short_reason(f"{type(exc).__name__}: {exc}")}
        self.publish(data)
        return self.interval_s
