"""EventPublisher: the device's MQTT client, with store-and-forward events, availability, health and commands."""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import ConfigError
from device.events import SCHEMA_VERSION, DeviceState, EmotionEvent, SchemaError, topic
from device.mqtt.config import MqttConfig
from device.mqtt.credentials import install_redaction, redact, resolve_password
from device.mqtt.messages import Command, CommandAck, CommandName, StatusMessage, extract_command_id, short_reason
from device.mqtt.paho_log import paho_logger
from device.offline_queue import OfflineQueue

logger = logging.getLogger(__name__)

CommandCallback = Callable[[Command], None]
HealthProvider = Callable[[], dict[str, Any]]

_SENT = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # NO_CONN: paho keeps QoS 1 and resends
_EXPIRE_EVERY_S = 10.0
_HOLD_S = 30.0
_ACK_CACHE = 128
STOP_JOIN_S = 3.0  # after the drain, most seconds a stop spends joining its threads


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Topics:
    """The topics of one device under `aula/v1/<site>/<room>/<device>/`."""

    events: str
    status: str
    health: str
    cmd: str
    cmd_ack: str

    @classmethod
    def for_device(cls, site: str, room: str, device_id: str) -> Topics:
        return cls(*(topic(site, room, device_id, leaf) for leaf in ("events", "status", "health", "cmd", "cmd/ack")))


@dataclass
class PublisherStats:
    """Counters for the health message; queue numbers are persisted, the rest count since start."""

    connected: bool
    state: str
    paused: bool
    queued: int  # events enqueued since start
    sent: int  # events handed to the network (first sends; paho's resends after a reconnect not counted)
    acked: int  # PUBACKs for events
    rejected: int  # events the broker refused (MQTT 5 reason >= 0x80); kept on disk, re-sent after a restart
    in_flight: int
    backlog: int  # events on disk not yet acknowledged, in flight included
    backlog_bytes: int
    oldest_age_s: float | None
    dropped: int
    dropped_full: int
    dropped_expired: int
    next_seq: int
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
        self.topics = Topics.for_device(config.site, config.room, config.device_id)
        self._password = resolve_password(config, environ)
        if self._password:
            install_redaction(self._password)
        q = config.queue
        self.queue = OfflineQueue(
            q.path, max_rows=q.max_rows, max_bytes=q.max_bytes, max_age_s=q.max_age_s, synchronous=q.synchronous
        )
        self._health_provider = health_provider
        self._command_callback: CommandCallback | None = None
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._stopped = False
        self._wake = threading.Event()
        # mid -> seq of events handed to paho; touched only by the sender thread (and by stop() once it has ended),
        # so a PUBACK that beats the registration of its mid cannot be lost: PUBACKs wait in _puback_in.
        self._inflight: dict[int, int] = {}
        self._puback_in: deque[tuple[int, ReasonCode]] = deque()
        self._last_sent_seq = 0
        self._hold: set[int] = set()
        self._hold_until = 0.0
        self._epoch = 0
        self._seen_epoch = 0
        self._next_slot = 0.0
        self._state = DeviceState.ONLINE
        self._reason: str | None = None
        self._paused = False
        self._commands: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._acks: OrderedDict[str, CommandAck] = OrderedDict()
        self._counts = dict.fromkeys(
            (
                "queued",
                "sent",
                "acked",
                "rejected",
                "connects",
                "connect_failures",
                "commands",
                "commands_invalid",
                "commands_dropped",
                "health_errors",
            ),
            0,
        )
        self._last_error: str | None = None
        self._logged_error: str | None = None
        self._final_stats: PublisherStats | None = None  # what stats() answers once the queue is closed

    # ---- public API ------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def paused(self) -> bool:
        """Privacy pause as last set by a pause or resume command."""
        return self._paused

    def on_command(self, callback: CommandCallback | None) -> None:
        """Handle pause, resume and reload with `callback(command)`; raising makes the ack `ok: false`.

        It runs on a worker thread, never on the network thread, so it may take a while (a reload), but commands
        are handled one at a time. Ping is answered without it.
        """
        self._command_callback = callback

    def start(self) -> None:
        """Start connecting in the background and return at once; events queue on disk until the broker answers."""
        if self._client is not None or self._stopped:
            raise RuntimeError("EventPublisher.start() may be called once")
        cfg = self.config
        address = cfg.address
        self._client = self._build_client()
        kwargs: dict[str, Any] = {"clean_start": True} if cfg.protocol == "5" else {}
        # connect_async does no I/O: a broker that is down or refuses us cannot block start-up.
        self._client.connect_async(address.host, address.port, keepalive=cfg.keepalive, **kwargs)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._worker = threading.Thread(target=self._run_commands, name="mqtt-commands", daemon=True)
        self._sender.start()
        self._worker.start()
        logger.info(
            "MQTT: connecting to %s as %s (MQTT %s), %s events waiting in %s",
            address.url,
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
        stored = self.queue.enqueue(event)
        self._counts["queued"] += 1
        self._wake.set()
        return stored

    def publish_status(self, state: DeviceState | str, reason: str | None = None) -> None:
        """Set the device's state to online or degraded (with a reason); it is retained and re-sent on each connect."""
        state = DeviceState(state)
        if state not in (DeviceState.ONLINE, DeviceState.DEGRADED):
            raise ValueError("publish_status sets online or degraded; stop() sends stopped and the last will offline")
        if state is DeviceState.DEGRADED and not reason:
            raise ValueError("a degraded status needs a reason")
        self._state = state
        self._reason = short_reason(reason) if state is DeviceState.DEGRADED and reason else None
        if self.connected:
            self._send_status(self._state, self._reason)

    def publish_health(self, data: dict[str, Any] | None = None) -> bool:
        """Send one health message now with the caller's fields plus the MQTT counters; False when not sent."""
        if not self.connected:
            return False
        payload = dict(data or {})
        payload.update(
            type="health",
            schema=SCHEMA_VERSION,
            device_id=self.config.device_id,
            ts_ms=now_ms(),
            state=self._state.value,
            paused=self._paused,
            mqtt=self.stats().to_dict(),
        )
        try:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            self._counts["health_errors"] += 1
            logger.warning("health payload is not JSON (%s); not sent", exc)
            return False
        return self._publish(self.topics.health, body, qos=self.config.health_qos) is not None

    def stats(self) -> PublisherStats:
        """Counters for health and tests."""
        if self._final_stats is not None:
            return self._final_stats
        q = self.queue.stats()
        c = self._counts
        return PublisherStats(
            connected=self.connected,
            state=self._state.value,
            paused=self._paused,
            queued=c["queued"],
            sent=c["sent"],
            acked=c["acked"],
            rejected=c["rejected"],
            in_flight=len(self._inflight),
            backlog=q.backlog,
            backlog_bytes=q.bytes,
            oldest_age_s=q.oldest_age_s,
            dropped=q.dropped,
            dropped_full=q.dropped_full,
            dropped_expired=q.dropped_expired,
            next_seq=q.next_seq,
            connects=c["connects"],
            reconnects=max(0, c["connects"] - 1),
            connect_failures=c["connect_failures"],
            last_error=self._last_error,
            commands=c["commands"],
            commands_invalid=c["commands_invalid"],
            commands_dropped=c["commands_dropped"],
            health_errors=c["health_errors"],
        )

    def stop(self, clean: bool = True) -> None:
        """Stop: `clean` waits briefly for in-flight events and publishes `stopped`; otherwise the will (`offline`)."""
        if self._stopped:
            return
        self._stopped = True
        client = self._client
        if client is None:
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
            # on disk for the next start; the sender keeps its pacing and in-flight limit meanwhile.
            while len(self.queue) and self.connected and time.monotonic() < deadline:
                self._wake.set()
                time.sleep(0.02)
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=left(5.0))
        try:
            self._commands.put_nowait(None)
        except queue.Full:
            pass  # the worker is a daemon thread; it ends with the process
        if self.connected and clean:
            # Let in-flight events finish first, so `stopped` is the last thing the server hears.
            while self._inflight and self.connected and time.monotonic() < deadline:
                self._settle_pubacks()
                time.sleep(0.02)
            info = self._send_status(DeviceState.STOPPED, None)
            if info is not None:
                self._wait(info, deadline)
            client.disconnect()
        elif self.connected and self.config.protocol == "5":
            # MQTT 5 lets the client ask the broker to publish its will: the same `offline` a crash would give.
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        elif self.connected:
            info = self._send_status(DeviceState.OFFLINE, None)
            if info is not None:
                self._wait(info, deadline)
            client.disconnect()
        else:
            client.disconnect()  # stops paho's reconnect attempts
        client.loop_stop()
        self._connected.clear()
        self._settle_pubacks()
        if self._worker is not None:
            self._worker.join(timeout=left(2.0))
        stats = self._final_stats = self.stats()
        logger.info(
            "MQTT stopped (%s): %s events sent, %s acked, %s still queued on disk",
            "clean" if clean else "not clean",
            stats.sent,
            stats.acked,
            stats.backlog,
        )
        self.queue.close()

    # ---- paho client and callbacks (network thread) ----------------------------------------------------------

    def _build_client(self) -> mqtt.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.device_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # No broker-side session: a command queued for hours while the device was away must not run late.
            **({} if v5 else {"clean_session": True}),
        )
        client.enable_logger(paho_logger(f"{__name__}.paho"))
        # Room for status, acks and health besides events, so paho never parks an event behind them.
        client.max_inflight_messages_set(cfg.max_inflight + 16)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        if cfg.username:
            client.username_pw_set(cfg.username, self._password)
        if cfg.address.tls:
            tls = cfg.tls
            try:
                client.tls_set(
                    ca_certs=str(tls.ca_file) if tls.ca_file else None,
                    certfile=str(tls.cert_file) if tls.cert_file else None,
                    keyfile=str(tls.key_file) if tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"MQTT TLS files cannot be loaded: {exc}") from None
            client.tls_insecure_set(tls.insecure)
        will = StatusMessage(device_id=cfg.device_id, state=DeviceState.OFFLINE, ts_ms=now_ms())
        client.will_set(self.topics.status, will.to_payload(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _note_error(self, message: str) -> None:
        self._last_error = message
        # Log each new kind of failure once at warning; repeats every backoff period would flood the journal.
        if message != self._logged_error:
            logger.warning("MQTT: %s; retrying with backoff, events stay queued on disk", message)
            self._logged_error = message
        else:
            logger.debug("MQTT: %s", message)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        try:
            if reason.is_failure:
                self._counts["connect_failures"] += 1
                self._note_error(f"broker {self.config.address.url} refused the connection: {reason}")
                return
            self._counts["connects"] += 1
            self._last_error = self._logged_error = None
            client.subscribe(self.topics.cmd, qos=1)
            self._send_status(DeviceState.ONLINE, None)
            if self._state is DeviceState.DEGRADED:
                self._send_status(self._state, self._reason)
            self._epoch += 1
            self._connected.set()
            self._wake.set()
            logger.info("MQTT: connected to %s (connect #%s)", self.config.address.url, self._counts["connects"])
        except Exception:
            logger.exception("MQTT: on_connect failed")

    def _on_connect_fail(self, client, userdata) -> None:
        self._counts["connect_failures"] += 1
        self._note_error(f"broker {self.config.address.url} is unreachable")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stopping.is_set():
            self._note_error(f"lost the connection to {self.config.address.url} ({reason})")

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        # Runs with paho's message lock held: only hand the PUBACK over; the sender thread does the rest.
        self._puback_in.append((mid, reason))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        if message.topic != self.topics.cmd:
            return
        try:
            self._commands.put_nowait(bytes(message.payload))
        except queue.Full:
            self._counts["commands_dropped"] += 1
            logger.warning("MQTT: command queue full; dropped a command")

    # ---- sending (sender thread) ----------------------------------------------------------------------------

    def _publish(self, topic_: str, payload: bytes, qos: int, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        client = self._client
        if client is None:
            return None
        info = client.publish(topic_, payload, qos=qos, retain=retain)
        if info.rc not in _SENT or (qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS):
            logger.debug("MQTT: publish to %s not sent (%s)", topic_, mqtt.error_string(info.rc))
            return None
        return info

    def _send_status(self, state: DeviceState, reason: str | None) -> mqtt.MQTTMessageInfo | None:
        message = StatusMessage(
            device_id=self.config.device_id, state=state, ts_ms=now_ms(), reason=reason, paused=self._paused
        )
        return self._publish(self.topics.status, message.to_payload(), qos=1, retain=True)

    def _wait(self, info: mqtt.MQTTMessageInfo, deadline: float) -> None:
        try:
            info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            pass  # the connection went away; the broker keeps the last will or the previous status

    def _run_sender(self) -> None:
        interval = self.config.health_interval_s
        next_health = time.monotonic() + interval
        next_expire = time.monotonic() + _EXPIRE_EVERY_S
        while not self._stopping.is_set():
            self._wake.wait(timeout=max(0.0, min(1.0, next_health - time.monotonic(), next_expire - time.monotonic())))
            self._wake.clear()
            try:
                self._settle_pubacks()
                now = time.monotonic()
                if now >= next_expire:
                    next_expire = now + _EXPIRE_EVERY_S
                    self.queue.expire()
                if now >= next_health:
                    next_health = now + interval
                    self._periodic_health()
                self._drain()
            except Exception:
                # A full disk or a bug must not end the thread: the queue is still on disk, try again shortly.
                logger.exception("MQTT sender failed; retrying")
                self._stopping.wait(1.0)

    def _periodic_health(self) -> None:
        if not self.connected:
            return
        data: dict[str, Any] = {}
        if self._health_provider is not None:
            try:
                data = dict(self._health_provider())
            except Exception as exc:
                self._counts["health_errors"] += 1
                logger.warning("health provider failed: %s", exc)
                data = {"provider_error": short_reason(f"{type(exc).__name__}: {exc}")}
        self.publish_health(data)

    def _settle_pubacks(self) -> None:
        while self._puback_in:
            mid, reason = self._puback_in.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # a status, ack or health message
            self._hold.discard(seq)
            if reason.is_failure:
                # Kept on disk: a broker that refuses (ACL, quota) is a setup problem; re-sent after a restart.
                self._counts["rejected"] += 1
                self._last_error = f"broker refused event seq {seq}: {reason}"
                logger.warning("MQTT: broker refused event seq %s (%s); it stays queued", seq, reason)
                continue
            self._counts["acked"] += 1
            self.queue.ack(seq)

    def _pace(self) -> bool:
        """Wait for the next send slot of the drain rate; False when stopping."""
        delay = self._next_slot - time.monotonic()
        if delay > 0 and self._stopping.wait(delay):
            return False
        self._next_slot = max(self._next_slot, time.monotonic()) + 1.0 / self.config.drain_rate
        return True

    def _held(self) -> bool:
        """After a reconnect paho re-sends what was in flight; hold new events until those are acknowledged.

        paho re-sends them after on_connect returns, so an event sent from here at once could overtake them.
        """
        if self._seen_epoch != self._epoch:
            self._seen_epoch = self._epoch
            self._hold = set(self._inflight.values())
            self._hold_until = time.monotonic() + _HOLD_S
        if self._hold and time.monotonic() > self._hold_until:
            logger.warning("MQTT: %s re-sent events unacknowledged after %ss; going on", len(self._hold), _HOLD_S)
            self._hold.clear()
        return bool(self._hold)

    def _drain(self) -> None:
        cfg = self.config
        while self.connected and not self._stopping.is_set():
            self._settle_pubacks()
            if self._held():
                return
            room = cfg.max_inflight - len(self._inflight)
            if room <= 0:
                return  # a PUBACK wakes us
            rows = self.queue.peek(self._last_sent_seq, room)
            if not rows:
                return
            for row in rows:
                if not self._pace() or not self.connected:
                    return
                info = self._publish(self.topics.events, row.payload, qos=1)
                if info is None:
                    return
                self._inflight[info.mid] = row.seq
                self._last_sent_seq = row.seq
                self._counts["sent"] += 1

    # ---- commands (worker thread) ---------------------------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            payload = self._commands.get()
            if payload is None:
                return
            try:
                self._handle_command(payload)
            except Exception:
                logger.exception("MQTT: command handling failed")

    def _send_ack(self, ack: CommandAck) -> None:
        self._publish(self.topics.cmd_ack, ack.to_payload(), qos=1)

    def _ack(self, command_id: str, command: str | None, ok: bool, reason: str | None = None) -> CommandAck:
        if reason:
            reason = short_reason(redact(reason, [self._password] if self._password else []))
        return CommandAck(
            id=command_id,
            device_id=self.config.device_id,
            ok=ok,
            ts_ms=now_ms(),
            command=command,
            reason=reason,
            paused=self._paused,
        )

    def _handle_command(self, payload: bytes) -> None:
        self._counts["commands"] += 1
        try:
            command = Command.from_payload(payload)
        except SchemaError as exc:
            self._counts["commands_invalid"] += 1
            command_id = extract_command_id(payload)
            logger.warning("MQTT: malformed command (%s), id %s, payload %r", exc, command_id, payload[:80])
            if command_id is not None:
                self._send_ack(self._ack(command_id, None, False, f"malformed command: {exc}"))
            return
        cached = self._acks.get(command.id)
        if cached is not None:
            # A QoS 1 redelivery: answer again, do not act twice.
            self._send_ack(cached)
            return
        ack = self._execute(command)
        self._acks[command.id] = ack
        while len(self._acks) > _ACK_CACHE:
            self._acks.popitem(last=False)
        self._send_ack(ack)

    def _execute(self, command: Command) -> CommandAck:
        name = command.command
        if name is CommandName.PING:
            return self._ack(command.id, name.value, True)
        callback = self._command_callback
        if callback is None:
            return self._ack(command.id, name.value, False, f"no handler for {name.value} on this device")
        try:
            callback(command)
        except Exception as exc:
            logger.warning("MQTT: command %s (%s) failed: %s", name.value, command.id, exc)
            return self._ack(command.id, name.value, False, f"{type(exc).__name__}: {exc}")
        if name in (CommandName.PAUSE, CommandName.RESUME):
            self._paused = name is CommandName.PAUSE
            logger.info("MQTT: sensing %s by command %s", "paused" if self._paused else "resumed", command.id)
            if self.connected:
                # The retained status carries the pause, so a dashboard that opens later sees it.
                self._send_status(self._state, self._reason)
        return self._ack(command.id, name.value, True)
