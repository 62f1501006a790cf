"""The fleet page's data (/api/fleet), its alerts on MQTT (retained while active), the per-device gauges of
/metrics and the trends after a restart, with the server in this process and a real Mosquitto; and the alert
rules on their own."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.contract import SiteAlerts
from server.fleet import FleetMonitor, alerts_topic
from server.testing import DeviceSimulator, ServerHarness, wait_for
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)

ADMIN_PW = "admin-password"


def _view(state: str, since_ms: int, device: str = "pi-1", site: str = "s1") -> dict:
    return {"site": site, "device_id": device, "room": "Room 1", "state": state, "reason": None, "since_ms": since_ms}


def test_alerts_need_the_state_to_last_and_are_published_only_on_change():
    m = FleetMonitor(alert_after_s=60)
    now = 1_000_000
    assert m.alerts([_view("degraded", now - 59_000), _view("online", now - 999_000, "pi-2")], now) == []
    active = m.alerts([_view("degraded", now - 60_000), _view("offline", now - 120_000, "pi-2")], now)
    assert [a["device_id"] for a in active] == ["pi-1", "pi-2"]
    first = m.to_publish({"s1"}, active, now)
    assert [t for t, _ in first] == [alerts_topic("s1")]
    assert [a["device_id"] for a in json.loads(first[0][1])["alerts"]] == ["pi-1", "pi-2"]
    message = SiteAlerts.from_payload(first[0][1])  # what a school's monitoring parses, by the contract's class
    assert message.site == "s1" and [(a.device_id, a.state) for a in message.alerts] == [("pi-1", "degraded"),
                                                                                        ("pi-2", "offline")]
    m.published(first)
    assert m.to_publish({"s1"}, active, now + 10_000) == []  # unchanged: nothing sent again
    cleared = m.to_publish({"s1"}, [], now + 20_000)
    assert cleared == [(alerts_topic("s1"), b"")]  # an empty retained payload removes the retained alert
    m.published(cleared)
    assert m.to_publish({"s1"}, [], now + 30_000) == []


def test_since_follows_the_shown_state():
    m = FleetMonitor(alert_after_s=60)
    assert m.since("s1", "pi-1", "online", 1000) == 1000
    assert m.since("s1", "pi-1", "online", 5000) == 1000
    assert m.since("s1", "pi-1", "offline", 9000, hint_ms=7000) == 7000  # went silent at 7000
    assert m.since("s1", "pi-1", "online", 12000) == 12000


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url, **{
        "devices.auto_assign": True, "fleet.alert_after_s": 1.0, "fleet.check_interval_s": 1.0})
    server = made.start()
    room = server.storage.rooms.create("school1", "room101", "Room 101")["id"]
    server.registry.add_room("school1", "room101", room)
    server.storage.users.create("admin", ADMIN_PW, "admin")
    yield made
    made.stop()


def test_the_fleet_view_alerts_on_mqtt_and_metrics(harness, mosquitto):
    got: list[tuple[str, bytes, bool]] = []
    lock = threading.Lock()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="school-monitoring")

    def on_message(client, userdata, m):
        with lock:
            got.append((m.topic, m.payload, m.retain))

    watcher.on_message = on_message
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("aula/v1/+/alerts", qos=1)
    watcher.loop_start()
    device = DeviceSimulator(mosquitto.port)
    try:
        device.status("school1", "room101", "pi-1", "online")
        for fps in (4.8, 5.0, 5.1):
            device.health("school1", "room101", "pi-1", host={"cpu_temp_c": 51.5, "release": "r2026.12-ab12cd34"},
                          vision={"frames_analysed_per_s": fps, "frames_dropped": 3, "detect_ms_p95": 7.5},
                          mqtt={"backlog": 2}, models={"face_emotion": "face-emotion-20261201"})
        admin, _ = harness.login("admin", ADMIN_PW)
        assert wait_for(lambda: len(admin.get("/api/fleet").json()["devices"][0]["trend"]) == 3, 10)
        data = admin.get("/api/fleet").json()
        d = data["devices"][0]
        assert (d["device_id"], d["state"], d["room"], d["release"]) == ("pi-1", "online", "Room 101",
                                                                          "r2026.12-ab12cd34")
        assert d["models"] == {"face_emotion": "face-emotion-20261201"}
        assert [t["frames_per_s"] for t in d["trend"]] == [4.8, 5.0, 5.1] and d["trend"][-1]["cpu_temp_c"] == 51.5
        assert data["alerts"] == []

        device.status("school1", "room101", "pi-1", "degraded", "camera: no frames for 10 s")
        assert wait_for(lambda: any(t == alerts_topic("school1") and p for t, p, _ in got), 10)
        alert = json.loads(next(p for t, p, _ in got if p))
        assert [(a["device_id"], a["state"], a["reason"]) for a in alert["alerts"]] == [
            ("pi-1", "degraded", "camera: no frames for 10 s")]
        assert admin.get("/api/fleet").json()["alerts"][0]["device_id"] == "pi-1"
        metrics = harness.client().get("/metrics").text
        assert 'aula_device_degraded{site="school1",device="pi-1",room="Room 101"} 1' in metrics
        assert 'aula_device_frames_per_s{site="school1",device="pi-1",room="Room 101"} 5.1' in metrics
        assert "aula_fleet_alerts 1" in metrics

        # A monitor that subscribes later gets the active alert at once: it is retained.
        late: list[bytes] = []
        later = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="late-monitoring")
        later.on_message = lambda c, u, m: late.append(m.payload)
        later.connect("127.0.0.1", mosquitto.port)
        later.subscribe(alerts_topic("school1"), qos=1)
        later.loop_start()
        assert wait_for(lambda: late and b"pi-1" in late[0], 5)
        later.loop_stop()
        later.disconnect()

        device.status("school1", "room101", "pi-1", "online")
        assert wait_for(lambda: got[-1][0] == alerts_topic("school1") and got[-1][1] == b"", 10)  # cleared
        assert admin.get("/api/fleet").json()["alerts"] == []
        assert harness.client().get("/api/fleet").status_code == 401

        # The trends and when the device entered its state are in the database: a restarted server shows them
        # before any new message arrives, and an alert's clock does not start again.
        since = admin.get("/api/fleet").json()["devices"][0]["since_ms"]
        time.sleep(0.05)
        harness.restart()
        admin, _ = harness.login("admin", ADMIN_PW)
        d = admin.get("/api/fleet").json()["devices"][0]
        assert [t["frames_per_s"] for t in d["trend"]] == [4.8, 5.0, 5.1]
        assert (d["state"], d["since_ms"]) == ("online", since)
    finally:
        device.close()
        watcher.loop_stop()
        watcher.disconnect()
