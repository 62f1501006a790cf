"""The device's broker connection: the paho client, its last will, reconnects and the retained status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from device.common.paho_client import bind_callbacks, new_client
from device.contract import DeviceState, DeviceTopics, StatusMessage, short_reason
from device.mqtt.config import MqttConfig

logger = logging.getLogger(__name__)

_SENT = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # NO_CONN: paho keeps QoS 1 and resends


def now_ms() -> int:
    return int(time.time() * 1000)


class DeviceConnection:
    """One paho client for one device: `online` on every connect, `offline` as the will, `stopped` on a clean stop.

    What arrives is handed on at once: PUBACKs to `on_puback(mid, reason)` (paho holds its message lock meanwhile),
    commands to `on_command_payload(bytes)`, and each new connection to `on_connected()`.
    """

    def __init__(
        self,
        config: MqttConfig,
        topics: DeviceTopics,
        password: str | None,
        *,
        on_puback: Callable[[int, ReasonCode], None],
        on_command_payload: Callable[[bytes], None],
        on_connected: Callable[[], None],
    ):
        self.config = config
        self.topics = topics
        self._password = password
        self._on_puback = on_puback
        self._on_command_payload = on_command_payload
        self._on_connected = on_connected
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.stopping = threading.Event()
        self.state = DeviceState.ONLINE
        self.reason: str | None = None
        self.paused = False
        self.epoch = 0  # bumped per connection
        self.connects = 0
        self.connect_failures = 0
        self.last_error: str | None = None
        self._logged_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def started(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        """Start connecting in the background and return at once."""
        cfg = self.config
        self._client = self._build_client()
        kwargs: dict[str, Any] = {"clean_start": True} if cfg.protocol == "5" else {}
        # connect_async does no I/O: a broker that is down or refuses us cannot block start-up.
        self._client.connect_async(cfg.address.host, cfg.address.port, keepalive=cfg.keepalive, **kwargs)
        self._client.loop_start()

    def set_status(self, state: DeviceState, reason: str | None) -> None:
        """Set online or degraded (with a reason); retained, and re-sent on each connect."""
        self.state = state
        self.reason = short_reason(reason) if state is DeviceState.DEGRADED and reason else None
        if self.connected:
            self.send_status(self.state, self.reason)

    def set_paused(self, paused: bool) -> None:
        """Record the privacy pause; the retained status carries it, so a dashboard that opens later sees it."""
        self.paused = paused
        if self.connected:
            self.send_status(self.state, self.reason)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """Hand a message to paho; None when it was not taken."""
        client = self._client
        if client is None:
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in _SENT or (qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS):
            logger.debug("MQTT: publish to %s not sent (%s)", topic, mqtt.error_string(info.rc))
            return None
        return info

    def send_status(self, state: DeviceState, reason: str | None) -> mqtt.MQTTMessageInfo | None:
        message = StatusMessage(
            device_id=self.config.device_id, state=state, ts_ms=now_ms(), reason=reason, paused=self.paused
        )
        return self.publish(self.topics.status, message.to_payload(), qos=1, retain=True)

    def close(self, clean: bool, deadline: float) -> None:
        """Say goodbye: `stopped` when clean, else the will (`offline`); then disconnect and end paho's thread."""
        client = self._client
        if client is None:
            return
        if self.connected and clean:
            info = self.send_status(DeviceState.STOPPED, None)
            if info is not None:
                _wait(info, deadline)
            client.disconnect()
        elif self.connected and self.config.protocol == "5":
            # MQTT 5 lets the client ask the broker to publish its will: the same `offline` a crash would give.
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        elif self.connected:
            info = self.send_status(DeviceState.OFFLINE, None)
            if info is not None:
                _wait(info, deadline)
            client.disconnect()
        else:
            client.disconnect()  # stops paho's reconnect attempts
        client.loop_stop()
        self._connected.clear()

    # ---- paho client and callbacks (network thread) ----------------------------------------------------------

    def _build_client(self) -> mqtt.Client:
        cfg = self.config
        # No broker-side session: a command queued for hours while the device was away must not run late.
        client = new_client(cfg, cfg.device_id, clean=True, password=self._password, log_name=f"{__name__}.paho")
        # Room for status, acks and health besides events, so paho never parks an event behind them.
        client.max_inflight_messages_set(cfg.max_inflight + 16)
        will = StatusMessage(device_id=cfg.device_id, state=DeviceState.OFFLINE, ts_ms=now_ms())
        client.will_set(self.topics.status, will.to_payload(), qos=1, retain=True)
        bind_callbacks(client, self, "connect", "connect_fail", "disconnect", "publish", "message")
        return client

    def note_error(self, message: str) -> None:
        self.last_error = message
        # Log each new kind of failure once at warning; repeats every backoff period would flood the journal.
        if message != self._logged_error:
            logger.warning("MQTT: %s; retrying with backoff, events stay queued on disk", message)
            self._logged_error = message
        else:
            logger.debug("MQTT: %s", message)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        try:
            if reason.is_failure:
                self.connect_failures += 1
                self.note_error(f"broker {self.config.address.url} refused the connection: {reason}")
                return
            self.connects += 1
            self.last_error = self._logged_error = None
            client.subscribe(self.topics.cmd, qos=1)
            self.send_status(DeviceState.ONLINE, None)
            if self.state is DeviceState.DEGRADED:
                self.send_status(self.state, self.reason)
            self.epoch += 1
            self._connected.set()
            self._on_connected()
            logger.info("MQTT: connected to %s (connect #%s)", self.config.address.url, self.connects)
        except Exception:
            logger.exception("MQTT: on_connect failed")

    def _on_connect_fail(self, client, userdata) -> None:
        self.connect_failures += 1
        self.note_error(f"broker {self.config.address.url} is unreachable")

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self.stopping.is_set():
            self.note_error(f"lost the connection to {self.config.address.url} ({reason})")

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self._on_puback(mid, reason)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self.topics.cmd:
            self._on_command_payload(bytes(message.payload))


def _wait(info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    try:
        info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
    except (RuntimeError, ValueError):
        pass  # the connection went away; the broker keeps the last will or the previous status
