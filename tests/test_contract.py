"""The contract between device and server: health and summaries as typed messages, topics, and what each end loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from device.contract import (
    DeviceAlert,
    DeviceState,
    DeviceTopics,
    HealthMessage,
    RoomSummary,
    SchemaError,
    SiteAlerts,
    alerts_topic,
    parse_device_topic,
    summary_topic,
    topic,
)
from device.contract.topics import ALL_EVENTS, ALL_HEALTH, ALL_STATUS


def _health(**fields) -> HealthMessage:
    return HealthMessage(device_id="pi-101", ts_ms=1_767_000_000_000, state=DeviceState.ONLINE, **fields)


def test_health_round_trips_through_its_payload():
    message = _health(
        uptime_s=3600.2,
        windows_emitted=1800,
        models={"face_emotion": "face-emotion-20261122"},
        host={"cpu_load_1m": 0.61, "cpu_temp_c": None},
        vision={"frames_analysed": 18000, "detect_ms_p50": 4.1, "fault": None},
        mqtt={"connected": True, "backlog": 0, "last_error": None},
    )
    data = json.loads(message.to_payload())
    assert data["type"] == "health" and data["schema"] == 1 and data["state"] == "online"
    assert HealthMessage.from_payload(message.to_payload()) == message


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fps": 4.5}, "unknown fields: fps"),
        ({"state": "asleep"}, "state must be one of"),
        ({"vision": {"detect_ms_p50": [1, 2]}}, "vision.detect_ms_p50 must be a number"),
        ({"host": {"a": {"b": {"c": 1}}}}, "host.a.b nests too deeply"),
        ({"audio": {"fault": "x" * 300}}, "audio.fault must be at most 256"),
        ({"windows_emitted": -1}, "windows_emitted must be an integer >= 0"),
        ({"device_id": "a/b"}, "device_id contains characters not allowed"),
        ({"schema": 2}, "unsupported schema version 2"),
    ],
)
def test_health_that_does_not_fit_the_schema_is_refused_with_the_reason(change, reason):
    data = {**_health().to_dict(), **change}
    with pytest.raises(SchemaError, match=reason):
        HealthMessage.from_dict(data)


def test_room_summary_round_trips_and_keeps_its_window_object():
    summary = RoomSummary(
        site="school1", room="room101", room_id=3, ts_ms=2_000, window_start_ms=1_000, window_end_ms=2_000,
        windows=4, distribution=None, dominant=None, valence=None, arousal=None, faces=4.5, devices_online=1,
    )
    data = json.loads(summary.to_payload())
    assert data["window"] == {"start_ms": 1_000, "end_ms": 2_000, "windows": 4}
    assert RoomSummary.from_payload(summary.to_payload()) == summary
    data["window"] = {"start_ms": 1}
    with pytest.raises(SchemaError, match="window must be an object"):
        RoomSummary.from_dict(data)


def test_topics_are_named_in_one_place():
    topics = DeviceTopics.for_device("school1", "room101", "pi-101")
    assert topics.events == topic("school1", "room101", "pi-101", "events") == "aula/v1/school1/room101/pi-101/events"
    assert topics.cmd_ack == "aula/v1/school1/room101/pi-101/cmd/ack"
    assert summary_topic("school1", "room101") == "aula/v1/school1/room101/summary"
    assert (ALL_EVENTS, ALL_STATUS, ALL_HEALTH) == ("aula/v1/+/+/+/events", "aula/v1/+/+/+/status",
                                                    "aula/v1/+/+/+/health")
    assert parse_device_topic(topics.health) == ("school1", "room101", "pi-101", "health")
    for bad in (topics.cmd, topics.cmd_ack, "aula/v2/a/b/c/events", "aula/v1/a/+/c/events", "aula/v1/a/b/events"):
        assert parse_device_topic(bad) is None, bad


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_contract_loads_nothing_but_the_standard_library():
    loaded = _modules_after("import device.contract")
    project = {m for m in loaded if m.split(".")[0] in ("device", "server", "converter")}
    assert project == {m for m in project if m == "device" or m.startswith("device.contract")}
    assert not loaded & {"pydantic", "yaml", "paho", "numpy"}


def test_the_server_process_loads_no_device_internals():
    """The server imports the contract and the shared layer only: no publisher, offline queue, models or OpenCV."""
    loaded = _modules_after("import server.__main__, server.service, server.app, server.api, server.testing")
    device = {m for m in loaded if m == "device" or m.startswith("device.")}
    stray = {m for m in device if m != "device" and not m.startswith(("device.contract", "device.common"))}
    assert not stray, f"the server loaded device internals: {sorted(stray)}"
    assert "device.mqtt.publisher" not in loaded and "device.offline_queue" not in loaded
    assert not loaded & {"cv2", "ai_edge_litert", "onnxruntime", "tensorflow"}


def test_site_alerts_round_trip_and_refuse_what_monitoring_could_not_use():
    alerts = SiteAlerts(site="school1", ts_ms=1_767_000_000_000, alerts=[
        DeviceAlert("pi-101", "Room 101", "degraded", "camera: no frames for 10 s", 1_766_999_000_000),
        DeviceAlert("pi-102", None, "offline", None, 1_766_998_000_000)])
    data = json.loads(alerts.to_payload())
    assert data["type"] == "alerts" and data["alerts"][1] == {
        "device_id": "pi-102", "room": None, "state": "offline", "reason": None, "since_ms": 1_766_998_000_000}
    assert SiteAlerts.from_payload(alerts.to_payload()) == alerts
    assert alerts_topic("school1") == "aula/v1/school1/alerts"
    for change, message in [
        ({"alerts": []}, "empty payload clears"),
        ({"alerts": [dict(data["alerts"][0], state="online")]}, "state must be one of offline, degraded"),
        ({"alerts": [dict(data["alerts"][0], extra=1)]}, "unknown alert fields: extra"),
        ({"alerts": [dict(data["alerts"][0], device_id="a/b")]}, "device_id contains characters"),
        ({"alerts": ["pi-101"]}, "each alert must be an object"),
        ({"site": ""}, "site must be a non-empty string"),
    ]:
        with pytest.raises(SchemaError, match=message):
            SiteAlerts.from_dict(dict(data, **change))
