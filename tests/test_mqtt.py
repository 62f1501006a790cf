"""MQTT layer: config, messages, secrets, the SQLite offline queue, and the publisher against a real mosquitto."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.common.broker_settings import TlsConfig, broker_url_arg, parse_broker_url
from device.common.config_loader import load_yaml_model
from device.common.credentials import RedactingFilter, redact, resolve_password
from device.contract import (
    Command,
    CommandAck,
    CommandName,
    DeviceState,
    DeviceTopics,
    EmotionEvent,
    SchemaError,
    StatusMessage,
    extract_command_id,
)
from device.errors import ConfigError
from device.mqtt.config import MqttConfig, QueueConfig
from device.mqtt.publisher import EventPublisher
from device.offline_queue import OfflineQueue
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.mqtt_device_script import build_config, make_event
from tests.mqtt_helpers import Collector, first_seqs, retained_status, wait_for
from tests.system_deps import require_system_dep

ROOT = Path(__file__).resolve().parent.parent
# The issue asks the outage test for 30 s; AULA_MQTT_OUTAGE_S shortens it while iterating locally.
OUTAGE_S = float(os.environ.get("AULA_MQTT_OUTAGE_S", "30"))


@pytest.fixture
def publishers():
    """Publishers made by a test; any still running at the end are stopped."""
    made: list[EventPublisher] = []

    def make(config: MqttConfig, **kwargs) -> EventPublisher:
        pub = EventPublisher(config, **kwargs)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.stop()


def spawn_device(broker_url: str, queue: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.mqtt_device_script", "--broker", broker_url, "--queue", str(queue), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen, key: str, timeout: float = 20.0) -> tuple[dict, list[dict]]:
    """Read the script's JSON lines until one has `key`; returns it and all lines read."""
    lines: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"device script ended (rc={proc.poll()}): {proc.stderr.read()[-3000:]}")
        lines.append(json.loads(line))
        if key in lines[-1]:
            return lines[-1], lines
    raise AssertionError(f"no {key!r} from the device script within {timeout}s")


# ---- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.local:1884", "broker.local", 1884, False),
        ("mqtt://10.0.0.5", "10.0.0.5", 1883, False),
        ("mqtts://broker.example.org", "broker.example.org", 8883, True),
        ("MQTTS://[::1]:8884/", "::1", 8884, True),
    ],
)
def test_parse_broker_url(url, host, port, tls):
    address = parse_broker_url(url)
    assert (address.host, address.port, address.tls) == (host, port, tls)
    assert parse_broker_url(address.url) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("broker.local:1883", "has no scheme; write mqtt://broker.local:1883"),
        ("tcp://broker:1883", "scheme 'tcp' is not supported"),
        ("ws://broker:9001", "scheme 'ws' is not supported"),
        ("mqtt://broker:99999", "invalid port"),
        ("mqtt://broker:abc", "invalid port"),
        ("mqtt://broker:0", "port 0"),
        ("mqtt://user:secret@broker:1883", "must not carry credentials"),
        ("mqtt://broker:1883/aula", "without a path"),
        ("mqtt://:1883", "has no host"),
        ("", "empty"),
    ],
)
def test_parse_broker_url_errors_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_broker_url(url)


def test_broker_url_arg_for_argparse():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", type=broker_url_arg)
    assert parser.parse_args(["--broker", "mqtt://h"]).broker == "mqtt://h:1883"
    with pytest.raises(argparse.ArgumentTypeError, match="no scheme"):
        broker_url_arg("h:1883")


@pytest.mark.parametrize("cls", [MqttConfig, TlsConfig, QueueConfig])
def test_config_describes_every_field_and_rejects_unknown_keys(cls):
    assert cls.model_config.get("extra") == "forbid"
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"


def test_config_errors_name_file_line_and_key(tmp_path):
    path = tmp_path / "mqtt.yaml"
    path.write_text("site: s\nroom: r\ndevice_id: d\nqueue:\n  max_rowz: 5\n")
    with pytest.raises(ConfigError, match=r"mqtt\.yaml:5: queue\.max_rowz: unknown key"):
        load_yaml_model(MqttConfig, path)
    path.write_text("site: s\nroom: r\ndevice_id: d\nbroker: tcp://x:1\n")
    with pytest.raises(ConfigError, match=r"mqtt\.yaml:4: broker: .*scheme 'tcp' is not supported"):
        load_yaml_model(MqttConfig, path)
    path.write_text("site: s\nroom: r\ndevice_id: d\nprotocol: 5\n")
    assert load_yaml_model(MqttConfig, path).protocol == "5"  # YAML reads 5 as an integer


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"device_id": "a/b"}, "topic level"),
        ({"site": "#"}, "topic level"),
        ({"protocol": "3.1"}, "protocol"),
        ({"username": "u", "password_env": "A", "password_credential": "b"}, "not both"),
        ({"password_env": "A"}, "needs a username"),
        ({"username": "u", "password_credential": "../etc/shadow"}, "not a path"),
        ({"tls": {"ca_file": "/ca.pem"}}, "need an mqtts:// broker URL"),
        ({"broker": "mqtts://h", "tls": {"cert_file": "/c.pem"}}, "cert_file and key_file go together"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"queue": {"max_bytes": 10}}, "max_bytes"),
        ({"health_interval_s": 0.3}, "health_interval_s"),  # a floor of 1 s: health is no stream
    ],
)
def test_config_cross_field_errors(extra, message):
    data = {"site": "s", "room": "r", "device_id": "d", **extra}
    with pytest.raises(ValueError, match=message):
        MqttConfig.model_validate(data)


# ---- messages ----------------------------------------------------------------------------------------------------


def test_messages_round_trip():
    status = StatusMessage(device_id="d", state=DeviceState.DEGRADED, ts_ms=1, reason="camera lost", paused=True)
    assert StatusMessage.from_payload(status.to_payload()) == status
    assert json.loads(status.to_payload())["state"] == "degraded"
    command = Command(id="c-1", command=CommandName.PAUSE)
    assert json.loads(command.to_payload()) == {"type": "command", "schema": 1, "id": "c-1", "command": "pause"}
    assert Command.from_payload(command.to_payload()) == command
    ack = CommandAck(id="c-1", device_id="d", ok=False, ts_ms=2, command=None, reason="malformed")
    assert CommandAck.from_payload(ack.to_payload()) == ack


STATUS = b'{"type": "status", "schema": 1, "device_id": "d", '
ACK = b'{"type": "command_ack", "schema": 1, "id": "x", "device_id": "d", '


@pytest.mark.parametrize(
    ("cls", "payload", "reason"),
    [
        (Command, b"not json", "not JSON"),
        (Command, b"\xff\xfe", "not UTF-8"),
        (Command, b"[1, 2]", "JSON object"),
        (Command, b'{"schema": 1, "id": "x", "command": "ping"}', "type must be 'command'"),
        (Command, b'{"type": "command", "schema": 9, "id": "x", "command": "ping"}', "schema version 9"),
        (Command, b'{"type": "command", "schema": 1, "id": "x", "command": "dance"}', "command must be one of"),
        (Command, b'{"type": "command", "schema": 1, "id": "", "command": "ping"}', "id must be"),
        (Command, b'{"type": "command", "schema": 1, "id": "x", "command": "ping", "x": 1}', "unknown fields: x"),
        (Command, b"{" + b'"a":' * 10000, "exceeds"),
        (StatusMessage, STATUS + b'"state": "on", "ts_ms": 1}', "state must be one of"),
        (StatusMessage, STATUS + b'"state": "degraded", "ts_ms": 1}', "degraded status needs a reason"),
        (StatusMessage, STATUS + b'"state": "online", "ts_ms": -1}', "ts_ms"),
        (CommandAck, ACK + b'"ts_ms": 1}', "missing field ok"),
        (CommandAck, ACK + b'"ts_ms": 1, "ok": false}', "failed ack needs a reason"),
    ],
)
def test_malformed_payloads_raise_schema_error_with_reason(cls, payload, reason):
    with pytest.raises(SchemaError, match=reason):
        cls.from_payload(payload)


def test_extract_command_id_from_malformed_command():
    assert extract_command_id(b'{"id": "c-9", "command": "dance"}') == "c-9"
    assert extract_command_id(b'{"id": 5}') is None
    assert extract_command_id(b"garbage") is None


# ---- secrets -----------------------------------------------------------------------------------------------------


def test_password_from_env_and_systemd_credential(tmp_path):
    base = {"site": "s", "room": "r", "device_id": "d", "username": "u"}
    cfg = MqttConfig.model_validate({**base, "password_env": "AULA_MQTT_PASSWORD"})
    assert resolve_password(cfg, {"AULA_MQTT_PASSWORD": "hunter2!"}) == "hunter2!"
    with pytest.raises(ConfigError, match=r"\$AULA_MQTT_PASSWORD, but it is not set"):
        resolve_password(cfg, {})
    (tmp_path / "mqtt-password").write_text("s3cret-cred\n")
    cfg = MqttConfig.model_validate({**base, "password_credential": "mqtt-password"})
    assert resolve_password(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret-cred"
    with pytest.raises(ConfigError, match="needs \\$CREDENTIALS_DIRECTORY"):
        resolve_password(cfg, {})
    with pytest.raises(ConfigError, match="cannot read credential"):
        resolve_password(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path / "missing")})
    assert resolve_password(MqttConfig.model_validate(base), {}) is None


def test_redaction_helper_and_log_filter():
    assert redact("user=u password=hunter2 again hunter2", ["hunter2"]) == "user=u password=*** again ***"
    assert redact("nothing here", ["", "x-y"]) == "nothing here"
    records: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = ListHandler()
    handler.addFilter(RedactingFilter(["hunter2"]))
    log = logging.getLogger("aula.test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("connecting with password %s", "hunter2")
        try:
            raise RuntimeError("auth failed for hunter2")
        except RuntimeError:
            log.exception("oops")
    finally:
        log.removeHandler(handler)
    text = "\n".join(records)
    assert "hunter2" not in text
    assert "connecting with password ***" in text and "auth failed for ***" in text


# ---- offline queue (no broker) ------------------------------------------------------------------------------------


def _event(i: int = 0) -> EmotionEvent:
    return make_event("school1", "room101", "dev1", i)


def test_queue_is_wal_durable_and_seq_survives_restart(tmp_path):
    path = tmp_path / "q.sqlite3"
    with OfflineQueue(path) as q:
        stored = [q.enqueue(_event(i)) for i in range(3)]
        assert [e.seq for e in stored] == [1, 2, 3]
        assert q._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert q.ack(2) and not q.ack(2)
    with OfflineQueue(path) as q:  # as after a restart
        assert [r.seq for r in q.peek()] == [1, 3]
        assert [r.event_id for r in q.peek()] == [stored[0].event_id, stored[2].event_id]
        assert EmotionEvent.from_payload(q.peek(after_seq=1)[0].payload) == stored[2]
        assert q.enqueue(_event(9)).seq == 4
        assert q.stats().next_seq == 5


def test_queue_bounds_drop_oldest_and_count_persistently(tmp_path):
    path = tmp_path / "q.sqlite3"
    with OfflineQueue(path, max_rows=5) as q:
        for i in range(8):
            q.enqueue(_event(i))
        assert [r.seq for r in q.peek(limit=100)] == [4, 5, 6, 7, 8]
        assert q.stats().dropped_full == 3
    size = len(_event(0).to_payload())
    with OfflineQueue(path, max_rows=100, max_bytes=3 * size + 10) as q:
        q.enqueue(_event(8))
        stats = q.stats()
        assert stats.backlog == 3 and stats.bytes <= 3 * size + 10
        assert stats.dropped_full == 3 + 3  # persisted from the first run


# Ages, clock jumps and storage faults of the queue: tests/test_offline_queue.py.


def test_corrupt_queue_file_is_moved_aside(tmp_path):
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with OfflineQueue(path) as q:
        assert q.enqueue(_event()).seq == 1
    assert len(list(tmp_path.glob("q.sqlite3.corrupt-*"))) == 1


def test_publish_event_checks_identity_and_schema_before_queueing(tmp_path):
    pub = EventPublisher(build_config("mqtt://127.0.0.1:1", tmp_path / "q.sqlite3"))
    try:
        with pytest.raises(ValueError, match="this publisher is school1/room101/dev1"):
            pub.publish_event(make_event("school1", "room101", "other", 0))
        bad = _event()
        bad.distribution = {"happy": 1.0}
        with pytest.raises(SchemaError, match="distribution"):
            pub.publish_event(bad)
        assert len(pub.queue) == 0
        pub.publish_event(_event())
    finally:
        pub.stop()
    assert pub.stats().backlog == 1  # answered from the last snapshot: the queue is closed
    with pytest.raises(RuntimeError, match="stopped"):
        pub.publish_event(_event())


# ---- publisher against a real broker ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_arrive_with_schema_and_status_is_retained(mosquitto, tmp_path, publishers, protocol):
    collector = Collector(mosquitto)
    pub = publishers(build_config(mosquitto.url, tmp_path / "q.sqlite3", protocol=protocol))
    pub.start()
    stored = [pub.publish_event(_event(i)) for i in range(5)]
    assert wait_for(lambda: len(collector.events(pub.topics)) >= 5)
    events = collector.events(pub.topics)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events == stored
    assert all(m.qos == 1 and m.topic == "aula/v1/school1/room101/dev1/events" for m in collector.on(pub.topics.events))
    assert wait_for(lambda: pub.stats().backlog == 0)
    stats = pub.stats()
    assert (stats.queued, stats.sent, stats.acked, stats.connected, stats.in_flight) == (5, 5, 5, True, 0)
    online = retained_status(mosquitto, pub.topics)
    assert online.retain and StatusMessage.from_payload(online.payload).state is DeviceState.ONLINE
    pub.publish_status(DeviceState.DEGRADED, "microphone missing")
    assert wait_for(lambda: collector.statuses(pub.topics)[-1].state is DeviceState.DEGRADED)
    assert collector.statuses(pub.topics)[-1].reason == "microphone missing"
    pub.stop(clean=True)
    assert wait_for(lambda: collector.statuses(pub.topics)[-1].state is DeviceState.STOPPED)
    stopped = retained_status(mosquitto, pub.topics)
    assert stopped.retain and StatusMessage.from_payload(stopped.payload).state is DeviceState.STOPPED
    collector.close()


def test_a_stop_is_bounded_even_when_its_threads_hang(mosquitto, tmp_path, publishers):
    """The service must stop inside systemd's TimeoutStopSec (10 s) whatever the publisher's threads do."""
    import threading
    import time

    from device.mqtt.publisher import STOP_JOIN_S

    pub = publishers(build_config(mosquitto.url, tmp_path / "q.sqlite3"))
    pub.start()
    assert wait_for(lambda: pub.connected)
    release = threading.Event()
    real_sender = pub.sender.thread
    # Stand-ins for a sender and a command worker stuck in a call that never returns.
    pub.sender.thread = threading.Thread(target=release.wait, daemon=True)
    pub.commands.thread = threading.Thread(target=release.wait, daemon=True)
    pub.sender.thread.start()
    pub.commands.thread.start()
    t = time.monotonic()
    pub.stop(clean=True)
    took = time.monotonic() - t
    release.set()
    real_sender.join(timeout=5)
    assert took <= pub.config.stop_timeout_s + STOP_JOIN_S + 1.0, f"stop took {took:.1f} s"


def test_unclean_stop_publishes_the_will(mosquitto, tmp_path, publishers):
    collector = Collector(mosquitto)
    pub = publishers(build_config(mosquitto.url, tmp_path / "q.sqlite3"))
    pub.start()
    assert wait_for(lambda: pub.connected)
    pub.stop(clean=False)
    assert wait_for(lambda: collector.statuses(pub.topics) and collector.statuses(pub.topics)[-1].state == "offline")
    collector.close()


def test_kill_9_gives_offline_through_the_last_will(mosquitto, tmp_path):
    collector = Collector(mosquitto)
    topics = DeviceTopics.for_device("school1", "room101", "dev1")
    proc = spawn_device(mosquitto.url, tmp_path / "q.sqlite3", "--count", "2", "--hold")
    try:
        read_until(proc, "published")
        assert wait_for(lambda: len(collector.events(topics)) == 2)
        assert collector.statuses(topics)[-1].state is DeviceState.ONLINE
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert wait_for(lambda: collector.statuses(topics)[-1].state is DeviceState.OFFLINE, 10)
        will = retained_status(mosquitto, topics)
        assert will.retain and StatusMessage.from_payload(will.payload).state is DeviceState.OFFLINE
    finally:
        proc.kill()
        proc.wait()
        collector.close()


def test_broker_down_at_start_does_not_block_and_events_queue(broker_factory, tmp_path, publishers):
    broker = broker_factory()
    broker.start()
    collector = Collector(broker)  # its persistent session outlives the broker restart
    broker.stop()
    pub = publishers(build_config(broker.url, tmp_path / "q.sqlite3"))
    t0 = time.monotonic()
    pub.start()
    stored = [pub.publish_event(_event(i)) for i in range(3)]
    assert time.monotonic() - t0 < 1.0
    assert wait_for(lambda: pub.stats().connect_failures >= 1, 5)
    stats = pub.stats()
    assert not stats.connected and stats.backlog == 3 and "unreachable" in stats.last_error
    broker.start()
    assert wait_for(lambda: len(collector.events(pub.topics)) >= 3, 15)
    assert first_seqs(collector.events(pub.topics)) == [1, 2, 3]
    assert {e.event_id for e in collector.events(pub.topics)} == {e.event_id for e in stored}
    assert wait_for(lambda: pub.stats().backlog == 0)
    collector.close()


def test_broker_outage_loses_nothing_and_keeps_order(mosquitto, tmp_path, publishers, caplog):
    """Publish through a broker outage (30 s, as the issue asks), then a second one in the middle of the drain."""
    caplog.set_level(logging.INFO)
    collector = Collector(mosquitto)
    cfg = build_config(mosquitto.url, tmp_path / "q.sqlite3", drain_rate=100.0, max_inflight=20)
    pub = publishers(cfg)
    pub.start()
    stored: list[EmotionEvent] = []

    def publish_for(seconds: float, interval: float = 0.1):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stored.append(pub.publish_event(_event(len(stored))))
            time.sleep(interval)

    publish_for(1.0)
    assert wait_for(lambda: pub.stats().backlog == 0)
    delivered = len(stored)
    mosquitto.stop()
    publish_for(OUTAGE_S)
    stats = pub.stats()
    assert not stats.connected and stats.backlog == len(stored) - delivered
    mosquitto.start()
    # Break the connection again while the backlog drains.
    third = len(stored) // 3
    assert wait_for(lambda: pub.stats().acked >= third, 20)
    mosquitto.stop()
    assert pub.stats().backlog > 0
    publish_for(1.0)
    mosquitto.start()
    publish_for(1.0)
    n = len(stored)
    assert wait_for(lambda: len({e.event_id for e in collector.events(pub.topics)}) >= n, 30)
    events = collector.events(pub.topics)
    assert first_seqs(events) == list(range(1, n + 1)), "lost or reordered events"
    assert {e.event_id for e in events} == {e.event_id for e in stored}
    assert wait_for(lambda: pub.stats().backlog == 0)
    stats = pub.stats()
    assert stats.reconnects >= 2 and stats.dropped == 0 and stats.acked >= n
    collector.close()
    # A broker going away is routine for a device: warnings, never an ERROR in the journal.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_kill_9_with_backlog_then_restart_drains_it(broker_factory, tmp_path):
    broker = broker_factory()
    broker.start()
    collector = Collector(broker)
    topics = DeviceTopics.for_device("school1", "room101", "dev1")
    queue = tmp_path / "q.sqlite3"
    broker.stop()
    proc = spawn_device(broker.url, queue, "--count", "20", "--hold")
    try:
        _, lines = read_until(proc, "published")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
    first_ids = [line["event_id"] for line in lines if "queued" in line]
    assert len(first_ids) == 20
    with sqlite3.connect(queue) as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 20
    broker.start()
    proc = spawn_device(broker.url, queue, "--count", "3")
    try:
        done, lines = read_until(proc, "drained")
        assert proc.wait(15) == 0 and done["drained"]
    finally:
        proc.kill()
        proc.wait()
    assert [line["queued"] for line in lines if "queued" in line] == [21, 22, 23]  # seq continues across restarts
    assert wait_for(lambda: len(collector.events(topics)) >= 23, 10)
    events = collector.events(topics)
    assert first_seqs(events) == list(range(1, 24))
    assert [e.event_id for e in events[:20]] == first_ids
    assert wait_for(lambda: collector.statuses(topics)[-1].state is DeviceState.STOPPED)
    collector.close()


def test_kill_9_mid_drain_resends_unacked_rows(mosquitto, tmp_path):
    collector = Collector(mosquitto)
    topics = DeviceTopics.for_device("school1", "room101", "dev1")
    queue = tmp_path / "q.sqlite3"
    proc = spawn_device(mosquitto.url, queue, "--count", "150", "--drain-rate", "40", "--hold")
    try:
        read_until(proc, "published")  # all 150 on disk; at 40/s most are still to send
        assert wait_for(lambda: len(collector.events(topics)) >= 10, 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
    arrived = len(collector.events(topics))
    assert arrived < 150
    proc = spawn_device(mosquitto.url, queue)
    try:
        done, _ = read_until(proc, "drained")
        assert proc.wait(15) == 0 and done["drained"]
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: len({e.event_id for e in collector.events(topics)}) >= 150)
    assert first_seqs(collector.events(topics)) == list(range(1, 151))
    with sqlite3.connect(queue) as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    collector.close()


def test_events_in_flight_when_the_broker_dies_are_resent_in_order(broker_factory, tmp_path, publishers, monkeypatch):
    """Freeze the broker so PUBACKs stop, kill it with events in flight, queue more, start it: order holds."""
    from device.mqtt.connection import DeviceConnection

    on_connect = DeviceConnection._on_connect

    def slow_on_connect(self, *args):
        # paho re-sends in-flight events after on_connect returns; a slow network thread (a loaded Pi) lets newer
        # events overtake them unless the publisher holds new sends until the re-sent ones are acknowledged.
        on_connect(self, *args)
        time.sleep(0.3)

    monkeypatch.setattr(DeviceConnection, "_on_connect", slow_on_connect)
    broker = broker_factory()
    broker.start()
    collector = Collector(broker)
    broker.restart()  # the saved database now holds the collector's session, which survives the SIGKILL below
    pub = publishers(build_config(broker.url, tmp_path / "q.sqlite3", max_inflight=20))
    pub.start()
    for i in range(5):
        pub.publish_event(_event(i))
    assert wait_for(lambda: len(collector.events(pub.topics)) == 5)
    broker.pause()
    for i in range(5, 15):
        pub.publish_event(_event(i))
    assert wait_for(lambda: pub.stats().in_flight == 10, 5)  # half the window: new events could overtake these
    broker.kill()
    assert wait_for(lambda: not pub.connected, 5)
    for i in range(15, 40):
        pub.publish_event(_event(i))
    broker.start()
    assert wait_for(lambda: len({e.event_id for e in collector.events(pub.topics)}) >= 40, 20)
    assert first_seqs(collector.events(pub.topics)) == list(range(1, 41))
    assert wait_for(lambda: pub.stats().backlog == 0)
    assert pub.stats().reconnects >= 1
    collector.close()


def test_queue_bounds_show_in_stats_and_only_the_newest_are_sent(mosquitto, tmp_path, publishers):
    collector = Collector(mosquitto)
    pub = publishers(build_config(mosquitto.url, tmp_path / "q", queue={"path": str(tmp_path / "q"), "max_rows": 3}))
    for i in range(5):
        pub.publish_event(_event(i))  # before start(): queued on disk only
    stats = pub.stats()
    assert (stats.backlog, stats.dropped_full, stats.dropped) == (3, 2, 2)
    pub.start()
    assert wait_for(lambda: len(collector.events(pub.topics)) >= 3)
    assert [e.seq for e in collector.events(pub.topics)] == [3, 4, 5]
    collector.close()


def test_events_the_broker_refuses_stay_queued(broker_factory, tmp_path, publishers):
    acl = tmp_path / "acl"
    acl.write_text("topic read aula/#\npattern write aula/v1/+/+/%c/status\n")  # events not allowed
    broker = broker_factory(listener_options=f"acl_file {acl}")
    broker.start()
    pub = publishers(build_config(broker.url, tmp_path / "q.sqlite3"))
    pub.start()
    for i in range(3):
        pub.publish_event(_event(i))
    assert wait_for(lambda: pub.stats().rejected == 3)
    stats = pub.stats()
    assert (stats.acked, stats.backlog, stats.in_flight) == (0, 3, 0)
    assert "refused event seq 3: Not authorized" in stats.last_error


def test_refused_events_are_sent_again_once_the_broker_takes_them(broker_factory, tmp_path, publishers):
    """A refusal is a setup problem someone fixes (here: the ACL); the events go out then, without a restart."""
    import signal

    acl = tmp_path / "acl"
    acl.write_text("topic read aula/#\npattern write aula/v1/+/+/%c/status\n")  # events not allowed
    broker = broker_factory(listener_options=f"acl_file {acl}")
    broker.start()
    collector = Collector(broker)
    pub = publishers(build_config(broker.url, tmp_path / "q.sqlite3", refused_retry_s=0.5))
    pub.start()
    for i in range(3):
        pub.publish_event(_event(i))
    assert wait_for(lambda: pub.stats().rejected >= 3)
    acl.write_text("topic read aula/#\npattern write aula/v1/+/+/%c/#\n")  # the technician fixes the ACL
    broker.process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL file
    assert wait_for(lambda: pub.stats().backlog == 0, 15), pub.stats()
    # The broker acknowledges the publisher before it has delivered to the subscriber: wait for the delivery too.
    assert wait_for(lambda: sorted({e.seq for e in collector.events(pub.topics)}) == [1, 2, 3], 5), \
        sorted({e.seq for e in collector.events(pub.topics)})
    collector.close()


def test_commands_are_acked_and_malformed_ones_counted(mosquitto, tmp_path, publishers):
    collector = Collector(mosquitto)
    pub = publishers(build_config(mosquitto.url, tmp_path / "q.sqlite3"))
    pub.start()
    assert wait_for(lambda: pub.connected)
    server = Collector(mosquitto, "none", client_id="server", persistent=False)
    seen: list[Command] = []

    def send(payload: bytes | str, n_acks: int | None = None):
        before = len(collector.acks(pub.topics))
        server.client.publish(pub.topics.cmd, payload, qos=1).wait_for_publish(5)
        if n_acks is not None:
            assert wait_for(lambda: len(collector.acks(pub.topics)) >= before + n_acks), f"no ack for {payload!r}"
            return collector.acks(pub.topics)[-1]

    def cmd(command_id: str, name: str) -> bytes:
        return json.dumps({"type": "command", "schema": 1, "id": command_id, "command": name}).encode()

    ack = send(cmd("c1", "pause"), 1)
    assert (ack.id, ack.ok, ack.command, ack.paused) == ("c1", False, "pause", False)
    assert "no handler" in ack.reason

    def handler(command: Command):
        seen.append(command)
        if command.command is CommandName.RELOAD:
            raise RuntimeError("config file has an error")

    pub.on_command(handler)
    send(b"not json at all")
    send(b"\x00\xff")
    ack = send(b'{"type": "command", "schema": 1, "id": "c2", "command": "dance"}', 1)
    assert (ack.id, ack.ok, ack.command) == ("c2", False, None)
    assert "command must be one of" in ack.reason
    ack = send(cmd("c3", "pause"), 1)
    assert (ack.id, ack.ok, ack.paused) == ("c3", True, True) and pub.paused
    assert wait_for(lambda: collector.statuses(pub.topics)[-1].paused)
    ack = send(cmd("c3", "pause"), 1)  # a redelivery: acked again, not run again
    assert ack.id == "c3" and ack.ok
    ack = send(cmd("c4", "ping"), 1)
    assert (ack.id, ack.ok, ack.command) == ("c4", True, "ping")
    ack = send(cmd("c5", "resume"), 1)
    assert (ack.ok, ack.paused) == (True, False) and not pub.paused
    ack = send(cmd("c6", "reload"), 1)
    assert (ack.ok, ack.reason) == (False, "RuntimeError: config file has an error")
    assert [c.command.value for c in seen] == ["pause", "resume", "reload"]
    stats = pub.stats()
    assert stats.commands_invalid == 3 and stats.commands == 9
    assert all(m.qos == 1 and not m.retain for m in collector.on(pub.topics.cmd_ack))
    server.close()
    collector.close()


def test_health_is_periodic_with_caller_fields_and_counters(mosquitto, tmp_path, publishers):
    collector = Collector(mosquitto)
    calls = []

    def provider():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("camera thread died")
        return {"vision": {"frames_analysed_per_s": 4.5}, "type": "ignored"}

    cfg = build_config(mosquitto.url, tmp_path / "q.sqlite3", health_interval_s=1)
    pub = publishers(cfg, health_provider=provider)
    pub.start()
    pub.publish_event(_event())
    assert wait_for(lambda: len(collector.on(pub.topics.health)) >= 3, 10)
    health = [json.loads(m.payload) for m in collector.on(pub.topics.health)]
    assert health[0]["type"] == "health" and health[0]["schema"] == 1
    assert health[0]["vision"] == {"frames_analysed_per_s": 4.5}
    assert set(health[0]["mqtt"]) >= {"queued", "sent", "acked", "dropped", "backlog", "connected", "reconnects"}
    assert any("provider_error" in h for h in health)
    assert pub.stats().health_errors == 1
    collector.close()


def test_health_messages_in_one_millisecond_get_distinct_increasing_timestamps(tmp_path, publishers):
    """A health message's ts_ms identifies it: the server drops a ts_ms it already holds as a redelivery."""
    cfg = build_config("mqtt://127.0.0.1:1", tmp_path / "q.sqlite3")
    reporter = publishers(cfg).health
    stamps = [reporter.message({}).ts_ms for _ in range(50)]
    assert stamps == sorted(set(stamps)) and len(stamps) == 50


def test_password_auth_from_credential_refusal_and_redaction(broker_factory, tmp_path, publishers, caplog):
    passwd = shutil.which("mosquitto_passwd", path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin")
    require_system_dep(passwd, "mosquitto_passwd is not installed (apt-get install mosquitto)")
    secret = "Tr0ub4dor&3-horse"
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "aula-device", secret], check=True, capture_output=True)
    pwfile.chmod(0o600)
    broker = broker_factory(anonymous=False, listener_options=f"password_file {pwfile}")
    broker.start()
    caplog.set_level(logging.DEBUG)

    # Wrong password: start returns at once, the refusal is reported, the event stays queued.
    bad = build_config(broker.url, tmp_path / "bad.sqlite3", username="aula-device", password_env="AULA_PW")
    pub = publishers(bad, environ={"AULA_PW": "wrong-" + secret})
    t0 = time.monotonic()
    pub.start()
    pub.publish_event(_event())
    assert time.monotonic() - t0 < 1.0
    assert wait_for(lambda: pub.stats().last_error and "refused" in pub.stats().last_error, 10)
    assert not pub.connected and pub.stats().backlog == 1
    pub.stop()

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(secret + "\n")
    good = build_config(
        broker.url, tmp_path / "good.sqlite3", username="aula-device", password_credential="mqtt-password"
    )
    pub = publishers(good, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    pub.start()
    assert wait_for(lambda: pub.connected, 10)
    logging.getLogger("device.mqtt").warning("a careless log line with %s inside", secret)
    pub.stop()
    assert "a careless log line with *** inside" in caplog.text
    assert secret not in caplog.text


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_tls_with_client_certificate(broker_factory, tmp_path, publishers):
    require_system_dep(shutil.which("openssl"), "openssl is not installed (apt-get install openssl)")
    pki = tmp_path / "pki"
    pki.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca", cwd=pki)
    extensions = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost", "client": "extendedKeyUsage=clientAuth"}
    for name, ext in extensions.items():
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=pki)
        (pki / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=pki,
        )  # fmt: skip
    listener = (
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    broker = broker_factory(listener_options=listener)
    broker.start()
    tls = {"ca_certs": str(pki / "ca.crt"), "certfile": str(pki / "client.crt"), "keyfile": str(pki / "client.key")}
    collector = Collector(broker, **tls)
    cfg = build_config(
        broker.url,
        tmp_path / "q.sqlite3",
        tls={"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"), "key_file": str(pki / "client.key")},
    )
    assert cfg.broker.startswith("mqtts://")
    pub = publishers(cfg)
    pub.start()
    pub.publish_event(_event())
    assert wait_for(lambda: len(collector.events(pub.topics)) == 1, 10)
    collector.close()


def test_paho_connection_loss_is_logged_as_a_warning_other_errors_stay_errors(caplog):
    from device.common.paho_client import paho_logger

    log = paho_logger("aula.test.paho")
    assert paho_logger("aula.test.paho") is log and len(log.filters) == 1  # idempotent
    caplog.set_level(logging.INFO, logger="aula.test.paho")
    log.error("failed to receive on socket: %s", "[Errno 104] Connection reset by peer")
    log.error("Client is not connected. Socket: None)")  # DEBUG now, below the INFO level: not recorded
    log.error("Caught exception in on_connect: %s", "boom")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "failed to receive on socket: [Errno 104] Connection reset by peer"),
        ("ERROR", "Caught exception in on_connect: boom"),
    ]
