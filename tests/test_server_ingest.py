"""Ingest end to end through a real mosquitto into SQLite and PostgreSQL: once-only storage, restarts, summaries."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from device.contract import topic
from server.testing import ServerHarness, make_event, wait_for
from tests.mosquitto import (  # noqa: F401 (pytest fixtures)
    broker_factory_fixture,
    device_simulator_fixture,
    mosquitto_fixture,
)
from tests.mqtt_helpers import Collector
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture  # noqa: F401 (pytest fixtures)


@pytest.fixture
def harness(tmp_path, mosquitto, database_url):
    made = ServerHarness(tmp_path / "server", mosquitto.url, database_url, **{"summaries.interval_s": 0.5})
    yield made
    made.stop()


def test_events_status_and_health_are_stored_once(harness, device):
    server = harness.start()
    storage = server.storage
    room = storage.rooms.create("school1", "room101", "Room 101")
    server.registry.add_room("school1", "room101", room["id"])
    t0 = int(time.time() * 1000) - 30_000
    events = [make_event(device_id="pi-101", seq=i, start_ms=t0 + i * 2000) for i in range(10)]
    for e in events:
        device.event(e)
    for e in events[:4]:  # a device re-sends when a PUBACK was lost
        device.event(e)
    device.status("school1", "room101", "pi-101", "degraded", "camera: no frames for 10 s")
    device.health("school1", "room101", "pi-101", vision={"detect_ms_p50": 18.2})
    assert wait_for(lambda: harness.stat("events_ingested") == 10 and harness.stat("health_messages") == 1)
    assert wait_for(lambda: harness.stat("events_duplicate") == 4)
    assert storage.ingest.count_events() == 10
    assert wait_for(lambda: storage.devices.get("school1", "pi-101")["health"] is not None)
    listed = storage.devices.get("school1", "pi-101")
    assert listed["status"] == "new" and listed["reported_room"] == "room101"
    assert listed["state"] == "degraded" and listed["reason"] == "camera: no frames for 10 s"
    assert listed["health"]["vision"] == {"detect_ms_p50": 18.2}
    # An admin assigns the new device: its stored events count for the room from then on.
    _, backfilled = storage.devices.assign("school1", "pi-101", room["id"])
    assert backfilled == 10
    server.registry.update_rooms({("school1", "pi-101"): (room["id"], "room101")})
    device.event(make_event(device_id="pi-101", seq=11))
    assert wait_for(lambda: storage.aggregates.merged(room["id"], int(time.time() * 1000) - 60_000).windows == 11)
    health = harness.client().get("/healthz").json()
    assert health["events_ingested"] == 11 and health["events_duplicate"] == 4 and health["events_invalid"] == 0
    assert health["broker_connected"] is True and health["database"] == "ok"


def test_invalid_messages_are_counted_by_reason_and_never_stored(harness, device):
    harness.start()
    good = make_event(device_id="pi-101")
    wrong_room = make_event(device_id="pi-101", room="room999")
    device.publish(topic("school1", "room101", "pi-101", "events"), wrong_room.to_payload())  # topic != payload
    device.publish(topic("school1", "room101", "pi-101", "events"), b"\xff\xfe not utf-8")
    device.publish(topic("school1", "room101", "pi-101", "events"), b"{not json")
    device.publish(topic("school1", "room101", "pi-101", "events"), b"x" * 20_000)
    bad_range = json.loads(good.to_payload())
    bad_range["valence"] = 7
    device.publish(topic("school1", "room101", "pi-101", "events"), json.dumps(bad_range).encode())
    device.publish(topic("school1", "room101", "pi-101", "status"), b'{"type":"status","schema":1}')
    few_faces = json.loads(good.to_payload())
    few_faces["counts"]["faces"] = 2  # a face distribution of two pupils describes individuals
    device.publish(topic("school1", "room101", "pi-101", "events"), json.dumps(few_faces).encode())
    with_text = json.loads(good.to_payload())
    with_text["transcript"] = "what the teacher said"
    device.publish(topic("school1", "room101", "pi-101", "events"), json.dumps(with_text).encode())
    wrong_device = b'{"type":"health","schema":1,"device_id":"x","ts_ms":1,"state":"online"}'
    device.publish(topic("school1", "room101", "pi-101", "health"), wrong_device)
    device.event(good)
    # MQTT 5: the server's CONNECT sets a Maximum Packet Size, so the broker drops the 20 kB payload itself.
    assert wait_for(lambda: harness.stat("events_ingested") == 1 and harness.stat("events_invalid") == 8)
    reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
    assert reasons["topic_mismatch"] == 2  # the event and the health report
    assert reasons["not_utf8"] == 1 and reasons["not_json"] == 1 and reasons["oversized"] == 0
    assert reasons["schema"] == 2
    assert reasons["privacy"] == 2  # the two-face distribution and the transcript
    assert harness.server.storage.ingest.count_events() == 1


def test_restart_with_persistent_session_loses_nothing(harness, device):
    harness.start()
    first = [make_event(device_id="pi-101", seq=i) for i in range(20)]
    for e in first:
        device.event(e)
    assert wait_for(lambda: harness.stat("events_ingested") == 20)
    harness.stop()
    # Published while the server is down: the broker keeps them in the server's session.
    while_down = [make_event(device_id="pi-101", seq=100 + i) for i in range(30)]
    for e in while_down:
        device.event(e)
    server = harness.start()
    assert wait_for(lambda: harness.stat("events_ingested") == 30, timeout=15)
    assert server.storage.ingest.count_events() == 50
    stored = {r[0] for r in server.storage.db.conn().fetchall("SELECT event_id FROM events")}
    assert stored == {e.event_id for e in first + while_down}


def test_unacknowledged_events_are_redelivered_after_a_crash_and_stored_once(harness, device):
    server = harness.start()
    # Simulate a crash after the commit but before the PUBACKs leave: nothing is acknowledged.
    server.broker.ack = lambda tokens: None
    events = [make_event(device_id="pi-101", seq=i) for i in range(15)]
    for e in events:
        device.event(e, wait=False)
    assert wait_for(lambda: harness.stat("events_ingested") == 15)
    server._intake_open.clear()
    server.broker._client.disconnect()  # without acks: the broker still owes these to the session
    server.broker._client.loop_stop()
    server.broker = None
    harness.stop()
    restarted = harness.start()
    assert wait_for(lambda: harness.stat("events_duplicate") == 15, timeout=15), restarted.stats.snapshot()
    assert harness.stat("events_ingested") == 0
    assert restarted.storage.ingest.count_events() == 15


def test_summary_is_retained_on_the_room_topic(harness, device, mosquitto):
    server = harness.start()
    room = server.storage.rooms.create("school1", "room101", "Room 101")
    server.storage.rooms.create("school1", "room102", "Room 102")
    harness.stop()
    harness.overrides["devices.auto_assign"] = True
    server = harness.start()
    for i in range(6):
        device.event(make_event(device_id="pi-101", seq=i, label="happy" if i < 4 else "sad", faces=3))
        device.event(make_event(device_id="pi-102", seq=i, label="happy", faces=5))
    device.status("school1", "room101", "pi-101", "online")
    device.status("school1", "room101", "pi-102", "online")
    assert wait_for(lambda: harness.stat("events_ingested") == 12)
    assert server.storage.devices.get("school1", "pi-101")["room_id"] == room["id"]  # auto-assigned by topic
    summary_topic = "aula/v1/school1/room101/summary"
    assert wait_for(lambda: harness.stat("summaries_published") >= 1, timeout=5)
    time.sleep(0.7)  # the newest summary has everything
    late = Collector(mosquitto, summary_topic, client_id="late-dashboard", persistent=False)
    try:
        assert wait_for(lambda: late.on(summary_topic), 5), "no retained summary"
        message = late.on(summary_topic)[0]
        assert message.retain
        doc = json.loads(message.payload)
    finally:
        late.close()
    assert doc["type"] == "room_summary" and doc["room_id"] == room["id"]
    assert doc["window"]["windows"] == 12 and doc["dominant"] == "happy"
    assert doc["devices_online"] == 2 and doc["faces"] == 4.0
    assert set(doc["distribution"]) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}


def test_summaries_are_rate_limited_per_room(tmp_path, mosquitto, device):
    harness = ServerHarness(tmp_path / "s", mosquitto.url, **{"summaries.interval_s": 2.0, "devices.auto_assign": True})
    server = harness.start()
    try:
        room = server.storage.rooms.create("school1", "room101", "Room 101")
        server.registry.add_room("school1", "room101", room["id"])
        summaries = Collector(mosquitto, "aula/v1/school1/room101/summary", client_id="summ", persistent=False)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.5:
            device.event(make_event(device_id="pi-101"), wait=False)
            time.sleep(0.05)
        time.sleep(0.3)
        times = [m.timestamp for m in summaries.messages]
        summaries.close()
        assert 2 <= len(times) <= 3, times
        assert all(b - a >= 1.9 for a, b in itertools.pairwise(times))
    finally:
        harness.stop()


def test_retention_sweep_keeps_aggregates(harness, device):
    harness.overrides["retention.raw_days"] = 30
    harness.overrides["intake.max_age_s"] = 60 * 86_400  # let 45-day-old windows in, to see retention remove them
    server = harness.start()
    room = server.storage.rooms.create("school1", "room101", "Room 101")
    server.registry.add_room("school1", "room101", room["id"])
    now = int(time.time() * 1000)
    device.event(make_event(device_id="pi-101", seq=0))
    assert wait_for(lambda: harness.stat("events_ingested") == 1)
    server.storage.devices.assign("school1", "pi-101", room["id"])
    server.registry.update_rooms({("school1", "pi-101"): (room["id"], "room101")})
    for i in range(1, 5):
        device.event(make_event(device_id="pi-101", seq=i, start_ms=now - 45 * 86_400_000 + i * 2000))
    assert wait_for(lambda: harness.stat("events_ingested") == 5)
    assert server.retention.sweep()["events"] == 0  # retention goes by arrival: all five arrived just now
    later = now + 31 * 86_400_000  # a month on, the 45-day-old windows (and the recent one) have gone
    assert server.storage.retention.apply(30, None, at_ms=later)["events"] == 5
    assert server.storage.ingest.count_events() == 0
    assert server.storage.aggregates.merged(room["id"], now - 46 * 86_400_000).windows == 5


def test_mqtt_311_persistent_session(tmp_path, mosquitto, device):
    """The 3.1.1 path (clean_session false), as used with brokers that speak only 3.1.1."""
    harness = ServerHarness(tmp_path / "s311", mosquitto.url, **{"mqtt.protocol": "3.1.1"})
    try:
        harness.start()
        device.event(make_event(seq=1))
        assert wait_for(lambda: harness.stat("events_ingested") == 1)
        harness.stop()
        for seq in range(2, 12):
            device.event(make_event(seq=seq))
        server = harness.start()
        assert wait_for(lambda: harness.stat("events_ingested") == 10, timeout=15)
        assert server.storage.ingest.count_events() == 11
    finally:
        harness.stop()


def test_shared_subscription_splits_the_load(tmp_path, mosquitto, device, database_url):
    """Two instances in one $share group store every event once between them; each one's streams see all."""
    common = {"mqtt.shared_group": "aula", "devices.auto_assign": True}
    first = ServerHarness(tmp_path / "a", mosquitto.url, database_url, **common)
    second = ServerHarness(tmp_path / "b", mosquitto.url, database_url, **common)
    try:
        server_a = first.start()
        room = server_a.storage.rooms.create("school1", "room101", "Room 101")
        server_b = second.start()
        for server in (server_a, server_b):
            server.registry.add_room("school1", "room101", room["id"])
            assert server.live_feed is not None and server.live_feed.wait_subscribed(10)
        seen = {id(s): [] for s in (server_a, server_b)}
        for server in (server_a, server_b):  # count what each instance would stream, without HTTP
            server.hub.watched = lambda room_id: True
            server.hub.publish = lambda room_id, kind, data, s=server: seen[id(s)].append(data)
        events = [make_event(device_id=f"pi-{i % 4}", seq=i) for i in range(200)]
        for e in events:
            device.event(e, wait=False)
        total = lambda: first.stat("events_ingested") + second.stat("events_ingested")  # noqa: E731
        assert wait_for(lambda: total() == 200, timeout=20), (first.stat("events_ingested"), second.stat("batches"))
        assert first.stat("events_ingested") > 0 and second.stat("events_ingested") > 0
        assert server_a.storage.ingest.count_events() == 200
        assert wait_for(lambda: all(len(v) == 200 for v in seen.values()), 5), {k: len(v) for k, v in seen.items()}
    finally:
        second.stop()
        first.stop()


def test_event_times_are_checked_against_the_server_clock(harness, device):
    """A future-dated window would pin the room's current mood and escape retention; a very old one would rewrite
    old lesson reports. Both are refused and counted; a backlog within the window (a device back online) is kept."""
    harness.start()
    now = int(time.time() * 1000)
    day = 24 * 3600 * 1000
    device.event(make_event(device_id="pi-101", seq=1, start_ms=now + 3600 * 1000))  # an hour ahead
    device.event(make_event(device_id="pi-101", seq=2, start_ms=now - 4 * day))  # older than 3 days
    device.event(make_event(device_id="pi-101", seq=3, start_ms=now - 2 * day))  # a backlog: kept
    device.event(make_event(device_id="pi-101", seq=4, start_ms=now + 60 * 1000))  # a clock a minute fast: kept
    assert wait_for(lambda: harness.stat("events_ingested") == 2 and harness.stat("events_invalid") == 2)
    reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
    assert reasons["future"] == 1 and reasons["too_old"] == 1
    assert harness.server.storage.ingest.count_events() == 2
