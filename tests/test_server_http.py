"""The HTTP contract: login, CSRF, teacher isolation (page, API, stream), tokens, admin, live, SSE, segments, CSV."""

from __future__ import annotations

import csv
import io
import time

import httpx
import pytest

from server.testing import ServerHarness, SseReader, distribution, make_event, wait_for
from tests.mosquitto import (  # noqa: F401 (pytest fixtures)
    broker_factory_fixture,
    device_simulator_fixture,
    mosquitto_fixture,
)

ADMIN_PW = "admin-password"
TEACHER_PW = "teacher-password"


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{"http.sse_ping_s": 0.5, "devices.auto_assign": True})
    server = made.start()
    storage = server.storage
    made.rooms = {}
    for room in ("room101", "room102"):
        made.rooms[room] = storage.rooms.create("school1", room, room.replace("room", "Room "))["id"]
        server.registry.add_room("school1", room, made.rooms[room])
    storage.users.create("admin", ADMIN_PW, "admin")
    storage.users.create("ana", TEACHER_PW, "teacher")
    storage.users.create("ben", TEACHER_PW, "teacher")
    storage.users.add_room("ana", made.rooms["room101"])
    storage.users.add_room("ben", made.rooms["room102"])
    yield made
    made.stop()


def test_login_sets_a_strict_http_only_cookie_and_me_has_csrf(harness):
    client = harness.client()
    response = client.post("/api/login", json={"username": "ana", "password": TEACHER_PW})
    assert response.status_code == 200
    assert response.json() == {"username": "ana", "role": "teacher"}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("aula_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    me = client.get("/api/me").json()
    assert me["username"] == "ana" and me["role"] == "teacher" and len(me["csrf"]) >= 20
    assert me["rooms"] == [{"id": harness.rooms["room101"], "site": "school1", "room": "room101", "name": "Room 101"}]
    # Logging out is an unsafe request: it needs the CSRF token too.
    assert client.post("/api/logout", json={}).status_code == 403
    assert client.post("/api/logout", json={}, headers={"X-CSRF-Token": me["csrf"]}).status_code == 200
    assert client.get("/api/me").status_code == 401
    assert harness.client().post("/api/login", json={"username": "ana", "password": "wrong"}).status_code == 401
    assert harness.client().post("/api/login", json={"username": "nobody", "password": "x"}).status_code == 401


def test_secure_cookie_when_configured(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "s", mosquitto.url, **{"http.secure_cookies": True})
    server = made.start()
    try:
        server.storage.users.create("ana", TEACHER_PW, "teacher")
        response = made.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW})
        assert "Secure" in response.headers["set-cookie"]
    finally:
        made.stop()


def test_failed_logins_are_rate_limited(harness):
    client = harness.client()
    assert client.post("/api/login", json={"username": "ana", "password": "guess"}).status_code == 401
    # Each failure makes this address wait before trying the same name again (1 s, then doubling).
    locked = client.post("/api/login", json={"username": "ana", "password": TEACHER_PW})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0


def test_csrf_is_required_for_unsafe_cookie_requests(harness):
    client, csrf = harness.login("ana", TEACHER_PW)
    url = f"/api/rooms/{harness.rooms['room101']}/segments"
    assert client.post(url, json={"name": "Lecture"}).status_code == 403
    assert client.post(url, json={"name": "Lecture"}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    form = client.post(url, content="name=Lecture", headers={"X-CSRF-Token": csrf, "Content-Type": "text/plain"})
    assert form.status_code == 403  # a cross-site form cannot send JSON
    assert client.post(url, json={"name": "Lecture"}, headers={"X-CSRF-Token": csrf}).status_code == 201


def test_a_teacher_cannot_see_another_teachers_room(harness):
    client, _ = harness.login("ana", TEACHER_PW)
    mine, theirs = harness.rooms["room101"], harness.rooms["room102"]
    assert [r["id"] for r in client.get("/api/rooms").json()] == [mine]
    assert client.get(f"/api/rooms/{mine}/live").status_code == 200
    for path in ("live", "segments", "report.csv"):
        assert client.get(f"/api/rooms/{theirs}/{path}").status_code == 403, path
    assert client.get(f"/rooms/{theirs}").status_code == 403
    assert client.get(f"/rooms/{theirs}/report").status_code == 403
    own_page = client.get(f"/rooms/{mine}")
    assert own_page.status_code == 200 and "Article 5(1)(f)" in own_page.text
    stream = SseReader(f"{harness.base_url}/api/rooms/{theirs}/stream", cookies=client.cookies)
    assert stream.connected.wait(5) and stream.status_code == 403
    stream.close()
    for admin_only in ("/api/devices", "/api/users"):
        assert client.get(admin_only).status_code == 403
    assert client.get("/admin").status_code == 403


def test_pages_redirect_to_login_when_logged_out(harness):
    client = harness.client()
    for path in ("/", f"/rooms/{harness.rooms['room101']}", f"/rooms/{harness.rooms['room101']}/report", "/admin"):
        response = client.get(path)
        # The login page brings the teacher back to the page they asked for.
        expected = "/login" if path == "/" else f"/login?next={path}"
        assert response.status_code == 303 and response.headers["location"] in ("/login?next=/", expected), path
    assert client.get("/login").status_code == 200
    assert client.get("/api/rooms").status_code == 401


def test_api_tokens_are_scoped_to_their_rooms(harness):
    admin, csrf = harness.login("admin", ADMIN_PW)
    mine, other = harness.rooms["room101"], harness.rooms["room102"]
    created = admin.post("/api/tokens", json={"name": "wall", "room_ids": [mine]}, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201
    token = created.json()["token"]
    bearer = harness.client(headers={"Authorization": f"Bearer {token}"})
    assert [r["id"] for r in bearer.get("/api/rooms").json()] == [mine]
    assert bearer.get(f"/api/rooms/{mine}/live").status_code == 200
    assert bearer.get(f"/api/rooms/{other}/live").status_code == 403
    assert bearer.get("/api/devices").status_code == 403  # tokens never administer
    # Bearer requests are not forgeable by a browser, so they need no CSRF token.
    assert bearer.post(f"/api/rooms/{mine}/segments", json={"name": "By token"}).status_code == 201
    assert bearer.post(f"/api/rooms/{other}/segments", json={"name": "No"}).status_code == 403
    stream = SseReader(f"{harness.base_url}/api/rooms/{other}/stream", headers={"Authorization": f"Bearer {token}"})
    assert stream.connected.wait(5) and stream.status_code == 403
    stream.close()
    assert harness.client(headers={"Authorization": "Bearer aula_forged"}).get("/api/rooms").status_code == 401
    stored = harness.server.storage.db.conn().fetchall("SELECT token_hash FROM api_tokens")
    assert token not in str(stored)


def test_admin_manages_rooms_users_and_devices(harness, device):
    admin, csrf = harness.login("admin", ADMIN_PW)
    h = {"X-CSRF-Token": csrf}
    room = admin.post("/api/rooms", json={"site": "school1", "room": "lab", "name": "Lab"}, headers=h)
    assert room.status_code == 201
    room_id = room.json()["id"]
    again = admin.post("/api/rooms", json={"site": "school1", "room": "lab", "name": "Lab"}, headers=h)
    assert again.status_code == 409
    assert admin.post("/api/rooms", json={"site": "a/b", "room": "x", "name": "X"}, headers=h).status_code == 422
    user = admin.post("/api/users", json={"username": "cara", "password": TEACHER_PW, "role": "teacher"}, headers=h)
    assert user.status_code == 201 and user.json()["role"] == "teacher"
    bad_role = admin.post("/api/users", json={"username": "dan", "password": TEACHER_PW, "role": "root"}, headers=h)
    assert bad_role.status_code == 422
    assert admin.post("/api/users/cara/rooms", json={"room_id": room_id}, headers=h).json()["rooms"] == [room_id]
    assert admin.post("/api/users/nobody/rooms", json={"room_id": room_id}, headers=h).status_code == 404
    cara = {"username": "cara", "role": "teacher", "rooms": [room_id], "disabled": False}
    assert cara in admin.get("/api/users").json()
    # A device of an unknown room shows up as new; the admin assigns it.
    device.event(make_event(room="gym", device_id="pi-gym"))
    assert wait_for(lambda: any(d["device_id"] == "pi-gym" for d in admin.get("/api/devices").json()))
    listed = next(d for d in admin.get("/api/devices").json() if d["device_id"] == "pi-gym")
    assert listed["state"] == "new" and listed["status"] == "new" and listed["reported_room"] == "gym"
    assigned = admin.post("/api/devices/school1/pi-gym/assign", json={"room_id": room_id}, headers=h)
    assert assigned.status_code == 200 and assigned.json()["backfilled"] == 1
    assert admin.post("/api/devices/school1/ghost/assign", json={"room_id": room_id}, headers=h).status_code == 404
    cara, _ = harness.login("cara", TEACHER_PW)
    live = cara.get(f"/api/rooms/{room_id}/live").json()
    assert [d["device_id"] for d in live["devices"]] == ["pi-gym"]
    assert sum(b["windows"] for b in live["buckets"]) == 1


def test_live_view_and_stream_deliver_within_a_second(harness, device):
    client, _ = harness.login("ana", TEACHER_PW)
    room_id = harness.rooms["room101"]
    device.status("school1", "room101", "pi-101", "online")
    device.event(make_event(device_id="pi-101", seq=1, label="happy", faces=6))
    assert wait_for(lambda: harness.stat("events_ingested") == 1)
    live = client.get(f"/api/rooms/{room_id}/live?minutes=5").json()
    assert live["room"]["id"] == room_id
    assert live["buckets"] and live["buckets"][-1]["dominant"] == "happy" and live["buckets"][-1]["faces"] == 6
    assert live["current"]["dominant"] == "happy" and live["current"]["distribution"]["happy"] == pytest.approx(0.7)
    assert live["devices"] == [
        {
            "device_id": "pi-101",
            "state": "online",
            "reason": None,
            "last_seen_ms": live["devices"][0]["last_seen_ms"],
            "paused": False,
            "health": None,
        }
    ]
    assert client.get(f"/api/rooms/{room_id}/live?minutes=0").status_code == 422
    stream = SseReader(f"{harness.base_url}/api/rooms/{room_id}/stream", cookies=client.cookies)
    try:
        assert stream.connected.wait(5) and stream.status_code == 200
        assert wait_for(lambda: stream.of("status"), 5)  # a snapshot of the room's devices on connect
        latencies = []
        for seq in range(2, 7):
            event = make_event(device_id="pi-101", seq=seq, label="sad")
            sent = time.monotonic()
            device.event(event, wait=False)
            assert wait_for(lambda e=event: any(m.data["t_ms"] == e.window_start_ms for m in stream.of("window")), 2)
            got = next(m for m in stream.of("window") if m.data["t_ms"] == event.window_start_ms)
            latencies.append(got.received - sent)
        assert max(latencies) < 1.0, latencies
        window = stream.of("window")[-1].data
        assert set(window) == {
            *("t_ms", "device_id", "distribution", "dominant", "valence", "arousal", "faces"),
            *("face", "voices", "words", "speech_segments", "text_utterances"),
        }
        assert window["device_id"] == "pi-101" and window["dominant"] == "sad"
        assert window["face"]["dominant"] == "sad" and window["voices"] is None and window["words"] is None
        device.status("school1", "room101", "pi-101", "degraded", "camera: no frames for 10 s")
        assert wait_for(lambda: any(m.data["state"] == "degraded" for m in stream.of("status")), 2)
        status = next(m.data for m in stream.of("status") if m.data["state"] == "degraded")
        assert status["reason"] == "camera: no frames for 10 s" and status["device_id"] == "pi-101"
        assert wait_for(lambda: any(m.data == "ping" for m in stream.of(":")), 3)  # keep-alive comments
        # Events of a device in another room never reach this stream.
        device.event(make_event(room="room102", device_id="pi-102"))
        time.sleep(0.5)
        assert all(m.data["device_id"] == "pi-101" for m in stream.of("window"))
    finally:
        stream.close()


def test_live_and_stream_carry_the_voices_mood(harness, device):
    client, _ = harness.login("ana", TEACHER_PW)
    room_id = harness.rooms["room101"]
    stream = SseReader(f"{harness.base_url}/api/rooms/{room_id}/stream", cookies=client.cookies)
    try:
        assert stream.connected.wait(5) and stream.status_code == 200
        calm = distribution("neutral", 0.8)
        now = int(time.time() * 1000)
        events = [
            make_event(device_id="pi-101", seq=1, start_ms=now - 6000, label="happy"),  # nobody spoke
            make_event(device_id="pi-101", seq=2, start_ms=now - 4000, label="happy", speech=calm, speech_segments=2),
            make_event(device_id="pi-101", seq=3, start_ms=now - 2000, label="happy", speech=calm, speech_segments=1),
        ]
        for event in events:
            device.event(event)
        assert wait_for(lambda: harness.stat("events_ingested") == 3)
        assert wait_for(lambda: len(stream.of("window")) == 3, 5)
        quiet, first, second = (m.data for m in stream.of("window"))
        assert quiet["voices"] is None and quiet["face"]["dominant"] == "happy" and quiet["speech_segments"] == 0
        assert first["voices"]["dominant"] == "neutral" and first["voices"]["segments"] == 2
        assert first["voices"]["distribution"]["neutral"] == pytest.approx(0.8)
        assert first["voices"]["windows"] == 1 and first["speech_segments"] == 2
        assert first["dominant"] == "happy" and first["face"]["dominant"] == "happy"  # the fused mood stays
        assert second["voices"]["segments"] == 1 and second["speech_segments"] == 1
    finally:
        stream.close()
    live = client.get(f"/api/rooms/{room_id}/live?minutes=5").json()
    current = live["current"]
    assert current["dominant"] == "happy" and current["face"]["dominant"] == "happy"
    assert current["face"]["windows"] == 3
    voices = current["voices"]
    assert voices["dominant"] == "neutral" and voices["windows"] == 2 and voices["segments"] == 3
    assert voices["distribution"]["neutral"] == pytest.approx(0.8) and voices["arousal"] < current["face"]["arousal"]
    assert set(voices) == {"distribution", "dominant", "valence", "arousal", "windows", "segments"}
    assert current["speech_segments"] == 3
    assert sum(b["voices"]["windows"] for b in live["buckets"] if b["voices"]) == 2
    assert all(b["face"] is not None for b in live["buckets"])
    # A room where nobody spoke: no voices, and no mood for them.
    device.event(make_event(room="room102", device_id="pi-102"))
    assert wait_for(lambda: harness.stat("events_ingested") == 4)
    ben, _ = harness.login("ben", TEACHER_PW)
    other = ben.get(f"/api/rooms/{harness.rooms['room102']}/live").json()
    assert other["current"]["voices"] is None and other["current"]["face"]["dominant"] == "happy"
    assert all(b["voices"] is None for b in other["buckets"])


def test_segments_and_csv_report(harness, device):
    client, csrf = harness.login("ana", TEACHER_PW)
    h = {"X-CSRF-Token": csrf}
    room_id = harness.rooms["room101"]
    device.event(make_event(device_id="pi-101", seq=0))  # auto-assigns the device to room101
    assert wait_for(lambda: harness.stat("events_ingested") == 1)
    started = client.post(f"/api/rooms/{room_id}/segments", json={"name": '=HYPERLINK("x")'}, headers=h)
    assert started.status_code == 201
    segment = started.json()
    assert set(segment) == {"id", "name", "start_ms"}
    for seq in range(1, 4):
        device.event(make_event(device_id="pi-101", seq=seq, start_ms=segment["start_ms"] + 1, faces=3))
    assert wait_for(lambda: harness.stat("events_ingested") == 4)
    stopped = client.post(f"/api/rooms/{room_id}/segments/{segment['id']}/stop", json={}, headers=h)
    assert stopped.status_code == 200 and stopped.json()["id"] == segment["id"] and stopped.json()["end_ms"] >= 0
    missing = client.post(f"/api/rooms/{room_id}/segments/9999/stop", json={}, headers=h)
    assert missing.status_code == 404
    listed = client.get(f"/api/rooms/{room_id}/segments").json()
    assert len(listed) == 1
    row = listed[0]
    assert set(row) == {
        "id",
        "name",
        "start_ms",
        "end_ms",
        "windows",
        "distribution",
        "dominant",
        "valence",
        "arousal",
        "faces_mean",
        "face",
        "voices",
        "words",
    }
    assert row["windows"] >= 3 and row["dominant"] == "happy"
    assert row["face"]["dominant"] == "happy" and row["voices"] is None and row["words"] is None
    report = client.get(f"/api/rooms/{room_id}/report.csv")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    assert "attachment" in report.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert len(rows) == 1 and rows[0]["name"].startswith("'=")  # no formula injection into spreadsheets
    assert rows[0]["dominant"] == "happy" and float(rows[0]["p_happy"]) == pytest.approx(0.7)


def test_healthz_and_metrics(harness, device):
    device.event(make_event())
    device.publish("aula/v1/school1/room101/pi-101/events", b"nope")
    assert wait_for(lambda: harness.stat("events_ingested") == 1 and harness.stat("events_invalid") == 1)
    client = harness.client()
    health = client.get("/healthz").json()
    for key in ("events_ingested", "events_duplicate", "events_invalid", "invalid_by_reason", "broker_connected"):
        assert key in health
    assert health["database"] == "ok" and health["invalid_by_reason"]["not_json"] == 1
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "aula_events_ingested_total 1" in text
    assert 'aula_events_invalid_total{reason="not_json"} 1' in text
    assert "aula_broker_connected 1" in text and "aula_database_up 1" in text
    assert "# TYPE aula_events_ingested_total counter" in text


def test_openapi_and_local_docs_without_a_cdn(harness):
    client = harness.client()
    spec = client.get("/openapi.json").json()
    assert "/api/rooms/{room_id}/live" in spec["paths"] and "/api/login" in spec["paths"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/rooms/{room_id}/stream" in docs.text
    assert "cdn" not in docs.text.lower() and "<script" not in docs.text
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"


def test_stream_ends_when_the_server_stops(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "s", mosquitto.url)
    server = made.start()
    room = server.storage.rooms.create("school1", "room101", "Room 101")
    server.storage.users.create("admin", ADMIN_PW, "admin")
    client, _ = made.login("admin", ADMIN_PW)
    stream = SseReader(f"{made.base_url}/api/rooms/{room['id']}/stream", cookies=client.cookies)
    assert stream.connected.wait(5) and stream.status_code == 200
    started = time.monotonic()
    made.stop()
    assert time.monotonic() - started < 5
    stream.close()
    with pytest.raises(httpx.HTTPError):
        client.get("/healthz")


def test_metrics_answer_loopback_or_the_token_only(tmp_path, mosquitto, monkeypatch):
    """The counters describe a school's fleet: behind a proxy, a remote client needs the metrics token."""
    from server.testing import ServerHarness

    monkeypatch.setenv("AULA_TEST_METRICS_TOKEN", "s3cret-metrics")
    made = ServerHarness(tmp_path / "m", mosquitto.url, **{"http.metrics_token_env": "AULA_TEST_METRICS_TOKEN"})
    made.start()
    try:
        client = made.client()
        assert client.get("/metrics").status_code == 200  # a Prometheus on the same host
        remote = {"X-Forwarded-For": "203.0.113.5"}  # through the trusted reverse proxy, from outside
        assert client.get("/metrics", headers=remote).status_code == 403
        wrong = client.get("/metrics", headers={**remote, "Authorization": "Bearer guess"})
        assert wrong.status_code == 403
        right = client.get("/metrics", headers={**remote, "Authorization": "Bearer s3cret-metrics"})
        assert right.status_code == 200 and "aula_events_ingested_total" in right.text
        # /healthz answers everyone, but tells a remote client only what an uptime check needs: no counters and
        # no error texts (a writer's exception could name tables, paths or the database host).
        public = client.get("/healthz", headers=remote)
        assert public.status_code == 200 and set(public.json()) == {"status", "database", "broker_connected"}
        full = client.get("/healthz", headers={**remote, "Authorization": "Bearer s3cret-metrics"}).json()
        assert "writer_error" in full and "events_ingested" in full
        assert "writer_error" in client.get("/healthz").json()  # loopback
    finally:
        made.stop()
