"""Storage on SQLite and a real PostgreSQL: migrations, idempotent batches, aggregates, retention, users, segments."""

from __future__ import annotations

import time

import pytest

from server.aggregates import BUCKET_MS, SUM_COLUMNS, Sums, bucket_of
from server.config import DatabaseConfig
from server.db import Database, DatabaseError
from server.migrations import MIGRATIONS
from server.passwords import hash_password, verify_password
from server.storage import Storage
from server.storage.base import Conflict, NotFound
from server.storage.ingest import DeviceTouch, IncomingEvent
from server.testing import distribution, make_event
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture, storage_fixture  # noqa: F401 (pytest fixtures)

DAY_MS = 86_400_000



def _write(storage: Storage, events, room: str = "room101", received_ms: int | None = None):
    now = int(time.time() * 1000) if received_ms is None else received_ms
    touches = [DeviceTouch(e.site, e.device_id, e.room, now) for e in events]
    return storage.ingest.write_batch(touches, [IncomingEvent(e, now, e.to_payload()) for e in events], [], [])


def test_migrations_are_recorded_and_idempotent(database_url):
    db = Database(DatabaseConfig(url=database_url))
    try:
        assert db.migrate() == [m.version for m in MIGRATIONS]
        assert db.migrate() == []
        rows = db.conn().fetchall("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        # A version this release does not know means a newer release migrated the database: refuse to run.
        db.conn().execute("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (999, 'future', 0)")
        with pytest.raises(DatabaseError, match="newer release"):
            db.migrate()
    finally:
        db.close()


def test_batches_store_each_event_once_and_aggregate_by_room(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    with pytest.raises(Conflict):
        storage.rooms.create("school1", "room101", "again")
    start = bucket_of(int(time.time() * 1000)) - 60_000
    events = [make_event(device_id="pi-1", seq=i, start_ms=start + i * 2000, faces=i) for i in range(1, 6)]
    first = _write(storage, events)
    assert len(first.inserted) == 5 and first.duplicates == 0
    assert storage.devices.get("school1", "pi-1")["status"] == "new"
    # The same events again (a redelivery) plus one copy inside the batch: nothing is stored twice.
    again = _write(storage, [*events, events[0]])
    assert again.inserted == set() and again.duplicates == 6
    assert storage.ingest.count_events() == 5
    # A new device is not in any room: its events are not in a room's aggregates until it is assigned.
    assert storage.aggregates.merged(room["id"], start).windows == 0
    device, backfilled = storage.devices.assign("school1", "pi-1", room["id"])
    assert backfilled == 5 and device["status"] == "assigned" and device["room_id"] == room["id"]
    merged = storage.aggregates.merged(room["id"], start)
    assert merged.windows == 5 and merged.faces_sum == 15
    summary = merged.summary()
    assert summary["dominant"] == "happy" and summary["distribution"]["happy"] == pytest.approx(0.7)
    assert summary["faces"] == 3.0
    # Later events of the assigned device go straight to the room.
    late = make_event(device_id="pi-1", seq=9, start_ms=start + 20_000, label="sad", p=1.0)
    _write(storage, [late])
    buckets = storage.aggregates.buckets(room["id"], start)
    assert sum(b["windows"] for b in buckets) == 6
    assert all(b["t_ms"] % BUCKET_MS == 0 for b in buckets)
    with pytest.raises(NotFound):
        storage.devices.assign("school1", "nobody", room["id"])
    with pytest.raises(NotFound):
        storage.devices.assign("school1", "pi-1", 99999)


def test_sums_merge_by_addition():
    a, b, both = Sums(), Sums(), Sums()
    e1, e2 = make_event(label="happy", faces=2), make_event(label="sad", faces=6)
    a.add_event(e1)
    b.add_event(e2)
    both.add_event(e1)
    both.add_event(e2)
    merged = Sums.from_row(tuple(x + y for x, y in zip(a.values(), b.values(), strict=True)))
    assert merged.summary() == both.summary()
    assert both.summary()["faces"] == 4.0
    empty = Sums().summary()
    assert empty["distribution"] is None and empty["dominant"] is None and empty["valence"] is None


def test_sums_keep_each_modality_apart_and_merge_by_addition():
    calm, sad = distribution("neutral", 0.8), distribution("sad", 0.6)
    windows = [
        make_event(label="happy", speech=calm, speech_segments=2),
        make_event(label="happy", speech=sad),
        make_event(label="surprise"),  # nobody spoke
        make_event(label="happy", speech=calm, speech_segments=3),
    ]
    a, b, both = Sums(), Sums(), Sums()
    for i, event in enumerate(windows):
        (a if i % 2 else b).add_event(event)
        both.add_event(event)
    merged = Sums.from_row(tuple(x + y for x, y in zip(a.values(), b.values(), strict=True)))
    assert merged.values() == pytest.approx(both.values())  # equal up to the order of float additions
    assert {k: merged.summary()[k]["dominant"] for k in ("face", "voices")} == {"face": "happy", "voices": "neutral"}
    summary = both.summary()
    assert summary["windows"] == 4 and summary["speech_segments"] == 6
    voices = summary["voices"]
    assert voices["windows"] == 3 and voices["segments"] == 6 and voices["dominant"] == "neutral"
    assert voices["distribution"]["neutral"] == pytest.approx((0.8 + 0.8 + 0.4 / 6) / 3, abs=1e-4)
    assert voices["distribution"]["sad"] == pytest.approx((0.2 / 6 + 0.6 + 0.2 / 6) / 3, abs=1e-4)
    assert sum(voices["distribution"].values()) == pytest.approx(1.0, abs=1e-3)
    assert voices["arousal"] < summary["face"]["arousal"]  # calm voices beside happy faces
    face = summary["face"]
    assert face["windows"] == 4 and face["dominant"] == "happy" and "segments" not in face
    assert face["distribution"]["happy"] == pytest.approx((0.7 * 3 + 0.05) / 4, abs=1e-4)
    # Face windows without speech: no voices at all, not a mood of silence.
    quiet = Sums()
    quiet.add_event(make_event(label="sad"))
    assert quiet.summary()["voices"] is None and quiet.summary()["face"]["dominant"] == "sad"
    empty = Sums().summary()
    assert empty["face"] is None and empty["voices"] is None and empty["speech_segments"] == 0


def test_aggregates_sum_speech_across_batches_and_buckets(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    start = bucket_of(int(time.time() * 1000)) - 60_000
    _write(storage, [make_event(device_id="pi-1", seq=0, start_ms=start - 30_000)])
    storage.devices.assign("school1", "pi-1", room["id"])
    angry, calm = distribution("angry", 0.7), distribution("neutral", 0.9)
    # Two batches into the same bucket (each an upsert adding to the row), and a bucket without speech.
    _write(storage, [make_event(device_id="pi-1", seq=1, start_ms=start, speech=angry, speech_segments=2)])
    _write(
        storage,
        [
            make_event(device_id="pi-1", seq=2, start_ms=start + 2000, speech=angry),
            make_event(device_id="pi-1", seq=3, start_ms=start + 4000, speech=calm),
            make_event(device_id="pi-1", seq=4, start_ms=start + 6000),
        ],
    )
    _write(storage, [make_event(device_id="pi-1", seq=5, start_ms=start + BUCKET_MS, label="sad")])
    first, second = storage.aggregates.buckets(room["id"], start)
    assert first["t_ms"] == start and first["windows"] == 4 and first["speech_segments"] == 4
    assert first["voices"]["windows"] == 3 and first["voices"]["segments"] == 4
    assert first["voices"]["dominant"] == "angry"
    assert first["voices"]["distribution"]["angry"] == pytest.approx((0.7 * 2 + 0.1 / 6) / 3, abs=1e-4)
    assert first["face"]["dominant"] == "happy" and first["face"]["windows"] == 4
    assert second["voices"] is None and second["face"]["dominant"] == "sad" and second["speech_segments"] == 0
    merged = storage.aggregates.merged(room["id"], start).summary()
    assert merged["voices"] == first["voices"] and merged["face"]["windows"] == 5
    expected = Sums()
    for e in [make_event(speech=angry, speech_segments=2), make_event(speech=angry), make_event(speech=calm)]:
        expected.add_event(e)
    assert merged["voices"] == expected.summary()["voices"]
    # The report carries them too.
    storage.segments.start(room["id"], "Debate", "ana", at_ms=start)
    (segment,) = storage.segments.list(room["id"])
    assert segment["voices"] == merged["voices"] and segment["face"] == merged["face"]


def test_aggregates_table_has_the_sum_columns(storage):
    cursor = storage.db.conn().execute("SELECT * FROM aggregates WHERE 1 = 0")
    assert tuple(col[0] for col in cursor.description) == ("room_id", "bucket_ms", *SUM_COLUMNS)


def test_migration_adds_modality_sums_in_place(database_url, monkeypatch):
    """A database of the first schema with data upgrades in place; rows written before have no modality data."""
    import server.db

    monkeypatch.setattr(server.db, "MIGRATIONS", MIGRATIONS[:1])
    db = Database(DatabaseConfig(url=database_url))
    try:
        assert db.migrate() == [1]
        c = db.conn()
        room_id = c.fetchone(
            "INSERT INTO rooms (site, room, name, created_ms) VALUES ('school1', 'room101', 'Room 101', 0) RETURNING id"
        )[0]
        bucket = bucket_of(int(time.time() * 1000)) - 30_000
        # Two happy windows of four faces each, as the first schema stored them.
        probs = [1.4 if label == "happy" else 0.1 for label in distribution()]
        c.execute(
            "INSERT INTO aggregates (room_id, bucket_ms, windows, dist_n, p_angry, p_disgust, p_fear, p_happy, "
            "p_neutral, p_sad, p_surprise, valence_n, valence_sum, arousal_n, arousal_sum, faces_n, faces_sum) "
            "VALUES (?, ?, 2, 2, ?, ?, ?, ?, ?, ?, ?, 2, 0.88, 2, 0.9, 2, 8)",
            (room_id, bucket, *probs),
        )
        monkeypatch.setattr(server.db, "MIGRATIONS", MIGRATIONS)
        assert db.migrate() == [m.version for m in MIGRATIONS[1:]]
        storage = Storage(db)
        old = storage.aggregates.merged(room_id, bucket).summary()
        assert old["windows"] == 2 and old["dominant"] == "happy" and old["faces"] == 4.0
        assert old["face"] is None and old["voices"] is None and old["speech_segments"] == 0
        # New windows into the same bucket: the modalities show only what was measured with them.
        _write(storage, [make_event(device_id="pi-1", seq=0, start_ms=bucket - 60_000)])
        storage.devices.assign("school1", "pi-1", room_id)
        _write(storage, [make_event(device_id="pi-1", seq=1, start_ms=bucket + 1000, speech=distribution("sad"))])
        (row,) = storage.aggregates.buckets(room_id, bucket)
        assert row["windows"] == 3 and row["face"]["windows"] == 1 and row["voices"]["windows"] == 1
        assert row["voices"]["dominant"] == "sad" and row["voices"]["segments"] == 1
    finally:
        db.close()


def test_retention_deletes_raw_events_and_keeps_aggregates(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    now = int(time.time() * 1000)
    old = [make_event(device_id="pi-1", seq=i, start_ms=now - 40 * DAY_MS + i * 2000) for i in range(1, 4)]
    new = [make_event(device_id="pi-1", seq=10, start_ms=now - 60_000)]
    _write(storage, old, received_ms=now - 40 * DAY_MS + 10_000)  # retention goes by when the server received them
    storage.devices.assign("school1", "pi-1", room["id"])
    _write(storage, new)
    assert storage.ingest.count_events() == 4
    done = storage.retention.apply(raw_days=30, aggregate_days=None)
    assert done["events"] == 3
    assert storage.ingest.count_events() == 1
    assert storage.aggregates.merged(room["id"], now - 41 * DAY_MS).windows == 4  # aggregates outlive the raw events
    done = storage.retention.apply(raw_days=30, aggregate_days=35)
    assert done["aggregates"] >= 1
    assert storage.aggregates.merged(room["id"], now - 41 * DAY_MS).windows == 1


def test_users_sessions_and_tokens(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    other = storage.rooms.create("school1", "room102", "Room 102")
    storage.users.create("ana", "teacher-pass", "teacher")
    with pytest.raises(Conflict):
        storage.users.create("ana", "teacher-pass", "teacher")
    with pytest.raises(ValueError):
        storage.users.create("bob", "short", "teacher")
    with pytest.raises(ValueError):
        storage.users.create("bob", "long enough", "janitor")
    user = storage.users.authenticate("ana", "teacher-pass")
    assert user is not None and storage.users.authenticate("ana", "nope-nope") is None
    assert storage.users.authenticate("ghost", "teacher-pass") is None
    storage.users.add_room("ana", room["id"])
    storage.users.add_room("ana", room["id"])  # twice is fine
    assert storage.users.room_ids(user["id"]) == {room["id"]}
    token, csrf = storage.sessions.create(user["id"], ttl_ms=60_000)
    session = storage.sessions.get(token)
    assert session["username"] == "ana" and session["csrf"] == csrf
    stored = storage.db.conn().fetchall("SELECT token_hash FROM sessions")
    assert all(token not in row[0] for row in stored)  # only a hash is kept
    storage.sessions.delete(token)
    assert storage.sessions.get(token) is None
    expired, _ = storage.sessions.create(user["id"], ttl_ms=-1)
    assert storage.sessions.get(expired) is None
    api = storage.tokens.create("wall display", [other["id"]], "admin")
    assert api["token"].startswith("aula_")
    assert storage.tokens.get(api["token"])["rooms"] == {other["id"]}
    assert storage.tokens.get("aula_forged") is None
    with pytest.raises(NotFound):
        storage.tokens.create("bad", [4242], "admin")


def test_password_hashes():
    stored = hash_password("hunter2hunter2")
    assert stored.startswith("$argon2id$") and "hunter2" not in stored
    assert verify_password("hunter2hunter2", stored)
    assert not verify_password("hunter2hunter3", stored)
    assert not verify_password("x", "garbage")
    assert hash_password("same") != hash_password("same")  # salted


def test_segments_summarise_their_time_span(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    t0 = bucket_of(int(time.time() * 1000)) - 120_000
    _write(storage, [make_event(device_id="pi-1", seq=0, start_ms=t0 - 50_000)])
    storage.devices.assign("school1", "pi-1", room["id"])
    first = storage.segments.start(room["id"], "Lecture", "ana", at_ms=t0)
    _write(storage, [make_event(device_id="pi-1", seq=i, start_ms=t0 + i * 2000, label="happy") for i in range(1, 6)])
    second = storage.segments.start(room["id"], "Group work", "ana", at_ms=t0 + 60_000)  # ends the first
    sad = [make_event(device_id="pi-1", seq=i, start_ms=t0 + 62_000 + i * 2000, label="sad") for i in range(5)]
    _write(storage, sad)
    stopped = storage.segments.stop(room["id"], second["id"], at_ms=t0 + 90_000)
    assert stopped == {"id": second["id"], "end_ms": t0 + 90_000}
    assert storage.segments.stop(room["id"], second["id"])["end_ms"] == t0 + 90_000  # a second stop keeps the end
    with pytest.raises(NotFound):
        storage.segments.stop(room["id"] + 1, first["id"])
    segments = storage.segments.list(room["id"])
    assert [s["name"] for s in segments] == ["Lecture", "Group work"]
    assert segments[0]["end_ms"] == t0 + 60_000
    assert segments[0]["windows"] == 5 and segments[0]["dominant"] == "happy"
    assert segments[1]["windows"] == 5 and segments[1]["dominant"] == "sad"
    assert segments[0]["faces_mean"] == 4.0


def test_device_state_shown_on_the_dashboard():
    from server.devices import effective_state

    now = 1_000_000
    assert effective_state("new", None, None, now, now, 120_000) == ("new", None)
    assert effective_state("assigned", "online", None, now - 1000, now, 120_000) == ("online", None)
    assert effective_state("assigned", "degraded", "camera", now, now, 120_000) == ("degraded", "camera")
    assert effective_state("assigned", "stopped", None, now - 10**7, now, 120_000) == ("stopped", None)
    state, reason = effective_state("assigned", "online", None, now - 300_000, now, 120_000)
    assert state == "offline" and reason == "no messages for 300 s"
    assert effective_state("assigned", None, None, now, now, 120_000) == ("online", None)


def test_health_trends_outlive_a_restart_and_stay_bounded(storage):
    """Health through the intake and the batch writer; a monitor filled from the database, as at a server's start,
    shows the trend the running one built, bounded to fleet.trend_samples; a deleted device's rows go with it."""
    from device.contract import DeviceState, HealthMessage, topic
    from server.devices import DeviceRegistry
    from server.fleet import FleetMonitor
    from server.ingest import Ingestor
    from server.metrics import IngestStats
    from server.writer import BatchWriter

    samples = 3
    stats, registry = IngestStats(), DeviceRegistry()
    writer = BatchWriter(storage, stats, registry, lambda tokens: None, trend_samples=samples)
    running = FleetMonitor(alert_after_s=60, samples=samples)
    ingestor = Ingestor(stats, registry, writer, None, None)
    ingestor.fleet = running

    sent = iter(range(int(time.time() * 1000), 2**62))  # each message its own ts_ms

    def health(device_id: str, fps: float) -> bytes:
        message = HealthMessage(device_id=device_id, ts_ms=next(sent), state=DeviceState.ONLINE,
                                vision={"frames_analysed_per_s": fps, "frames_dropped": 2},
                                host={"cpu_temp_c": 50.5}, mqtt={"backlog": 1})
        payload = message.to_payload()
        assert ingestor.handle(topic("school1", "room101", device_id, "health"), payload) == "health"
        return payload

    for fps in (1.0, 2.0, 3.0, 4.0):  # one batch with more than the trend keeps
        health("pi-1", fps)
    health("pi-2", 9.0)
    assert writer._write(writer._take())
    for fps in (5.0, 6.0):  # a later batch: the older rows are deleted
        last = health("pi-1", fps)
    assert writer._write(writer._take())
    # The broker delivers the last message again (QoS 1, its acknowledgement lost): one point, not two.
    assert ingestor.handle(topic("school1", "room101", "pi-1", "health"), last) == "health"
    assert writer._write(writer._take())

    db = Database(storage.db.config)  # the restarted server's own connection to the same database
    try:
        stored = Storage(db).health_trends
        restarted = FleetMonitor(alert_after_s=60, samples=samples)
        restarted.restore(stored.recent(samples))
        trend = restarted.trend("school1", "pi-1")
        assert trend == running.trend("school1", "pi-1")
        assert [t["frames_per_s"] for t in trend] == [4.0, 5.0, 6.0]
        restarted.note_trend("school1", "pi-1", {"frames_per_s": 6.0}, 0, HealthMessage.from_payload(last).ts_ms)
        assert restarted.trend("school1", "pi-1") == trend  # delivered again after a restart: still one point
        assert trend[-1] == {"t_ms": trend[-1]["t_ms"], "frames_per_s": 6.0, "frames_dropped": 2.0,
                             "detect_ms_p95": None, "cpu_temp_c": 50.5, "backlog": 1.0}
        assert restarted.trend("school1", "pi-2") == running.trend("school1", "pi-2") != []
        assert stored.count("school1", "pi-1") == samples
        assert storage.devices.forget_new(int(time.time() * 1000) + 1000) == 2
        assert stored.recent(samples) == {}
    finally:
        db.close()


def test_a_device_keeps_the_time_it_entered_its_reported_state_until_the_state_changes(storage):
    from device.contract import DeviceState, StatusMessage

    touch = DeviceTouch("school1", "pi-1", "room101", 1_000)
    storage.ingest.write_batch([touch], [], [], [])

    def status(state: DeviceState, received_ms: int) -> int | None:
        message = StatusMessage(device_id="pi-1", state=state, ts_ms=received_ms, reason=None)
        storage.ingest.write_batch([], [], [("school1", "pi-1", message, message.to_payload(), received_ms)], [])
        return storage.devices.get("school1", "pi-1")["state_since_ms"]

    assert storage.devices.get("school1", "pi-1")["state_since_ms"] is None  # no status yet
    assert status(DeviceState.DEGRADED, 2_000) == 2_000
    assert status(DeviceState.DEGRADED, 3_000) == 2_000  # the same state again: still since its first report
    assert status(DeviceState.ONLINE, 4_000) == 4_000
