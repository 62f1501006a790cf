"""EventPublisher: the device's MQTT client, made of a connection, a store-and-forward sender, commands and health."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from device.common.credentials import install_redaction, resolve_password
from device.contract import DeviceState, DeviceTopics, EmotionEvent
from device.mqtt.commands import CommandCallback, CommandWorker
from device.mqtt.config import MqttConfig
from device.mqtt.connection import DeviceConnection
from device.mqtt.health import HealthProvider, HealthReporter
from device.mqtt.sender import EventSender

logger = logging.getLogger(__name__)

STOP_JOIN_S = 3.0  # after the drain, most seconds a stop spends joining its threads


@dataclass
class PublisherStats:
    """Counters for the health message (its `mqtt` section); queue numbers are persisted, the rest count since start."""

    connected: bool
    state: str
    paused: bool
    queued: int  # events enqueued since start
    sent: int  # events handed to the network (first sends; paho's resends after a reconnect not counted)
    acked: int  # PUBACKs for events
    rejected: int  # refusals by the broker (MQTT 5 reason >= 0x80); the event stays on disk and is sent again later
    in_flight: int
    backlog: int  # events on disk not yet acknowledged, in flight included
    backlog_bytes: int
    oldest_age_s: float | None
    dropped: int
    dropped_full: int
    dropped_expired: int
    next_seq: int
    queue_fault: str | None  # why the offline queue cannot use its file (disk full, read-only, locked, corrupt)
    queue_in_memory: int  # events held in memory (and published directly) while the queue has a fault
    connects: int
    reconnects: int
    connect_failures: int
    last_error: str | None
    commands: int
    commands_invalid: int
    commands_dropped: int
    health_errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventPublisher:
    """Publishes events (queued on disk first), status, health and command acks for one device."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        health_provider: HealthProvider | None = None,
        environ: dict[str, str] | None = None,
    ):
        self.config = config
        self.topics = DeviceTopics.for_device(config.site, config.room, config.device_id)
        password = resolve_password(config, environ)
        if password:
            install_redaction(password)
        self.connection = DeviceConnection(
            config,
            self.topics,
            password,
            on_puback=lambda mid, reason: self.sender.on_puback(mid, reason),
            on_command_payload=lambda payload: self.commands.submit(payload),
            on_connected=lambda: self.sender.wake.set(),
        )
        self.health = HealthReporter(
            self.connection, health_provider, lambda: self.stats().to_dict(), config.health_interval_s,
            config.health_qos,
        )
        self.sender = EventSender(config, self.connection, self.health.tick)
        self.commands = CommandWorker(self.connection, [password] if password else [])
        self.queue = self.sender.queue
        self._stopped = False
        self._final_stats: PublisherStats | None = None  # what stats() answers once the queue is closed

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def fault(self) -> str | None:
        """Why the device should report itself degraded from here (the offline queue's fault), or None."""
        fault = self.queue.fault
        return None if fault is None else f"offline queue: {fault.value}"

    @property
    def paused(self) -> bool:
        """Privacy pause as last set by a pause or resume command."""
        return self.connection.paused

    def on_command(self, callback: CommandCallback | None) -> None:
        """Handle pause, resume and reload with `callback(command)`; raising makes the ack `ok: false`.

        It runs on a worker thread, never on the network thread, so it may take a while (a reload), but commands
        are handled one at a time. Ping is answered without it.
        """
        self.commands.callback = callback

    def start(self) -> None:
        """Start connecting in the background and return at once; events queue on disk until the broker answers."""
        if self.connection.started or self._stopped:
            raise RuntimeError("EventPublisher.start() may be called once")
        self.connection.start()
        self.sender.start()
        self.commands.start()
        cfg = self.config
        logger.info(
            "MQTT: connecting to %s as %s (MQTT %s), %s events waiting in %s",
            cfg.address.url,
            cfg.device_id,
            cfg.protocol,
            len(self.queue),
            self.queue.path,
        )

    def publish_event(self, event: EmotionEvent) -> EmotionEvent:
        """Store the event durably with the next seq, then send it when connected; returns the stored copy."""
        cfg = self.config
        if self._stopped:
            raise RuntimeError("the publisher is stopped; events can no longer be queued")
        if (event.device_id, event.site, event.room) != (cfg.device_id, cfg.site, cfg.room):
            raise ValueError(
                f"event is for {event.site}/{event.room}/{event.device_id}, "
                f"this publisher is {cfg.site}/{cfg.room}/{cfg.device_id}"
            )
        # Refuse now what the server would reject later, rather than keep it on disk and re-send it forever.
        EmotionEvent.from_payload(event.to_payload())
        return self.sender.enqueue(event)

    def publish_status(self, state: DeviceState | str, reason: str | None = None) -> None:
        """Set the device's state to online or degraded (with a reason); it is retained and re-sent on each connect."""
        state = DeviceState(state)
        if state not in (DeviceState.ONLINE, DeviceState.DEGRADED):
            raise ValueError("publish_status sets online or degraded; stop() sends stopped and the last will offline")
        if state is DeviceState.DEGRADED and not reason:
            raise ValueError("a degraded status needs a reason")
        self.connection.set_status(state, reason)

    def publish_health(self, data: dict[str, Any] | None = None) -> bool:
        """Send one health message now with the caller's fields plus the MQTT counters; False when not sent."""
        return self.health.publish(data)

    def stats(self) -> PublisherStats:
        """Counters for health and tests."""
        if self._final_stats is not None:
            return self._final_stats
        q = self.queue.stats()
        conn, sender, commands = self.connection, self.sender, self.commands
        return PublisherStats(
            connected=conn.connected,
            state=conn.state.value,
            paused=conn.paused,
            queued=sender.queued,
            sent=sender.sent,
            acked=sender.acked,
            rejected=sender.rejected,
            in_flight=len(sender.inflight),
            backlog=q.backlog,
            backlog_bytes=q.bytes,
            oldest_age_s=q.oldest_age_s,
            dropped=q.dropped,
            dropped_full=q.dropped_full,
            dropped_expired=q.dropped_expired,
            next_seq=q.next_seq,
            queue_fault=q.fault,
            queue_in_memory=q.in_memory,
            connects=conn.connects,
            reconnects=max(0, conn.connects - 1),
            connect_failures=conn.connect_failures,
            last_error=conn.last_error,
            commands=commands.received,
            commands_invalid=commands.invalid,
            commands_dropped=commands.dropped,
            health_errors=self.health.errors,
        )

    def stop(self, clean: bool = True) -> None:
        """Stop: `clean` waits briefly for in-flight events and publishes `stopped`; otherwise the will (`offline`)."""
        if self._stopped:
            return
        self._stopped = True
        if not self.connection.started:
            self._final_stats = self.stats()
            self.queue.close()
            return
        deadline = time.monotonic() + self.config.stop_timeout_s
        # One bound for the whole stop: the drain and in-flight waits get stop_timeout_s, the thread joins
        # what is left of STOP_JOIN_S after it, so the service stops inside systemd's TimeoutStopSec.
        end = deadline + STOP_JOIN_S

        def left(most: float) -> float:
            return max(0.05, min(most, end - time.monotonic()))

        if clean:
            # A clean stop (SIGTERM, systemctl stop) first sends what is queued, so the last windows do not wait
            # on disk for the next start.
            self.sender.flush_for_stop(deadline)
        self.connection.stopping.set()
        self.sender.join(timeout=left(5.0))
        self.commands.stop()
        if clean:
            self.sender.settle_inflight(deadline)
        self.connection.close(clean, deadline)
        self.sender.settle_pubacks()
        self.commands.join(timeout=left(2.0))
        stats = self._final_stats = self.stats()
        logger.info(
            "MQTT stopped (%s): %s events sent, %s acked, %s still queued on disk",
            "clean" if clean else "not clean",
            stats.sent,
            stats.acked,
            stats.backlog,
        )
        self.queue.close()
