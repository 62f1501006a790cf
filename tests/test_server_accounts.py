"""Accounts: argon2id hashing with rehash on login, password change and reset, disabling, deleting, room access,
Secure cookies and refused plain-HTTP logins from other machines, and live streams that end with access."""

from __future__ import annotations

import base64
import hashlib
import secrets

import pytest

from server.passwords import hash_password, needs_rehash, verify_password
from server.storage import Storage
from server.storage.base import NotFound
from server.testing import ServerHarness, SseReader, wait_for
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.postgres import postgres_server_fixture, postgres_url_fixture  # noqa: F401 (pytest fixtures)
from tests.storage_fixtures import database_url_fixture, storage_fixture  # noqa: F401 (pytest fixtures)

ADMIN_PW = "admin-password"
TEACHER_PW = "teacher-password"



def _scrypt_hash(password: str) -> str:
    """A hash as the server wrote them before argon2 (scrypt, N=2^14)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${2**14}$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _stored_hash(storage: Storage, username: str) -> str:
    return storage.db.conn().fetchone("SELECT password_hash FROM users WHERE username = ?", (username,))[0]


def test_new_hashes_are_argon2id_at_owasp_parameters():
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("correct horse", stored) and not verify_password("correct hors", stored)
    assert not needs_rehash(stored)
    weaker = "$argon2id$v=19$m=4096,t=1,p=1$" + stored.split("$", 4)[4]
    assert needs_rehash(weaker) and needs_rehash(_scrypt_hash("x" * 8))
    assert not verify_password("x", "$argon2id$garbage") and not verify_password("x", "scrypt$huge$8$1$a$b")


def test_a_scrypt_hash_verifies_and_becomes_argon2_at_the_next_login(storage):
    storage.users.create("ana", TEACHER_PW, "teacher")
    legacy = _scrypt_hash(TEACHER_PW)
    with storage.db.conn().transaction() as c:
        c.execute("UPDATE users SET password_hash = ? WHERE username = ?", (legacy, "ana"))
    assert storage.users.authenticate("ana", "wrong-password") is None
    assert _stored_hash(storage, "ana") == legacy  # a failed login changes nothing
    assert storage.users.authenticate("ana", TEACHER_PW)["username"] == "ana"
    upgraded = _stored_hash(storage, "ana")
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert storage.users.authenticate("ana", TEACHER_PW) is not None
    assert _stored_hash(storage, "ana") == upgraded  # current hashes are left alone


def test_disabled_and_deleted_accounts_in_storage(storage):
    room = storage.rooms.create("school1", "room101", "Room 101")
    storage.users.create("ana", TEACHER_PW, "teacher")
    storage.users.add_room("ana", room["id"])
    user = storage.users.authenticate("ana", TEACHER_PW)
    cookie, _ = storage.sessions.create(user["id"], 60_000)
    other, _ = storage.sessions.create(user["id"], 60_000)
    storage.users.set_disabled("ana", True)
    assert storage.users.authenticate("ana", TEACHER_PW) is None  # as for a wrong password
    assert storage.sessions.get(cookie) is None
    storage.users.set_disabled("ana", False)
    assert storage.users.authenticate("ana", TEACHER_PW) is not None
    assert storage.sessions.end_for_user(user["id"], keep=cookie) == 1
    assert storage.sessions.get(cookie) is not None and storage.sessions.get(other) is None
    assert storage.users.remove_room("ana", room["id"])["rooms"] == []
    with pytest.raises(NotFound):
        storage.users.remove_room("ana", room["id"])
    storage.users.delete("ana")
    assert storage.sessions.get(cookie) is None and storage.users.get("ana") is None
    with pytest.raises(NotFound):
        storage.users.delete("ana")


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{"http.sse_ping_s": 0.3})
    server = made.start()
    made.room = server.storage.rooms.create("school1", "room101", "Room 101")["id"]
    server.storage.users.create("admin", ADMIN_PW, "admin")
    server.storage.users.create("ana", TEACHER_PW, "teacher")
    server.storage.users.add_room("ana", made.room)
    yield made
    made.stop()


def test_changing_ones_password_needs_the_current_one_and_ends_the_other_sessions(harness):
    here, csrf = harness.login("ana", TEACHER_PW)
    elsewhere, _ = harness.login("ana", TEACHER_PW)
    h = {"X-CSRF-Token": csrf}
    no_csrf = here.post("/api/me/password", json={"current_password": TEACHER_PW, "new_password": "x" * 9})
    assert no_csrf.status_code == 403
    short = here.post("/api/me/password", json={"current_password": TEACHER_PW, "new_password": "short"}, headers=h)
    assert short.status_code == 422
    changed = here.post("/api/me/password", json={"current_password": TEACHER_PW, "new_password": "new-teacher-pw"},
                        headers=h)
    assert changed.status_code == 200 and changed.json()["sessions_ended"] == 1
    assert here.get("/api/me").status_code == 200  # the session that changed it goes on
    assert elsewhere.get("/api/me").status_code == 401
    other_machine = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    old = harness.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=other_machine)
    assert old.status_code == 401
    harness.login("ana", "new-teacher-pw")
    wrong = here.post("/api/me/password", json={"current_password": "guess-guess", "new_password": "n" * 12}, headers=h)
    assert wrong.status_code == 403
    # Guessing the current password is throttled like a login.
    again = here.post("/api/me/password", json={"current_password": "guess-again", "new_password": "n" * 12}, headers=h)
    assert again.status_code == 429


def test_an_admin_resets_a_password_and_ends_all_that_users_sessions(harness):
    admin, csrf = harness.login("admin", ADMIN_PW)
    ana, _ = harness.login("ana", TEACHER_PW)
    h = {"X-CSRF-Token": csrf}
    assert admin.post("/api/users/ana/password", json={"password": "short"}, headers=h).status_code == 422
    assert admin.post("/api/users/nobody/password", json={"password": "long-enough"}, headers=h).status_code == 404
    reset = admin.post("/api/users/ana/password", json={"password": "reset-by-admin"}, headers=h)
    assert reset.status_code == 200 and reset.json()["sessions_ended"] == 1
    assert ana.get("/api/me").status_code == 401
    harness.login("ana", "reset-by-admin")
    teacher, tcsrf = harness.login("ana", "reset-by-admin")
    denied = teacher.post("/api/users/admin/password", json={"password": "taken-over"}, headers={"X-CSRF-Token": tcsrf})
    assert denied.status_code == 403


def test_disable_enable_delete_and_an_admin_cannot_lock_themselves_out(harness):
    admin, csrf = harness.login("admin", ADMIN_PW)
    ana, _ = harness.login("ana", TEACHER_PW)
    h = {"X-CSRF-Token": csrf}
    assert admin.patch("/api/users/ana", json={"disabled": True}).status_code == 403  # CSRF as everywhere
    disabled = admin.patch("/api/users/ana", json={"disabled": True}, headers=h)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert ana.get("/api/me").status_code == 401
    other_machine = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    login = {"username": "ana", "password": TEACHER_PW}
    refused = harness.client().post("/api/login", json=login, headers=other_machine)
    assert refused.status_code == 401 and refused.json()["detail"] == "wrong user name or password"
    assert admin.patch("/api/users/ana", json={"disabled": False}, headers=h).json()["disabled"] is False
    harness.login("ana", TEACHER_PW)
    assert admin.patch("/api/users/admin", json={"disabled": True}, headers=h).status_code == 409
    assert admin.delete("/api/users/admin", headers={**h, "Content-Type": "application/json"}).status_code == 409
    assert admin.delete("/api/users/ana", headers={**h, "Content-Type": "application/json"}).status_code == 200
    assert all(u["username"] != "ana" for u in admin.get("/api/users").json())
    assert admin.delete("/api/users/ana", headers={**h, "Content-Type": "application/json"}).status_code == 404
    assert admin.get("/api/me").status_code == 200


def test_removing_room_access_takes_effect_on_the_next_request(harness):
    admin, csrf = harness.login("admin", ADMIN_PW)
    ana, _ = harness.login("ana", TEACHER_PW)
    assert ana.get(f"/api/rooms/{harness.room}/live").status_code == 200
    h = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    removed = admin.delete(f"/api/users/ana/rooms/{harness.room}", headers=h)
    assert removed.status_code == 200 and removed.json()["rooms"] == []
    assert ana.get(f"/api/rooms/{harness.room}/live").status_code == 403
    assert admin.delete(f"/api/users/ana/rooms/{harness.room}", headers=h).status_code == 404


def _stream(harness, client) -> SseReader:
    stream = SseReader(f"{harness.base_url}/api/rooms/{harness.room}/stream", cookies=client.cookies)
    assert stream.connected.wait(5) and stream.status_code == 200
    return stream


def test_a_stream_ends_after_logout_disabling_or_losing_the_room(harness):
    admin, acsrf = harness.login("admin", ADMIN_PW)
    h = {"X-CSRF-Token": acsrf, "Content-Type": "application/json"}
    ana, csrf = harness.login("ana", TEACHER_PW)
    stream = _stream(harness, ana)
    assert ana.post("/api/logout", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    assert wait_for(lambda: stream.of("end"), timeout=5), "the stream outlived the logout"
    stream.close()

    ana, _ = harness.login("ana", TEACHER_PW)
    stream = _stream(harness, ana)
    admin.patch("/api/users/ana", json={"disabled": True}, headers=h)
    assert wait_for(lambda: stream.of("end"), timeout=5), "the stream outlived disabling the account"
    stream.close()
    admin.patch("/api/users/ana", json={"disabled": False}, headers=h)

    ana, _ = harness.login("ana", TEACHER_PW)
    stream = _stream(harness, ana)
    assert wait_for(lambda: len(stream.of(":")) >= 3, timeout=5)  # pings go on while access lasts
    assert not stream.of("end")
    admin.delete(f"/api/users/ana/rooms/{harness.room}", headers=h)
    assert wait_for(lambda: stream.of("end"), timeout=5), "the stream outlived the room access"
    stream.close()


def test_a_login_over_plain_http_from_another_machine_is_refused(harness):
    client = harness.client()
    remote = {"X-Forwarded-For": "203.0.113.5"}  # through the trusted proxy, which says the client used http
    refused = client.post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=remote)
    assert refused.status_code == 403 and "TLS" in refused.json()["detail"] and "HTTPS" in refused.json()["detail"]
    tls = {**remote, "X-Forwarded-Proto": "https"}
    ok = client.post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=tls)
    assert ok.status_code == 200 and "Secure" in ok.headers["set-cookie"]
    local = harness.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW})
    assert local.status_code == 200 and "Secure" not in local.headers["set-cookie"]  # loopback over http


def test_plain_http_logins_can_be_allowed_for_a_closed_network(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "s", mosquitto.url, **{"http.insecure_http_login": True})
    server = made.start()
    try:
        server.storage.users.create("ana", TEACHER_PW, "teacher")
        remote = {"X-Forwarded-For": "203.0.113.5"}
        ok = made.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=remote)
        assert ok.status_code == 200 and "Secure" not in ok.headers["set-cookie"]
    finally:
        made.stop()


def test_the_server_serves_https_itself_with_a_certificate(tmp_path, mosquitto):
    """http.tls_certfile/tls_keyfile hand a certificate to uvicorn; a login over that HTTPS gets a Secure cookie."""
    import shutil
    import subprocess

    import httpx

    from tests.system_deps import require_system_dep

    openssl = require_system_dep(shutil.which("openssl"), "openssl is not installed (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    tls = {"http.tls_certfile": str(cert), "http.tls_keyfile": str(key)}
    made = ServerHarness(tmp_path / "s", mosquitto.url, **tls)
    server = made.start()
    try:
        server.storage.users.create("ana", TEACHER_PW, "teacher")
        with httpx.Client(base_url=f"https://127.0.0.1:{made.port}", verify=False, timeout=15) as client:
            remote = {"X-Forwarded-For": "203.0.113.5"}  # from another machine: HTTPS is what makes it allowed
            ok = client.post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=remote)
            assert ok.status_code == 200 and "Secure" in ok.headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{made.port}/login", timeout=5)
    finally:
        made.stop()


PUBLIC = {("POST", "/api/login"), ("POST", "/api/logout"), ("GET", "/healthz"), ("GET", "/metrics")}


def _calls(harness, other_room: int, segment_id: int, token_id: int) -> list[tuple[str, str, dict]]:
    """Every route of the API and the pages, with its path filled in and a body that would be valid."""
    values = {"room_id": other_room, "segment_id": segment_id, "token_id": token_id, "username": "ben",
              "site": "school1", "device_id": "pi-102"}
    bodies = {
        "/api/me/password": {"current_password": TEACHER_PW, "new_password": "taken-over-pw"},
        "/api/rooms/{room_id}/segments": {"name": "Hijack"},
        "/api/devices/{site}/{device_id}/assign": {"room_id": other_room},
        "/api/users": {"username": "mallory", "password": "mallory-password", "role": "admin"},
        "/api/users/{username}/rooms": {"room_id": other_room},
        "/api/users/{username}/password": {"password": "taken-over-pw"},
        "/api/users/{username}": {"disabled": True},
        "/api/rooms": {"site": "school1", "room": "evil", "name": "Evil"},
        "/api/tokens": {"name": "stolen", "room_ids": [other_room]},
    }
    calls = []
    from server import api, pages

    for route in [*api.router.routes, *pages.router.routes]:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD" or (method, path) in PUBLIC or path.startswith("/static") or path in (
                "/login", "/openapi.json", "/api/docs"
            ):
                continue
            body = bodies.get(path, {}) if method != "GET" else None
            calls.append((method, path.format(**values), body))
    return calls


def test_no_endpoint_answers_another_rooms_teacher_a_revoked_token_or_an_ended_session(harness):
    """Every route the app has, called as ana (a teacher of room101) for ben's room, with a revoked token and with
    a logged-out session: none succeeds."""
    storage = harness.server.storage
    other = storage.rooms.create("school1", "room102", "Room 102")["id"]
    storage.users.create("ben", TEACHER_PW, "teacher")
    storage.users.add_room("ben", other)
    segment = storage.segments.start(other, "Ben's lesson", "ben")["id"]
    revoked = storage.tokens.create("old display", [harness.room, other], "admin")
    storage.tokens.revoke(revoked["id"])

    ana, ana_csrf = harness.login("ana", TEACHER_PW)
    gone, gone_csrf = harness.login("ana", TEACHER_PW)
    assert gone.post("/api/logout", json={}, headers={"X-CSRF-Token": gone_csrf}).status_code == 200
    callers = {
        "teacher of another room": (ana, {"X-CSRF-Token": ana_csrf}),
        "revoked token": (harness.client(), {"Authorization": f"Bearer {revoked['token']}"}),
        "logged-out session": (gone, {"X-CSRF-Token": gone_csrf}),
    }
    calls = _calls(harness, other, segment, revoked["id"])
    assert len(calls) >= 25
    successes = []
    for who, (client, headers) in callers.items():
        for method, path, body in calls:
            if who == "teacher of another room" and "{" not in path and str(other) not in path and path in (
                "/api/me", "/api/rooms", "/", "/account"
            ):
                continue  # her own view of herself and her rooms
            if who == "teacher of another room" and path == "/api/me/password":
                continue  # her own password (the test above)
            kwargs = {"headers": {**headers, "Content-Type": "application/json"}}
            if body is not None:
                kwargs["json"] = body
            with client.stream(method, path, timeout=5, follow_redirects=False, **kwargs) as response:
                if 200 <= response.status_code < 300:
                    successes.append((who, method, path, response.status_code))
    assert successes == []
    assert storage.users.get("mallory") is None and storage.users.authenticate("ben", TEACHER_PW) is not None
    assert [s["name"] for s in storage.segments.list(other)] == ["Ben's lesson"]
