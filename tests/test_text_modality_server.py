"""The text modality on the server: per-bucket sums (`words`), migration 3 on a v2 database, /live and the stream."""

from __future__ import annotations

import time

import pytest

from device.contract import COUNT_KEYS, Modality
from server.aggregates import BUCKET_MS, MODALITIES, SUM_COLUMNS, Sums, bucket_of
from server.config import DatabaseConfig
from server.db import Database
from server.migrations import MIGRATIONS
from server.storage import Storage
from server.storage.ingest import DeviceTouch, IncomingEvent
from server.testing import ServerHarness, SseReader, distribution, make_event, wait_for
from tests.mosquitto import (  # noqa: F401 (pytest fixtures)
    broker_factory_fixture,
    device_simulator_fixture,
    mosquitto_fixture,
)
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture, storage_fixture  # noqa: F401 (pytest fixtures)

TEXT = next(m for m in MODALITIES if m.name == Modality.TEXT.value)
WORDS_KEYS = {"distribution", "dominant", "valence", "arousal", "windows", "utterances"}
TEACHER_PW = "teacher-password"



def _write(storage: Storage, events) -> None:
    now = int(time.time() * 1000)
    touches = [DeviceTouch(e.site, e.device_id, e.room, now) for e in events]
    storage.ingest.write_batch(touches, [IncomingEvent(e, now, e.to_payload()) for e in events], [], [])


def test_words_are_summed_apart_from_faces_and_voices():
    calm, cross = distribution("neutral", 0.8), distribution("angry", 0.6)
    windows = [
        make_event(label="happy", text=calm, text_utterances=2),
        make_event(label="happy", speech=distribution("sad"), text=cross),
        make_event(label="surprise"),  # nothing said
        make_event(label="happy", text=calm, text_utterances=3),
    ]
    a, b, both = Sums(), Sums(), Sums()
    for i, event in enumerate(windows):
        (a if i % 2 else b).add_event(event)
        both.add_event(event)
    merged = Sums.from_row(tuple(x + y for x, y in zip(a.values(), b.values(), strict=True)))
    assert merged.values() == pytest.approx(both.values())
    summary = both.summary()
    assert TEXT.summary_key == "words" and TEXT.count_key == COUNT_KEYS[Modality.TEXT] == "text_utterances"
    words = summary["words"]
    assert set(words) == WORDS_KEYS and words["windows"] == 3 and words["utterances"] == 6
    assert summary["text_utterances"] == 6 and words["dominant"] == "neutral"
    assert words["distribution"]["neutral"] == pytest.approx((0.8 + 0.8 + 0.4 / 6) / 3, abs=1e-4)
    assert words["distribution"]["angry"] == pytest.approx((0.2 / 6 + 0.6 + 0.2 / 6) / 3, abs=1e-4)
    # Each modality keeps its own: the sad voices are not the words, the faces are neither.
    assert summary["voices"]["windows"] == 1 and summary["voices"]["dominant"] == "sad"
    assert summary["face"]["dominant"] == "happy" and summary["face"]["windows"] == 4
    quiet = Sums()
    quiet.add_event(make_event(label="sad", speech=distribution("sad")))
    assert quiet.summary()["words"] is None and quiet.summary()["text_utterances"] == 0


def test_aggregates_sum_text_per_bucket(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    start = bucket_of(int(time.time() * 1000)) - 60_000
    _write(storage, [make_event(device_id="pi-1", seq=0, start_ms=start - 30_000)])
    storage.devices.assign("school1", "pi-1", room["id"])
    calm, glad = distribution("neutral", 0.9), distribution("happy", 0.7)
    # Two batches into one bucket (the second adds to the row), and a bucket where nothing was said.
    _write(storage, [make_event(device_id="pi-1", seq=1, start_ms=start, text=calm, text_utterances=2)])
    _write(
        storage,
        [
            make_event(device_id="pi-1", seq=2, start_ms=start + 2000, text=glad),
            make_event(device_id="pi-1", seq=3, start_ms=start + 4000, text=calm, speech=glad, speech_segments=1),
        ],
    )
    _write(storage, [make_event(device_id="pi-1", seq=4, start_ms=start + BUCKET_MS, label="sad")])
    first, second = storage.aggregates.buckets(room["id"], start)
    assert first["windows"] == 3 and first["text_utterances"] == 4 and first["speech_segments"] == 1
    assert first["words"]["windows"] == 3 and first["words"]["utterances"] == 4
    assert first["words"]["dominant"] == "neutral"
    assert first["words"]["distribution"]["neutral"] == pytest.approx((0.9 * 2 + 0.05) / 3, abs=1e-4)
    assert first["voices"]["windows"] == 1 and first["voices"]["dominant"] == "happy"
    assert second["words"] is None and second["text_utterances"] == 0 and second["face"]["dominant"] == "sad"
    merged = storage.aggregates.merged(room["id"], start).summary()
    expected = Sums()
    for e in [make_event(text=calm, text_utterances=2), make_event(text=glad), make_event(text=calm)]:
        expected.add_event(e)
    assert merged["words"] == expected.summary()["words"]
    storage.segments.start(room["id"], "Reading aloud", "ana", at_ms=start)
    (segment,) = storage.segments.list(room["id"])
    assert segment["words"] == merged["words"] and segment["voices"] == merged["voices"]


def test_migration_3_adds_text_sums_to_a_v2_database_in_place(database_url, monkeypatch):
    """A database at schema 2 with face and speech data upgrades in place; its rows read as no words."""
    import server.db

    assert [m.version for m in MIGRATIONS] == sorted(m.version for m in MIGRATIONS)
    monkeypatch.setattr(server.db, "MIGRATIONS", MIGRATIONS[:2])
    db = Database(DatabaseConfig(url=database_url))
    try:
        assert db.migrate() == [1, 2]
        c = db.conn()
        room_id = c.fetchone(
            "INSERT INTO rooms (site, room, name, created_ms) VALUES ('school1', 'room101', 'Room 101', 0) RETURNING id"
        )[0]
        bucket = bucket_of(int(time.time() * 1000)) - 30_000
        # Two windows with faces and voices, as schema 2 stored them (every column but the text ones).
        old = Sums()
        for e in [make_event(speech=distribution("sad"), speech_segments=2), make_event()]:
            old.add_event(e)
        columns = [(col, v) for col, v in zip(SUM_COLUMNS, old.values(), strict=True) if col not in TEXT.columns]
        c.execute(
            f"INSERT INTO aggregates (room_id, bucket_ms, {', '.join(col for col, _ in columns)}) "
            f"VALUES (?, ?{', ?' * len(columns)})",
            (room_id, bucket, *(v for _, v in columns)),
        )
        monkeypatch.setattr(server.db, "MIGRATIONS", MIGRATIONS)
        assert db.migrate() == [m.version for m in MIGRATIONS if m.version > 2]
        assert 3 in [r[0] for r in c.fetchall("SELECT version FROM schema_migrations")]
        storage = Storage(db)
        (row,) = storage.aggregates.buckets(room_id, bucket)
        assert row["words"] is None and row["text_utterances"] == 0
        assert row["voices"] == old.summary()["voices"] and row["windows"] == 2
        # New windows into the same bucket add their words; the old windows stay without.
        _write(storage, [make_event(device_id="pi-1", seq=0, start_ms=bucket - 60_000)])
        storage.devices.assign("school1", "pi-1", room_id)
        _write(storage, [make_event(device_id="pi-1", seq=1, start_ms=bucket + 1000, text=distribution("fear"))])
        (row,) = storage.aggregates.buckets(room_id, bucket)
        assert row["windows"] == 3 and row["words"]["windows"] == 1 and row["words"]["utterances"] == 1
        assert row["words"]["dominant"] == "fear" and row["voices"]["windows"] == 1
    finally:
        db.close()


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{"devices.auto_assign": True})
    server = made.start()
    made.room_id = server.storage.rooms.create("school1", "room101", "Room 101")["id"]
    server.registry.add_room("school1", "room101", made.room_id)
    server.storage.users.create("ana", TEACHER_PW, "teacher")
    server.storage.users.add_room("ana", made.room_id)
    yield made
    made.stop()


def test_live_stream_and_segments_carry_the_words_mood(harness, device):
    client, _ = harness.login("ana", TEACHER_PW)
    room_id = harness.room_id
    stream = SseReader(f"{harness.base_url}/api/rooms/{room_id}/stream", cookies=client.cookies)
    try:
        assert stream.connected.wait(5) and stream.status_code == 200
        calm = distribution("neutral", 0.8)
        now = int(time.time() * 1000)
        events = [
            make_event(device_id="pi-101", seq=1, start_ms=now - 6000, label="happy"),  # nothing said
            make_event(device_id="pi-101", seq=2, start_ms=now - 4000, label="happy", text=calm, text_utterances=2),
            make_event(device_id="pi-101", seq=3, start_ms=now - 2000, label="happy", text=calm),
        ]
        for event in events:
            device.event(event)
        assert wait_for(lambda: harness.stat("events_ingested") == 3)
        assert wait_for(lambda: len(stream.of("window")) == 3, 5)
        quiet, first, second = (m.data for m in stream.of("window"))
        assert quiet["words"] is None and quiet["text_utterances"] == 0 and quiet["face"]["dominant"] == "happy"
        assert first["words"]["dominant"] == "neutral" and first["words"]["utterances"] == 2
        assert first["text_utterances"] == 2 and first["dominant"] == "happy" and first["voices"] is None
        assert second["words"]["windows"] == 1 and second["text_utterances"] == 1
    finally:
        stream.close()
    live = client.get(f"/api/rooms/{room_id}/live?minutes=5").json()
    words = live["current"]["words"]
    assert set(words) == WORDS_KEYS and words["dominant"] == "neutral"
    assert words["windows"] == 2 and words["utterances"] == 3 and live["current"]["text_utterances"] == 3
    assert words["distribution"]["neutral"] == pytest.approx(0.8)
    assert sum(b["words"]["windows"] for b in live["buckets"] if b["words"]) == 2
    assert all("words" in b and "text_utterances" in b for b in live["buckets"])
    assert "`words`" in client.get("/openapi.json").json()["paths"]["/api/rooms/{room_id}/live"]["get"]["description"]
