"""What senders can cost the server is bounded: retention by arrival, caps on unknown devices and their events,
a rate limit per device, forgetting silent devices, and a flood that does not delay other devices' events."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from device.contract import topic
from server import db as server_db
from server.config import DatabaseConfig
from server.db import Database
from server.migrations import MIGRATIONS
from server.storage import Storage
from server.storage.ingest import DeviceTouch, IncomingEvent, IngestRepository
from server.storage.quarantine import QuarantinedMessage, add_quarantined
from server.testing import DeviceSimulator, ServerHarness, make_event, wait_for
from tests.mosquitto import (  # noqa: F401 (pytest fixtures)
    broker_factory_fixture,
    device_simulator_fixture,
    mosquitto_fixture,
)
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture, storage_fixture  # noqa: F401 (pytest fixtures)

DAY_MS = 86_400_000




def test_migrations_apply_in_ascending_order_whatever_the_tuple_order(tmp_path, monkeypatch):
    shuffled = tuple(reversed([m for m in MIGRATIONS if m.version != 3]))  # out of order, and with a gap
    monkeypatch.setattr(server_db, "MIGRATIONS", shuffled)
    db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path}/order.sqlite3"))
    try:
        assert db.migrate() == sorted(m.version for m in shuffled)
    finally:
        db.close()


def test_retention_goes_by_arrival_time(storage):
    """A window dated ahead by its sender used to outlive retention, which went by the window's start."""
    now = int(time.time() * 1000)
    received_long_ago = now - 40 * DAY_MS
    dated_ahead = make_event(device_id="pi-1", seq=1, start_ms=now)  # claimed "now" when it arrived 40 days ago
    backlog = make_event(device_id="pi-1", seq=2, start_ms=now - 2 * DAY_MS)  # old window, arrived an hour ago
    for event, received in ((dated_ahead, received_long_ago), (backlog, now - 3_600_000)):
        touch = DeviceTouch(event.site, event.device_id, event.room, received)
        storage.ingest.write_batch([touch], [IncomingEvent(event, received, event.to_payload())], [], [])
    with storage.db.conn().transaction() as c:
        add_quarantined(c, [QuarantinedMessage("aula/v1/s/r/d/events", b"{}", "newer_schema", received_long_ago)], 10)
    done = storage.retention.apply(raw_days=30, aggregate_days=None, at_ms=now)
    assert done["events"] == 1 and done["quarantine"] == 1
    (row,) = storage.db.conn().fetchall("SELECT event_id FROM events")
    assert row[0] == backlog.event_id


def test_unassigned_events_are_capped_in_storage(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    now = int(time.time() * 1000)
    storage.ingest.write_batch([DeviceTouch("school1", "pi-a", "room101", now, room["id"])], [], [], [])
    events = [make_event(device_id="pi-x", seq=i, start_ms=now - 60_000 + i * 2000) for i in range(8)]
    events += [make_event(device_id="pi-a", seq=i, start_ms=now - 60_000 + i * 2000) for i in range(4)]
    touches = [DeviceTouch(e.site, e.device_id, e.room, now) for e in events]
    items = [IncomingEvent(e, now, e.to_payload()) for e in events]
    result = storage.ingest.write_batch(touches, items, [], [], unassigned_max=5)
    assert result.unassigned_full == 3 and len(result.inserted) == 9  # 5 unassigned, the assigned device's 4
    assert isinstance(storage.ingest, IngestRepository)
    assert storage.ingest.write_batch([], items[:1], [], [], unassigned_max=5).unassigned_full == 1


def test_unknown_devices_are_capped_and_forgotten_when_silent(tmp_path, mosquitto, device, database_url):
    """Before, every (site, device) a sender invented was held in memory and in the devices table for good."""
    overrides = {
        "intake.new_devices_per_site": 3,
        "intake.new_devices_total": 5,
        "intake.new_device_ttl_s": 3.0,
        "devices.refresh_s": 0.2,
        "devices.auto_assign": True,
    }
    harness = ServerHarness(tmp_path / "server", mosquitto.url, database_url, **overrides)
    server = harness.start()
    try:
        room = server.storage.rooms.create("school1", "room101", "Room 101")
        server.registry.add_room("school1", "room101", room["id"])
        for i in range(5):
            device.event(make_event(site="school1", room="nowhere", device_id=f"a-{i}", seq=1))
        for i in range(3):
            device.event(make_event(site="school2", room="nowhere", device_id=f"b-{i}", seq=1))
        device.event(make_event(site="school1", room="room101", device_id="pi-101", seq=1))  # gets a room: no cap
        assert wait_for(lambda: harness.stat("events_ingested") == 6 and harness.stat("events_invalid") == 3)
        assert harness.client().get("/healthz").json()["invalid_by_reason"]["unknown_device"] == 3
        assert server.registry.unassigned() == 5
        assert len(server.storage.devices.list()) == 6
        # Silent unassigned devices are forgotten (memory and table); the assigned one stays.
        assert wait_for(lambda: len(server.storage.devices.list()) == 1 and server.registry.unassigned() == 0, 12)
        device.event(make_event(site="school1", room="nowhere", device_id="a-9", seq=1))
        assert wait_for(lambda: harness.stat("events_ingested") == 7)
        assert server.storage.devices.get("school1", "a-9") is not None
    finally:
        harness.stop()


def test_each_device_is_rate_limited(tmp_path, mosquitto, device):
    overrides = {"intake.device_rate_per_s": 2.0, "intake.device_burst": 10}
    harness = ServerHarness(tmp_path / "server", mosquitto.url, **overrides)
    server = harness.start()
    try:
        now = int(time.time() * 1000)
        for i in range(60):
            device.event(make_event(device_id="pi-fast", seq=i, start_ms=now - 200_000 + i * 2000), wait=False)
        for i in range(5):
            device.event(make_event(device_id="pi-calm", seq=i, start_ms=now - 20_000 + i * 2000))
        assert wait_for(lambda: harness.stat("events_ingested") + harness.stat("events_invalid") == 65)
        limited = harness.client().get("/healthz").json()["invalid_by_reason"]["rate_limited"]
        stored = server.storage.ingest.count_events()
        assert 60 - 10 - 20 <= limited <= 60 - 10, limited  # the burst of 10, plus up to 10 s of refill at 2/s
        assert stored == 65 - limited
        calm = server.storage.db.conn().fetchone("SELECT COUNT(*) FROM events WHERE device_id = 'pi-calm'")
        assert calm[0] == 5
    finally:
        harness.stop()


def _flood(mosquitto_pub: str, port: int, device_id: str, count: int) -> None:
    """Publish `count` events from one device as fast as a C client can."""
    flood_topic = topic("school1", "room101", device_id, "events")
    start = int(time.time() * 1000) - 20_000
    lines = b"\n".join(make_event(device_id=device_id, seq=i, start_ms=start + i).to_payload() for i in range(count))
    args = [mosquitto_pub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", flood_topic, "-l"]
    subprocess.run(args, input=lines, check=True, timeout=60)


def test_a_flood_from_one_device_does_not_delay_the_others(tmp_path, mosquitto):
    """The flood's excess is refused from its topic, before decoding, and counted; every other device's event
    is stored, promptly. (The writer's share and turn-taking are checked directly in the next test.)"""
    mosquitto_pub = shutil.which("mosquitto_pub")
    if mosquitto_pub is None:
        pytest.skip("mosquitto_pub (mosquitto-clients) is not installed")
    # The others send 50 events/s each for 2 s (a device draining its backlog; a live one sends 0.5/s); the
    # flooding device sends 100 times as many, all at once. AULA_FLOOD_OTHERS and AULA_FLOOD_RATE size a longer run.
    others = int(os.environ.get("AULA_FLOOD_OTHERS", "8"))
    rate, seconds = float(os.environ.get("AULA_FLOOD_RATE", "50")), 2.0
    limits = {"intake.device_rate_per_s": 2.0 * rate, "intake.device_burst": int(5 * rate)}
    harness = ServerHarness(tmp_path / "server", mosquitto.url, **limits)
    server = harness.start()
    stored_at: dict[str, float] = {}
    write_batch = server.storage.ingest.write_batch

    def timed_write(*args, **kwargs):
        result = write_batch(*args, **kwargs)
        t = time.monotonic()
        stored_at.update((event_id, t) for event_id in result.inserted)
        return result

    server.storage.ingest.write_batch = timed_write
    sent: dict[str, float] = {}
    sims = [DeviceSimulator(mosquitto.port) for _ in range(others)]
    try:

        def calm(k: int) -> None:
            now, t0 = int(time.time() * 1000), time.monotonic()
            for seq in range(int(rate * seconds)):
                event = make_event(device_id=f"pi-{k}", seq=seq, start_ms=now - 30_000 + seq * 50)
                sent[event.event_id] = time.monotonic()
                sims[k].event(event, wait=False)
                time.sleep(max(0.0, t0 + (seq + 1) / rate - time.monotonic()))

        threads = [threading.Thread(target=calm, args=(k,)) for k in range(others)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        flood = int(100 * rate * seconds)
        _flood(mosquitto_pub, mosquitto.port, "pi-flood", flood)
        for t in threads:
            t.join()
        assert wait_for(lambda: all(e in stored_at for e in sent), 30), len(set(sent) - set(stored_at))
        latencies = sorted((stored_at[e] - sent[e]) * 1000 for e in sent)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
        print(
            f"others' publish-to-store p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms over {len(latencies)} events; "
            f"flood of {flood}: {reasons['rate_limited']} rate-limited, {reasons['shed']} shed"
        )
        # The latency target (p99 < 250 ms at the rates) is measured by `make soak` (tests/fault_suite.py),
        # not asserted here: on a loaded 2-core CI machine this burst's p99 ranges from 0.1 to 2 s. Only a stall
        # of the others behind the whole flood fails the test.
        assert p99 < 10_000, latencies[-10:]
        assert reasons["rate_limited"] > flood // 2
    finally:
        for sim in sims:
            sim.close()
        harness.stop()


def test_a_full_writer_queue_sheds_the_flooding_device_and_serves_the_others_in_turn(tmp_path):
    """Before, a full queue made every device's message wait, and the writer took the flood's items first."""
    from server.devices import DeviceRegistry
    from server.metrics import IngestStats
    from server.writer import BatchWriter, WriteItem

    db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path}/writer.sqlite3"))
    db.migrate()
    acked: list = []
    writer = BatchWriter(Storage(db), IngestStats(), DeviceRegistry(), acked.extend, batch_max=50, queue_max=100)
    now = int(time.time() * 1000)

    def item(device_id: str, seq: int) -> WriteItem:
        event = make_event(device_id=device_id, seq=seq, start_ms=now - 60_000 + seq)
        touch = DeviceTouch(event.site, event.device_id, event.room, now)
        return WriteItem("event", touch=touch, event=IncomingEvent(event, now, event.to_payload()), ack=seq)

    def submit_returns(it: WriteItem) -> bool | None:
        """What submit returns within 2 s; None when it is still waiting."""
        out: list = []
        thread = threading.Thread(target=lambda: out.append(writer.submit(it)), daemon=True)
        thread.start()
        thread.join(2.0)
        return out[0] if out else None

    try:
        for i in range(100):  # the writer is not running: the queue fills
            writer.submit(item("pi-flood", i))
        assert submit_returns(item("pi-flood", 100)) is False  # over its share of a full queue: shed
        assert submit_returns(item("pi-calm", 1000)) is True  # another device still gets in, at once
        first = writer._take()
        assert "pi-calm" in [i.touch.device_id for i in first[:2]]  # taken in turn, not after the flood
        assert writer._write(first)
        writer.last_error = "database down"  # while the database fails, a full queue is backpressure for all
        seq = 200
        while writer.backlog < 100:
            assert writer.submit(item("pi-other", seq))
            seq += 1
        waiting = threading.Thread(target=writer.submit, args=(item("pi-flood", 101),), daemon=True)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()
        writer.start()  # it takes a batch, which makes room; its commit clears last_error
        waiting.join(5)
        assert not waiting.is_alive()
        assert wait_for(lambda: len(acked) == 100 + 1 + (seq - 200) + 1, 10)  # all but the shed one
        assert storage_count(db) == len(acked) and 1000 in acked and 100 not in acked  # the shed one is the caller's
    finally:
        writer.stop()
        db.close()


def storage_count(db: Database) -> int:
    return Storage(db).ingest.count_events()
