"""API tokens expire, are listed without their secrets and are revoked; a refused token fails on its next request,
and a stream opened with it ends."""

from __future__ import annotations

import pytest

from server.config import DatabaseConfig
from server.db import Database
from server.migrations import MIGRATIONS
from server.storage import Storage
from server.storage.base import NotFound, now_ms
from server.testing import ServerHarness, SseReader, wait_for
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture, storage_fixture  # noqa: F401 (pytest fixtures)

ADMIN_PW = "admin-password"
DAY_MS = 86_400_000



def test_tokens_expire_list_without_secrets_and_revoke(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    storage.users.create("admin", ADMIN_PW, "admin")
    made = storage.tokens.create("wall", [room["id"]], "admin")
    assert made["expires_ms"] - made["created_ms"] == 90 * DAY_MS  # the default lifetime
    short = storage.tokens.create("export", [room["id"]], "admin", expires_days=1)
    assert storage.tokens.get(made["token"])["id"] == made["id"]
    listed = storage.tokens.list()
    assert [t["name"] for t in listed] == ["wall", "export"]
    assert made["token"] not in str(listed) and all("token" not in t for t in listed)
    assert listed[0]["room_ids"] == [room["id"]] and listed[0]["created_by"] == "admin"
    assert not listed[0]["revoked"] and not listed[0]["expired"]
    storage.tokens.revoke(made["id"])
    assert storage.tokens.get(made["token"]) is None
    assert storage.tokens.list()[0]["revoked"]
    with pytest.raises(NotFound):
        storage.tokens.revoke(4242)
    with storage.db.conn().transaction() as c:  # a day later
        c.execute("UPDATE api_tokens SET expires_ms = ? WHERE id = ?", (now_ms() - 1, short["id"]))
    assert storage.tokens.get(short["token"]) is None and storage.tokens.list()[1]["expired"]
    with pytest.raises(ValueError):
        storage.tokens.create("forever", [room["id"]], "admin", expires_days=0)


def test_a_disabled_creator_stops_their_tokens(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    storage.users.create("admin2", ADMIN_PW, "admin")
    made = storage.tokens.create("wall", [room["id"]], "admin2")
    storage.users.set_disabled("admin2", True)
    assert storage.tokens.get(made["token"]) is None
    storage.users.set_disabled("admin2", False)
    assert storage.tokens.get(made["token"]) is not None
    storage.users.delete("admin2")
    assert storage.tokens.get(made["token"]) is None and storage.tokens.list()[0]["revoked"]


def test_migration_4_gives_older_tokens_the_default_lifetime(database_url, monkeypatch):
    monkeypatch.setattr("server.db.MIGRATIONS", tuple(m for m in MIGRATIONS if m.version < 4))
    db = Database(DatabaseConfig(url=database_url))
    try:
        db.migrate()
        old, recent = now_ms() - 100 * DAY_MS, now_ms() - DAY_MS
        with db.conn().transaction() as c:
            for name, created in (("old", old), ("recent", recent)):
                c.execute(
                    "INSERT INTO api_tokens (name, token_hash, created_by, created_ms) VALUES (?, ?, NULL, ?)",
                    (name, f"hash-{name}", created),
                )
        monkeypatch.setattr("server.db.MIGRATIONS", MIGRATIONS)
        assert 4 in db.migrate()
        listed = {t["name"]: t for t in Storage(db).tokens.list()}
        assert listed["old"]["expired"] and listed["old"]["expires_ms"] == old + 90 * DAY_MS
        assert not listed["recent"]["expired"]
    finally:
        db.close()


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{"http.sse_ping_s": 0.3})
    server = made.start()
    made.room = server.storage.rooms.create("school1", "room101", "Room 101")["id"]
    server.storage.users.create("admin", ADMIN_PW, "admin")
    yield made
    made.stop()


def test_a_revoked_or_expired_token_is_refused_on_its_next_request(harness):
    admin, csrf = harness.login("admin", ADMIN_PW)
    h = {"X-CSRF-Token": csrf}
    made = admin.post("/api/tokens", json={"name": "wall", "room_ids": [harness.room], "expires_days": 30}, headers=h)
    assert made.status_code == 201 and made.json()["expires_ms"] - made.json()["created_ms"] == 30 * DAY_MS
    assert admin.post("/api/tokens", json={"name": "x", "room_ids": [harness.room], "expires_days": 0},
                      headers=h).status_code == 422
    token, token_id = made.json()["token"], made.json()["id"]
    bearer = harness.client(headers={"Authorization": f"Bearer {token}"})
    assert bearer.get(f"/api/rooms/{harness.room}/live").status_code == 200
    assert bearer.get("/api/tokens").status_code == 403  # tokens never administer
    listed = admin.get("/api/tokens")
    assert listed.status_code == 200 and token not in listed.text and listed.json()[0]["id"] == token_id

    stream = SseReader(f"{harness.base_url}/api/rooms/{harness.room}/stream", headers=bearer.headers)
    assert stream.connected.wait(5) and stream.status_code == 200
    json_h = {**h, "Content-Type": "application/json"}
    assert admin.delete(f"/api/tokens/{token_id}", headers={"Content-Type": "application/json"}).status_code == 403
    assert admin.delete(f"/api/tokens/{token_id}", headers=json_h).status_code == 200
    assert bearer.get(f"/api/rooms/{harness.room}/live").status_code == 401
    assert wait_for(lambda: stream.of("end"), timeout=5), "the stream outlived the revoked token"
    stream.close()
    assert admin.get("/api/tokens").json()[0]["revoked"] is True
    assert admin.delete("/api/tokens/4242", headers=json_h).status_code == 404

    other = admin.post("/api/tokens", json={"name": "export", "room_ids": [harness.room]}, headers=h).json()
    expiring = harness.client(headers={"Authorization": f"Bearer {other['token']}"})
    assert expiring.get("/api/rooms").status_code == 200
    with harness.server.storage.db.conn().transaction() as c:
        c.execute("UPDATE api_tokens SET expires_ms = ? WHERE id = ?", (now_ms() - 1, other["id"]))
    assert expiring.get("/api/rooms").status_code == 401
