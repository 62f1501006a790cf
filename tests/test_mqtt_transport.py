"""The intake's paho client: buffered reads, its own PUBLISH decoding and batched PUBACKs, against real sockets
and a real Mosquitto (so a paho upgrade that changes the internals it builds on fails here)."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from server.mqtt_transport import BufferedSocket, IntakeClient
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.mqtt_helpers import wait_for

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def test_buffered_socket_serves_small_reads_from_one_recv():
    a, b = socket.socketpair()
    try:
        a.sendall(b"\x30\x05hello" + b"x" * 1000)
        sock = BufferedSocket(b)
        assert sock.recv(1) == b"\x30"
        assert sock.pending() == 1006
        assert sock.recv(1) == b"\x05"
        assert sock.recv(5) == b"hello"
        assert sock.recv(4000) == b"x" * 1000  # never more than what is buffered
        assert sock.pending() == 0
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        assert sock.fileno() == b.fileno()  # everything else is the wrapped socket's
        a.close()
        assert sock.recv(1) == b""  # end of stream passes through
    finally:
        a.close()
        b.close()


class _Receiver:
    def __init__(self, broker, protocol: str, client_id: str, manual_ack: bool, persistent: bool = True):
        v5 = protocol == "5"
        kwargs = {} if v5 else {"clean_session": not persistent}
        self.client = IntakeClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol], manual_ack=manual_ack,
            **kwargs,
        )
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("t/#", qos=1)
        connect = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            props.ReceiveMaximum = 1000
            connect = {"clean_start": not persistent, "properties": props}
        self.client.connect("127.0.0.1", broker.port, **connect)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append(message)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _publisher(broker, protocol: str) -> mqtt.Client:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=PROTOCOLS[protocol])
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    return pub


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_intake_client_receives_every_message_intact(mosquitto, protocol):
    rx = _Receiver(mosquitto, protocol, f"rx-{protocol}", manual_ack=False, persistent=False)
    assert isinstance(rx.client.socket(), BufferedSocket)
    pub = _publisher(mosquitto, protocol)
    try:
        sent = {}
        for i in range(3000):
            payload = (f"{i}:" + "é" * (i % 300)).encode()
            qos = i % 2
            props = None
            if protocol == "5" and i % 7 == 0:  # properties present: paho's own decoder takes these
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("k", str(i))
            pub.publish(f"t/{i % 13}/x", payload, qos=qos, properties=props)
            sent[payload] = (f"t/{i % 13}/x", qos, props is not None)
        assert wait_for(lambda: len(rx.messages) >= len(sent), 30)
        got = {m.payload: m for m in rx.messages}
        assert set(got) == set(sent) and len(rx.messages) == len(sent)
        for payload, (topic, qos, has_props) in sent.items():
            m = got[payload]
            assert (m.topic, m.qos, m.retain) == (topic, qos, False)
            if has_props:
                assert ("k", payload.split(b":")[0].decode()) in m.properties.UserProperty
    finally:
        pub.disconnect()
        pub.loop_stop()
        rx.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_batched_acks_settle_the_session_and_unacked_messages_come_back(mosquitto, protocol):
    """Manual ack: what ack_many acknowledged is not redelivered after a reconnect; the rest is."""
    rx = _Receiver(mosquitto, protocol, f"acker-{protocol}", manual_ack=True)
    pub = _publisher(mosquitto, protocol)
    try:
        for i in range(400):
            pub.publish(f"t/{i}", str(i).encode(), qos=1)
        acked = 0  # MQTT 3.1.1: the broker sends 20 at a time (max_inflight_messages), so ack as they come
        deadline = time.monotonic() + 20
        while acked < 390 and time.monotonic() < deadline:
            with rx.lock:
                new = [m for m in rx.messages[acked:] if int(m.payload) < 390]
            if new:
                rx.client.ack_many([m.mid for m in new])
                acked += len(new)
            time.sleep(0.02)
        assert acked == 390
        assert wait_for(lambda: len(rx.messages) >= 400, 10)
        # A barrier: the broker handles one connection's packets in order, so once it acknowledges this
        # publish it has processed every PUBACK written before it.
        rx.client.publish("barrier/acks", b"", qos=1).wait_for_publish(10)
        rx.close()
        again = _Receiver(mosquitto, protocol, f"acker-{protocol}", manual_ack=True)
        try:
            assert wait_for(lambda: len(again.messages) >= 10, 20)
            assert not wait_for(lambda: len(again.messages) > 10, 1.0), sorted(int(m.payload) for m in again.messages)
            assert sorted(int(m.payload) for m in again.messages) == list(range(390, 400))
            assert all(m.dup for m in again.messages)
        finally:
            again.close()
    finally:
        pub.disconnect()
        pub.loop_stop()
