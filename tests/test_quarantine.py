"""Events of a newer schema are kept in quarantine, bounded, and replayed by a command after an upgrade."""

from __future__ import annotations

import json
import time

from device.contract import schema as contract_schema
from device.contract import topic
from server.__main__ import main
from server.testing import ServerHarness, make_event, wait_for
from tests.mosquitto import (  # noqa: F401 (pytest fixtures)
    broker_factory_fixture,
    device_simulator_fixture,
    mosquitto_fixture,
)
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture  # noqa: F401 (pytest fixtures)


def newer(event, version: int, **extra) -> bytes:
    """The event as a device on a newer schema would send it."""
    data = {**event.to_dict(), "schema": version, **extra}
    return json.dumps(data).encode()


def publish(device, event, payload: bytes) -> None:
    device.publish(topic(event.site, event.room, event.device_id, "events"), payload)


def test_newer_schema_is_quarantined_then_replayed_after_an_upgrade(
    tmp_path, mosquitto, device, database_url, monkeypatch, capsys
):
    """Before, a newer device's events were acknowledged and dropped with a counter: lost to an older server."""
    harness = ServerHarness(tmp_path / "server", mosquitto.url, database_url)
    server = harness.start()
    try:
        now = int(time.time() * 1000)
        readable_later = make_event(device_id="pi-new", seq=1, start_ms=now - 10_000)
        still_newer = make_event(device_id="pi-new", seq=2, start_ms=now - 8000)
        with_text = make_event(device_id="pi-new", seq=3, start_ms=now - 6000)
        publish(device, readable_later, newer(readable_later, 2))
        publish(device, still_newer, newer(still_newer, 3))
        publish(device, with_text, newer(with_text, 2, transcript="a pupil's words"))
        status = {"type": "status", "schema": 2, "device_id": "pi-new", "state": "online", "ts_ms": now}
        device.publish(topic("school1", "room101", "pi-new", "status"), json.dumps(status).encode())
        device.event(make_event(device_id="pi-old", seq=1, start_ms=now - 4000))
        assert wait_for(lambda: harness.stat("events_quarantined") == 3 and harness.stat("events_ingested") == 1)
        assert server.storage.quarantine.count() == 3
        assert server.storage.ingest.count_events() == 1
        reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
        assert reasons["newer_schema"] == 1  # the status: a device's state is not worth keeping unread
    finally:
        harness.stop()

    # The upgrade: this release now reads schema 2.
    monkeypatch.setattr(contract_schema, "SCHEMA_VERSION", 2)
    assert main(["replay-quarantine", "--database", database_url]) == 0
    out = capsys.readouterr().out
    assert "ingested 1" in out and "kept 1" in out and "refused_privacy 1" in out, out
    server = harness.start()
    try:
        assert server.storage.ingest.count_events() == 2
        assert server.storage.quarantine.count() == 1  # schema 3 waits for a later release
        stored = server.storage.devices.get("school1", "pi-new")
        assert stored is not None and stored["last_seen_ms"] >= now
    finally:
        harness.stop()
    # A second replay finds nothing new to store.
    assert main(["replay-quarantine", "--database", database_url]) == 0
    assert "ingested 0" in capsys.readouterr().out


def test_quarantine_is_bounded(tmp_path, mosquitto, device):
    harness = ServerHarness(tmp_path / "server", mosquitto.url, **{"intake.quarantine_max": 3})
    server = harness.start()
    try:
        for seq in range(5):
            event = make_event(device_id="pi-new", seq=seq)
            publish(device, event, newer(event, 2))
        assert wait_for(lambda: harness.stat("events_quarantined") == 3 and harness.stat("events_invalid") == 2)
        assert harness.client().get("/healthz").json()["invalid_by_reason"]["quarantine_full"] == 2
        assert server.storage.quarantine.count() == 3
    finally:
        harness.stop()
