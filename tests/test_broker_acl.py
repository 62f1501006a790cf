"""The broker configuration `make broker-setup` writes, run by a real Mosquitto: TLS, client certificates, the ACL.

Certificates come from `python -m fleet certs` for two devices in two rooms, the server and one teacher feed.
Every check is made by a real paho client over TLS on loopback, with the account's own certificate.
"""

from __future__ import annotations

import getpass
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.contract import DeviceTopics, summary_topic
from tests.mosquitto import free_port, require_mosquitto
from tests.mqtt_helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
A = DeviceTopics.for_device("school1", "room101", "pi-a")
B = DeviceTopics.for_device("school1", "room102", "pi-b")


def fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


class Broker:
    """Mosquitto on the configuration `python -m fleet broker-config` wrote."""

    def __init__(self, work: Path):
        self.work, self.port = work, free_port()
        self.certs = work / "certs"
        self.inventory = work / "fleet.csv"
        self.inventory.write_text("site,room,device,host\nschool1,room101,pi-a,\nschool1,room102,pi-b,\n")
        self.feeds = work / "feeds.csv"
        self.feeds.write_text("feed,site,room\nhall-display,school1,room101\n")
        made = fleet("certs", "--dir", str(self.certs), "--broker-host", "localhost,127.0.0.1",
                     "--inventory", str(self.inventory), "--feeds", str(self.feeds))
        assert made.returncode == 0, made.stderr
        self.process: subprocess.Popen | None = None
        self.configure()

    def configure(self) -> None:
        out = fleet("broker-config", "--certs", str(self.certs), "--out", str(self.work / "broker"),
                    "--inventory", str(self.inventory), "--feeds", str(self.feeds), "--port", str(self.port),
                    "--bind", "127.0.0.1", "--state-dir", str(self.work / "broker"),
                    "--log-file", str(self.work / "broker" / "mosquitto.log"), "--user", getpass.getuser())
        assert out.returncode == 0, out.stderr

    def start(self) -> None:
        self.process = subprocess.Popen([require_mosquitto(), "-c", str(self.work / "broker" / "mosquitto.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert wait_for(lambda: listening(self.port), 10), self.log()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def log(self) -> str:
        path = self.work / "broker" / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def key_pair(self, name: str) -> tuple[str, str]:
        return str(self.certs / "clients" / f"{name}.crt"), str(self.certs / "clients" / f"{name}.key")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Client:
    """One MQTT 5 client over TLS with an account's certificate; records what it receives and how it ends."""

    def __init__(self, broker: Broker, name: str | None, client_id: str = "", ca: str | None = None,
                 cert: tuple[str, str] | None = None, tls: bool = True):
        self.messages: list[mqtt.MQTTMessage] = []
        self.suback: list[int] = []
        self.puback: dict[int, int] = {}
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_error: BaseException | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{name}",
                                  protocol=mqtt.MQTTv5)
        if tls:
            certfile, keyfile = cert or (broker.key_pair(name) if name else (None, None))
            self.client.tls_set(ca_certs=ca or str(broker.certs / "ca.crt"), certfile=certfile, keyfile=keyfile)
        self.client.on_connect = lambda c, u, f, rc, p: rc == 0 and self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.suback.extend(int(x.value) for x in codes)
        self.client.on_publish = lambda c, u, mid, rc, p: self.puback.__setitem__(mid, int(rc.value))
        try:
            self.client.connect("localhost", broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            self.connect_error = exc
            return
        self.client.loop_start()

    def ok(self, timeout: float = 5) -> bool:
        return self.connect_error is None and self.connected.wait(timeout)

    def refused(self, timeout: float = 2) -> bool:
        """Never connected: a TLS or MQTT refusal, at connect or right after."""
        if self.connect_error is not None:
            return True
        return not self.connected.wait(timeout)

    def subscribe(self, topic: str) -> int:
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        assert wait_for(lambda: len(self.suback) > before, 5)
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int | None:
        """Publish at QoS 1; return the PUBACK's reason code (None if none came, e.g. disconnected)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if not wait_for(lambda: info.mid in self.puback, 5):
            return None
        return self.puback[info.mid]

    def on(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    require_mosquitto()
    b = Broker(tmp_path_factory.mktemp("acl"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def server(broker):
    c = Client(broker, "aula-server")
    assert c.ok(), broker.log()[-2000:]
    assert c.subscribe("aula/v1/#") < 0x80
    yield c
    c.close()


def test_a_device_publishes_its_own_topics_and_the_server_reads_them(broker, server):
    a = Client(broker, "pi-a")
    assert a.ok()
    assert a.publish(A.events, b'{"n":1}') == 0
    assert wait_for(lambda: server.on(A.events) == [b'{"n":1}'], 5)
    a.close()


def test_a_device_cannot_publish_as_another_or_send_commands(broker, server):
    a = Client(broker, "pi-a")
    assert a.ok()
    for topic in (B.events, B.status, B.health, B.cmd, A.cmd, summary_topic("school1", "room101"),
                  "aula/v1/school1/alerts", "something/else"):
        assert a.publish(topic, b'{"forged":1}') == NOT_AUTHORIZED, topic
    assert a.publish(A.events, b'{"n":2}') == 0  # still connected, and the marker arrives after the forgeries
    assert wait_for(lambda: server.on(A.events), 5)
    assert not any(b"forged" in m.payload for m in server.messages)
    a.close()


def test_a_device_reads_only_its_own_commands(broker, server):
    a, b = Client(broker, "pi-a"), Client(broker, "pi-b")
    assert a.ok() and b.ok()
    # Mosquitto 2.0 grants any subscription and applies the ACL to each message it would deliver.
    for topic in (B.cmd, "aula/v1/#", A.cmd):
        a.subscribe(topic)
    b.subscribe(B.cmd)
    assert server.publish(B.cmd, b'{"command":"pause"}') == 0
    assert b.publish(B.events, b'{"n":3}') == 0
    assert server.publish(A.cmd, b'{"command":"ping"}') == 0
    assert wait_for(lambda: b.on(B.cmd) and a.on(A.cmd), 5)
    time.sleep(0.3)
    assert {m.topic for m in a.messages} == {A.cmd}, "pi-a read another device's topics"
    a.close()
    b.close()


def test_a_teacher_feed_reads_only_its_rooms_summaries_and_publishes_nothing(broker, server):
    mine, other = summary_topic("school1", "room101"), summary_topic("school1", "room102")
    feed = Client(broker, "hall-display")
    assert feed.ok()
    for topic in (mine, other, "aula/v1/#"):
        feed.subscribe(topic)
    assert server.publish(mine, b'{"room":"101"}') == 0 and server.publish(other, b'{"room":"102"}') == 0
    a = Client(broker, "pi-a")
    assert a.ok() and a.publish(A.events, b'{"n":4}') == 0
    assert wait_for(lambda: feed.on(mine), 5)
    time.sleep(0.3)
    assert {m.topic for m in feed.messages} == {mine}, "the feed read another room or a device's events"
    a.close()
    for topic in (mine, A.events, A.cmd):
        assert feed.publish(topic, b'{"forged":1}') == NOT_AUTHORIZED, topic
    feed.close()


def test_the_monitor_account_reads_status_and_health_only(broker, server):
    """aula-flash, which make flash and make rollout watch with, beside a running server: neither is thrown off."""
    monitor = Client(broker, "aula-flash")
    assert monitor.ok()
    monitor.subscribe("aula/v1/#")
    a = Client(broker, "pi-a")
    assert a.ok()
    for t in (A.status, A.health, A.events):
        assert a.publish(t, b'{"n":5}') == 0
    assert wait_for(lambda: monitor.on(A.status) and monitor.on(A.health), 5)
    time.sleep(0.3)
    assert monitor.on(A.events) == []
    assert monitor.publish(A.cmd, b'{"forged":1}') == NOT_AUTHORIZED
    assert not server.disconnected.is_set()
    a.close()
    monitor.close()


def test_plaintext_no_certificate_and_another_cas_certificate_are_refused(broker, tmp_path):
    assert Client(broker, None, tls=False).refused()
    assert Client(broker, None, client_id="no-cert").refused()  # TLS, but no client certificate
    rogue = fleet("certs", "--dir", str(tmp_path / "rogue"), "--broker-host", "localhost",
                  "--inventory", str(broker.inventory))  # a CA of its own, issuing a certificate named pi-a
    assert rogue.returncode == 0, rogue.stderr
    forged = (str(tmp_path / "rogue" / "clients" / "pi-a.crt"), str(tmp_path / "rogue" / "clients" / "pi-a.key"))
    assert Client(broker, None, client_id="pi-a", cert=forged).refused()


def test_an_oversized_message_disconnects_its_sender(broker, server):
    from fleet.broker_config import MAX_PACKET_BYTES

    a = Client(broker, "pi-a")
    assert a.ok()
    a.client.publish(A.events, b"x" * (MAX_PACKET_BYTES + 1), qos=1)
    assert a.disconnected.wait(5)
    time.sleep(0.3)
    assert not any(len(m.payload) > MAX_PACKET_BYTES for m in server.messages)
    a.close()


def test_reusing_another_devices_client_id_does_not_take_over_its_session(broker, server):
    b = Client(broker, "pi-b", client_id="pi-b")
    assert b.ok()
    thief = Client(broker, "pi-a", client_id="pi-b")  # pi-a's certificate, pi-b's client id
    assert thief.ok()
    time.sleep(1.0)
    assert not b.disconnected.is_set(), "pi-b was thrown off by a client that claimed its client id"
    assert b.publish(B.events, b'{"still":"here"}') == 0
    assert thief.publish(B.events, b'{"forged":1}') == NOT_AUTHORIZED  # it is pi-a, whatever id it asked for
    thief.close()
    b.close()


def test_the_device_selftest_checks_its_certificate_at_the_broker(broker, tmp_path):
    """`device selftest`'s broker check: the TLS handshake with the device's own files, no MQTT login."""
    from device.config import load_config
    from device.selftest_checks import broker_reachable

    def mqtt_for(cert: Path, key: Path):
        return load_config(None, {"mqtt.broker": f"mqtts://localhost:{broker.port}", "mqtt.device_id": "pi-a",
                                  "mqtt.tls.ca_file": str(broker.certs / "ca.crt"),
                                  "mqtt.tls.cert_file": str(cert), "mqtt.tls.key_file": str(key)}).mqtt_config()

    good = broker_reachable(mqtt_for(*map(Path, broker.key_pair("pi-a"))), None)
    assert "handshake with the device's certificate accepted" in good
    rogue = fleet("certs", "--dir", str(tmp_path / "rogue"), "--broker-host", "localhost",
                  "--inventory", str(broker.inventory))
    assert rogue.returncode == 0
    with pytest.raises(OSError, match="refused the TLS handshake"):
        broker_reachable(mqtt_for(tmp_path / "rogue" / "clients" / "pi-a.crt",
                                  tmp_path / "rogue" / "clients" / "pi-a.key"), None)


def test_a_revoked_certificate_is_refused_and_the_others_still_connect(broker, tmp_path):
    out = fleet("revoke", "--dir", str(broker.certs), "pi-b")
    assert out.returncode == 0, out.stderr
    stolen = (str(next((broker.certs / "revoked").glob("pi-b-*.crt"))),
              str(next((broker.certs / "revoked").glob("pi-b-*.key"))))
    broker.configure()  # the new crl.pem for the broker
    broker.stop()
    broker.start()
    assert Client(broker, None, client_id="pi-b", cert=stolen).refused()
    again = fleet("certs", "--dir", str(broker.certs), "--broker-host", "localhost,127.0.0.1",
                  "--inventory", str(broker.inventory), "--feeds", str(broker.feeds))
    assert again.returncode == 0 and "created: device pi-b" in again.stdout  # a new key for the replacement
    a = Client(broker, "pi-a")
    assert a.ok()
    a.close()


def test_the_real_device_and_server_work_through_the_locked_down_broker(broker, tmp_path):
    """`python -m device run` and the server, each with its own certificate over TLS: the events are stored."""
    from server.testing import ServerHarness

    certs = broker.certs
    url = f"mqtts://localhost:{broker.port}"
    made = ServerHarness(tmp_path / "server", url, **{
        "devices.auto_assign": True, "mqtt.tls.ca_file": str(certs / "ca.crt"),
        "mqtt.tls.cert_file": str(certs / "clients" / "aula-server.crt"),
        "mqtt.tls.key_file": str(certs / "clients" / "aula-server.key")})
    server = made.start()
    room = server.storage.rooms.create("school1", "room101", "Room 101")["id"]
    server.registry.add_room("school1", "room101", room)
    config = tmp_path / "device.yaml"
    config.write_text(f"mqtt:\n  broker: {url}\n  site: school1\n  room: room101\n  device_id: pi-a\n  tls:\n"
                      f"    ca_file: {certs / 'ca.crt'}\n    cert_file: {certs / 'clients' / 'pi-a.crt'}\n"
                      f"    key_file: {certs / 'clients' / 'pi-a.key'}\n")
    device = subprocess.run([sys.executable, "-m", "device", "run", "--fast", "--config", str(config),
                             "--state-dir", str(tmp_path / "state")], cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    try:
        assert device.returncode == 0, device.stderr[-3000:]
        assert wait_for(lambda: made.stat("events_ingested") >= 6, 15), (made.stat("events_ingested"), broker.log())
        devices = server.storage.devices.list(room)
        assert [d["device_id"] for d in devices] == ["pi-a"] and devices[0]["state"] == "stopped"
    finally:
        made.stop()
