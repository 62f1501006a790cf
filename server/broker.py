"""The server's MQTT connection: persistent session, subscriptions, manual acknowledgements, reconnects."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.common.credentials import install_redaction, resolve_password
from device.common.paho_client import bind_callbacks, new_client
from device.contract import MAX_PAYLOAD_BYTES
from device.contract.topics import ALL_ACKS, ALL_EVENTS, ALL_HEALTH, ALL_STATUS
from server.config import ServerMqttConfig
from server.mqtt_transport import IntakeClient

logger = logging.getLogger(__name__)

MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 1024  # room for the fixed header, the topic (<= 6 levels of 64) and properties

# handler(topic, payload, retained, ack_token or None)
MessageHandler = Callable[[str, bytes, bool, tuple | None], None]


def subscriptions(config: ServerMqttConfig) -> list[tuple[str, int]]:
    """Topics of the storing client; events and health are shared when a group is set, status never is."""
    share = f"$share/{config.shared_group}/" if config.shared_group else ""
    # Status is retained, and brokers do not send retained messages to shared subscriptions. Command acks go to
    # every instance: the one whose teacher sent the command shows the answer.
    return [(share + ALL_EVENTS, 1), (share + ALL_HEALTH, 1), (ALL_STATUS, 1), (ALL_ACKS, 1)]


class BrokerClient:
    """One paho client on its own network thread; `start` returns at once and reconnects run in the background."""

    def __init__(
        self,
        config: ServerMqttConfig,
        handler: MessageHandler,
        topics: list[tuple[str, int]],
        client_id: str | None = None,
        persistent: bool | None = None,
        manual_ack: bool | None = None,
    ):
        self.config = config
        self.handler = handler
        self.topics = topics
        self.client_id = client_id or config.client_id
        self.persistent = config.persistent_session if persistent is None else persistent
        self.manual_ack = config.ack_after_commit if manual_ack is None else manual_ack
        self._password = resolve_password(config)
        if self._password:
            install_redaction(self._password)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._generation = 0  # bumped per connection: an ack from an older connection is not sent on a new one
        self._lock = threading.Lock()
        self.connects = 0
        self.last_error: str | None = None
        self._client = self._build()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker confirmed the subscriptions of the current connection."""
        return self._subscribed.wait(timeout)

    def _build(self) -> IntakeClient:
        client = new_client(
            self.config,
            self.client_id,
            clean=not self.persistent,
            password=self._password,
            log_name=f"{__name__}.paho",
            client_class=IntakeClient,
            manual_ack=self.manual_ack,
        )
        client.max_inflight_messages_set(100)  # summaries are the only QoS 1 publishes
        bind_callbacks(client, self, "connect", "disconnect", "connect_fail", "message", "subscribe")
        return client

    def start(self) -> None:
        cfg = self.config
        address = cfg.address
        props = None
        kwargs: dict = {}
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            if self.persistent and cfg.session_expiry_s:
                props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
            # The broker then drops anything larger than a valid payload plus its topic, before paho reads it.
            props.MaximumPacketSize = MAX_PACKET_BYTES
            kwargs = {"clean_start": not self.persistent, "properties": props}
        self._client.connect_async(address.host, address.port, keepalive=cfg.keepalive, **kwargs)
        self._client.loop_start()
        logger.info(
            "MQTT: connecting to %s as %s (%s session, MQTT %s)",
            address.url,
            self.client_id,
            "persistent" if self.persistent else "clean",
            cfg.protocol,
        )

    def stop(self) -> None:
        self._connected.clear()
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def ack(self, tokens: list[tuple]) -> None:
        """Acknowledge messages after they are stored; tokens from an earlier connection are skipped."""
        generation = self._generation
        self._client.ack_many([mid for gen, mid, qos in tokens if gen == generation and qos == 1])

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.last_error = f"broker {self.config.address.url} refused the connection: {reason}"
            logger.warning("MQTT: %s", self.last_error)
            return
        with self._lock:
            self._generation += 1
        self.connects += 1
        self.last_error = None
        # Subscribe again even when the session survived: it costs little and covers a broker that lost it.
        client.subscribe([(t, q) for t, q in self.topics])
        self._connected.set()
        logger.info(
            "MQTT: connected to %s (session %s)",
            self.config.address.url,
            "resumed" if getattr(flags, "session_present", False) else "new",
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(r) for r in reason_codes if r.is_failure]
        if failed:
            logger.error("MQTT: the broker refused subscriptions: %s", ", ".join(failed))
        self._subscribed.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self.last_error = f"broker {self.config.address.url} is unreachable"
        logger.warning("MQTT: %s; retrying", self.last_error)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was:
            logger.warning("MQTT: lost the connection to %s (%s); reconnecting", self.config.address.url, reason)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        token = (self._generation, message.mid, message.qos) if self.manual_ack and message.qos else None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""  # validation rejects it as a bad topic, and it is still acknowledged
        try:
            self.handler(topic, bytes(message.payload), bool(message.retain), token)
        except Exception:
            # paho would re-raise out of its network loop; nothing a device sends may stop intake.
            logger.exception("MQTT: handling a message on %r failed", topic[:200])
            if token is not None:
                self.ack([token])
