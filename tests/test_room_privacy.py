"""A teacher pauses and resumes sensing in their room from the dashboard's API; the real device acknowledges.

The server (in this process), a real Mosquitto and `python -m device run` on the bundled sample: the teacher's
POST sends `pause` over MQTT, the device closes camera and microphone and answers on `cmd/ack`, the room's
stream shows the ack and the device's status says paused; `resume` lifts it. Another teacher, an API token and
a device whose config sets the pause cannot lift it.
"""

from __future__ import annotations

import time

import pytest

from server.testing import ServerHarness, SseReader, wait_for
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.test_device_service import start_device, stop_device

TEACHER_PW = "teacher-password"


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{"http.sse_ping_s": 0.5, "devices.auto_assign": True})
    server = made.start()
    made.room = server.storage.rooms.create("test-school", "room-7", "Room 7")["id"]
    server.registry.add_room("test-school", "room-7", made.room)
    other = server.storage.rooms.create("test-school", "room-8", "Room 8")["id"]
    for name, room in (("ana", made.room), ("ben", other)):
        server.storage.users.create(name, TEACHER_PW, "teacher")
        server.storage.users.add_room(name, room)
    made.token = server.storage.tokens.create("wall", [made.room], "ana")["token"]
    yield made
    made.stop()


def _device_listed(harness, client) -> dict | None:
    devices = client.get(f"/api/rooms/{harness.room}/live").json()["devices"]
    return devices[0] if devices else None


def _privacy(client, csrf, room, paused):
    return client.post(f"/api/rooms/{room}/privacy", json={"paused": paused}, headers={"X-CSRF-Token": csrf})


def test_a_teacher_pauses_and_resumes_their_rooms_device(harness, mosquitto, tmp_path):
    proc = start_device(mosquitto, tmp_path / "device", "--loop")
    try:
        ana, csrf = harness.login("ana", TEACHER_PW)
        assert wait_for(lambda: (_device_listed(harness, ana) or {}).get("state") == "online", 30)
        stream = SseReader(f"{harness.base_url}/api/rooms/{harness.room}/stream", cookies=ana.cookies)
        assert stream.connected.wait(5)

        ben, ben_csrf = harness.login("ben", TEACHER_PW)
        assert _privacy(ben, ben_csrf, harness.room, True).status_code == 403  # not his room
        token = harness.client(headers={"Authorization": f"Bearer {harness.token}"})
        assert token.post(f"/api/rooms/{harness.room}/privacy", json={"paused": True}).status_code == 403

        t0 = time.monotonic()
        sent = _privacy(ana, csrf, harness.room, True)
        assert sent.status_code == 200, sent.text
        body = sent.json()
        assert body["command"] == "pause" and [d["device_id"] for d in body["devices"]] == ["pi-7"]
        assert wait_for(lambda: any(m.data["id"] == body["devices"][0]["id"] for m in stream.of("ack")), 10)
        ack = next(m for m in stream.of("ack") if m.data["id"] == body["devices"][0]["id"])
        print(f"pause acknowledged {ack.received - t0:.2f} s after the request")
        assert ack.data["ok"] and ack.data["paused"] and ack.data["command"] == "pause"
        assert wait_for(lambda: any(m.data.get("paused") for m in stream.of("status")), 10)
        assert wait_for(lambda: (_device_listed(harness, ana) or {}).get("paused") is True, 10)

        resumed = _privacy(ana, csrf, harness.room, False).json()
        assert wait_for(lambda: any(m.data["id"] == resumed["devices"][0]["id"] and m.data["ok"]
                                    and not m.data["paused"] for m in stream.of("ack")), 10)
        assert wait_for(lambda: (_device_listed(harness, ana) or {}).get("paused") is False, 10)
        assert harness.stat("commands_sent") == 2 and harness.stat("command_acks") >= 2
        stream.close()
    finally:
        stop_device(proc)


def test_a_pause_set_in_the_devices_config_is_not_lifted_from_the_dashboard(harness, mosquitto, tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text("privacy:\n  paused: true\n")
    proc = start_device(mosquitto, tmp_path / "device", "--loop", config=config)
    try:
        ana, csrf = harness.login("ana", TEACHER_PW)
        assert wait_for(lambda: (_device_listed(harness, ana) or {}).get("paused") is True, 30)
        stream = SseReader(f"{harness.base_url}/api/rooms/{harness.room}/stream", cookies=ana.cookies)
        assert stream.connected.wait(5)
        sent = _privacy(ana, csrf, harness.room, False).json()
        assert wait_for(lambda: any(m.data["id"] == sent["devices"][0]["id"] for m in stream.of("ack")), 10)
        ack = next(m for m in stream.of("ack") if m.data["id"] == sent["devices"][0]["id"])
        assert not ack.data["ok"] and ack.data["paused"] and "config" in ack.data["reason"]
        assert (_device_listed(harness, ana) or {}).get("paused") is True
        stream.close()
    finally:
        stop_device(proc)
