"""Shared MQTT test helpers: a persistent QoS 1 subscriber, polling, and status/seq readers."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.contract import CommandAck, DeviceTopics, EmotionEvent, StatusMessage
from server.testing import wait_for  # one polling helper for every test module


class Collector:
    """A paho subscriber with a persistent session and QoS 1, so what is published while it is away still arrives."""

    def __init__(self, broker, topic: str = "aula/#", client_id: str = "collector", persistent: bool = True, **tls):
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent
        )
        if tls:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(5), "collector did not subscribe"

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def events(self, topics: DeviceTopics) -> list[EmotionEvent]:
        return [EmotionEvent.from_payload(m.payload) for m in self.on(topics.events)]

    def statuses(self, topics: DeviceTopics) -> list[StatusMessage]:
        return [StatusMessage.from_payload(m.payload) for m in self.on(topics.status)]

    def acks(self, topics: DeviceTopics) -> list[CommandAck]:
        return [CommandAck.from_payload(m.payload) for m in self.on(topics.cmd_ack)]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def first_seqs(events: list[EmotionEvent]) -> list[int]:
    """Seqs in order of first arrival; a re-sent duplicate is recognised by its event_id."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e.seq)
    return out


def retained_status(broker, topics: DeviceTopics) -> mqtt.MQTTMessage:
    """What a dashboard opening now would see on the status topic."""
    late = Collector(broker, topics.status, client_id=f"late-{time.monotonic_ns()}", persistent=False)
    try:
        assert wait_for(lambda: late.on(topics.status), 5), "no retained status"
        return late.on(topics.status)[0]
    finally:
        late.close()
