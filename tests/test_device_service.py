"""The whole device (`python -m device run`) against a real mosquitto: events, status, pause, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.config import SAMPLE_AUDIO, SAMPLE_VIDEO
from device.contract import Command, CommandName, DeviceTopics, StatusMessage
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.mqtt_helpers import Collector, first_seqs, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOPICS = DeviceTopics.for_device("test-school", "room-7", "pi-7")


def start_device(broker, state_dir: Path, *args: str, config: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "device", "run", "--broker", broker.url, "--site", "test-school", "--room", "room-7",
           "--device-id", "pi-7", "--state-dir", str(state_dir), *args]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


# systemd/aula-device.service gives the device this long to stop before it kills it (TimeoutStopSec).
SYSTEMD_STOP_S = 10.0


def stop_device(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = SYSTEMD_STOP_S) -> float:
    """Send `sig` and return how long the device took to exit; on a time-out, fail with the device's log."""
    t = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the device did not stop within {timeout} s of signal {sig}; its log ends:\n"
                             f"{err[-4000:]}") from None
    return time.monotonic() - t


def send_command(broker, name: str, command_id: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"teacher-{command_id}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    payload = Command(id=command_id, command=CommandName(name)).to_payload()
    client.publish(TOPICS.cmd, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_a_pause_set_in_the_config_cannot_be_lifted_over_mqtt(mosquitto, tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text("privacy:\n  paused: true\n")
    collector = Collector(mosquitto, "aula/#", client_id="c-cfg-pause")
    proc = start_device(mosquitto, tmp_path / "state", "--loop", config=config)
    try:
        assert wait_for(lambda: collector.statuses(TOPICS), 30)
        assert collector.statuses(TOPICS)[0].paused, "the retained status must say paused from the start"
        send_command(mosquitto, "resume", "resume-cfg")
        assert wait_for(lambda: any(a.id == "resume-cfg" for a in collector.acks(TOPICS)), 10)
        ack = next(a for a in collector.acks(TOPICS) if a.id == "resume-cfg")
        assert not ack.ok and ack.paused and "config" in ack.reason
        t_ack_ms = time.time() * 1000
        assert wait_for(lambda: sum(e.window_start_ms > t_ack_ms for e in collector.events(TOPICS)) >= 2, 10)
        assert all(e.paused and e.counts["faces"] == 0 for e in collector.events(TOPICS))
        # A pause and a resume over MQTT on top of it change nothing either: the config's pause stays.
        send_command(mosquitto, "pause", "pause-cfg")
        send_command(mosquitto, "resume", "resume-cfg-2")
        assert wait_for(lambda: any(a.id == "resume-cfg-2" for a in collector.acks(TOPICS)), 10)
        assert not next(a for a in collector.acks(TOPICS) if a.id == "resume-cfg-2").ok
        assert collector.statuses(TOPICS)[-1].paused
    finally:
        stop_device(proc)
        collector.close()


def test_replay_publishes_schema_valid_events_and_status(mosquitto, tmp_path):
    collector = Collector(mosquitto, "aula/#", client_id="c1")
    proc = start_device(mosquitto, tmp_path, "--fast")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert wait_for(lambda: len(collector.events(TOPICS)) >= 6, 10)
    events = collector.events(TOPICS)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.device_id == "pi-7" and e.site == "test-school" and e.room == "room-7" for e in events)
    assert all(e.window_end_ms - e.window_start_ms == 2000 for e in events[:-1])
    with_faces = [e for e in events if e.modalities.get("face")]
    assert with_faces and all(e.counts["faces"] >= 3 for e in with_faces)
    assert any(e.counts["speech_segments"] > 0 for e in events)
    assert all(e.transcript is None for e in events)  # nothing but class-level figures by default
    assert set(events[0].models) >= {"face_emotion", "face_detector"}
    states = [s.state.value for s in collector.statuses(TOPICS)]
    assert states[0] == "online" and states[-1] == "stopped"
    collector.close()


def test_privacy_pause_over_mqtt_stops_inference_within_a_window_and_resume_restarts_it(mosquitto, tmp_path):
    collector = Collector(mosquitto, "aula/#", client_id="c2")
    proc = start_device(mosquitto, tmp_path, "--loop")
    try:
        assert wait_for(lambda: any(e.counts.get("faces", 0) > 0 for e in collector.events(TOPICS)), 30)
        send_command(mosquitto, "pause", "pause-1")
        assert wait_for(lambda: any(a.id == "pause-1" and a.ok for a in collector.acks(TOPICS)), 5)
        t_ack_ms = time.time() * 1000
        # Windows that start after the ack carry nothing sensed: the camera and mic are closed.
        assert wait_for(lambda: sum(e.window_start_ms > t_ack_ms for e in collector.events(TOPICS)) >= 2, 10)
        after = [e for e in collector.events(TOPICS) if e.window_start_ms > t_ack_ms]
        assert all(e.paused and e.distribution is None for e in after)
        assert all(e.counts["faces"] == 0 and e.counts["speech_segments"] == 0 for e in after)
        # Within one window: the window in progress at the ack is the last that may hold faces.
        first_paused = min(e.window_start_ms for e in collector.events(TOPICS) if e.paused)
        assert first_paused <= t_ack_ms + 2000
        send_command(mosquitto, "resume", "resume-1")
        assert wait_for(lambda: any(a.id == "resume-1" and a.ok for a in collector.acks(TOPICS)), 5)
        assert wait_for(lambda: any(not e.paused and e.counts["faces"] > 0 and e.window_start_ms > first_paused
                                    for e in collector.events(TOPICS)), 15)
        assert stop_device(proc) < 5.0  # SIGTERM stops everything within 5 s
        assert wait_for(lambda: collector.statuses(TOPICS)[-1].state.value == "stopped", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()


def test_missing_camera_degrades_keeps_audio_and_recovers(mosquitto, tmp_path):
    video = tmp_path / "late_camera.mp4"  # appears only later, like a camera plugged in late
    collector = Collector(mosquitto, "aula/#", client_id="c3")
    proc = start_device(mosquitto, tmp_path / "state", "--video", str(video), "--audio", str(SAMPLE_AUDIO), "--loop")
    try:
        assert wait_for(lambda: any(s.state.value == "degraded" for s in collector.statuses(TOPICS)), 15)
        degraded = next(s for s in collector.statuses(TOPICS) if s.state.value == "degraded")
        assert "vision" in degraded.reason and "late_camera.mp4" in degraded.reason
        # The other modality keeps going: speech segments are still counted while the camera is missing.
        assert wait_for(lambda: any(e.counts["speech_segments"] > 0 for e in collector.events(TOPICS)), 20)
        shutil.copy(SAMPLE_VIDEO, video)
        assert wait_for(lambda: any(e.counts["faces"] > 0 for e in collector.events(TOPICS)), 30)
        assert wait_for(lambda: collector.statuses(TOPICS)[-1].state.value == "online", 10)
    finally:
        stop_device(proc)
        collector.close()


def test_health_reports_stage_figures(broker_factory, tmp_path):
    broker = broker_factory()
    broker.start()
    config = tmp_path / "device.yaml"
    config.write_text("mqtt:\n  health_interval_s: 1\n")
    collector = Collector(broker, "aula/#", client_id="c4")
    proc = start_device(broker, tmp_path / "state", "--loop", config=config)
    try:
        assert wait_for(lambda: len(collector.on(TOPICS.health)) >= 3, 20)
        health = json.loads(collector.on(TOPICS.health)[-1].payload)
        text = json.dumps(health)
        for key in ("frames_analysed", "frames_dropped", "detect_ms_p50", "face_emotion_ms_per_face_p95",
                    "faces_mirrored_share", "uptime_s", "rss_mb", "cpu_load_1m", "speech_segments", "backlog"):
            assert key in text, key
    finally:
        stop_device(proc)
        collector.close()


def test_sigkill_leaves_offline_status_and_the_restart_drains_the_backlog(broker_factory, tmp_path):
    broker = broker_factory()
    proc = start_device(broker, tmp_path, "--fast")  # broker down: every event stays queued on disk
    proc.communicate(timeout=120)
    broker.start()
    collector = Collector(broker, "aula/#", client_id="c5")
    proc = start_device(broker, tmp_path, "--loop")
    assert wait_for(lambda: len(collector.events(TOPICS)) >= 7, 20)
    seqs = [e.seq for e in collector.events(TOPICS)]
    assert seqs[:7] == list(range(1, 8))  # the backlog first, in order
    proc.kill()  # SIGKILL: no clean exit, the broker sends the last will
    proc.wait()
    assert wait_for(lambda: collector.statuses(TOPICS)[-1].state.value == "offline", 60)
    collector.close()


def test_a_corrupt_face_model_leaves_the_device_up_and_degraded_while_the_voice_path_goes_on(mosquitto, tmp_path):
    """A broken model file is no configuration error: the device must not stop for good (status 2) on it."""
    folder = tmp_path / "models"
    shutil.copytree(ROOT / "models_tflite", folder)
    (folder / "face_detection_short_range.tflite").write_bytes(b"garbage")
    collector = Collector(mosquitto, "aula/#", client_id="c-corrupt")
    proc = start_device(mosquitto, tmp_path / "state", "--fast", env={"AULA_MODELS_DIR": str(folder)})
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "face_detection_short_range.tflite" in err and "Traceback" not in err
    assert wait_for(lambda: collector.events(TOPICS), 10)
    degraded = [s for s in collector.statuses(TOPICS) if s.state.value == "degraded"]
    assert degraded and "face models" in degraded[0].reason
    events = collector.events(TOPICS)
    assert all(e.modalities.get("face") is None for e in events)
    assert any(e.counts["speech_segments"] for e in events), "the voice path must go on"
    collector.close()


def test_status_payloads_are_typed(mosquitto, tmp_path):
    collector = Collector(mosquitto, TOPICS.status, client_id="c6")
    proc = start_device(mosquitto, tmp_path, "--fast")
    proc.communicate(timeout=120)
    assert wait_for(lambda: len(collector.on(TOPICS.status)) >= 2, 5)
    for m in collector.on(TOPICS.status):
        assert isinstance(StatusMessage.from_payload(m.payload).ts_ms, int)
    collector.close()


def test_broker_down_30s_during_a_replay_loses_nothing_and_keeps_order(mosquitto, tmp_path):
    outage_s = float(__import__("os").environ.get("AULA_MQTT_OUTAGE_S", "30"))
    collector = Collector(mosquitto, "aula/#", client_id="c7")
    proc = start_device(mosquitto, tmp_path, "--loop")
    try:
        assert wait_for(lambda: len(collector.events(TOPICS)) >= 2, 20)
        mosquitto.stop()
        time.sleep(outage_s)  # windows keep closing; their events wait in the on-disk queue
        mosquitto.start()
        assert wait_for(lambda: collector.client.is_connected(), 15)
        time.sleep(3)
        stop_device(proc)
        expected = max(e.seq for e in collector.events(TOPICS))
        assert wait_for(lambda: {e.seq for e in collector.events(TOPICS)} == set(range(1, expected + 1)), 15)
        events = collector.events(TOPICS)
        assert expected >= 2 + int(outage_s / 2) - 1  # the outage's windows are there too
        first = first_seqs(events)  # redelivered duplicates are recognisable by event_id
        assert first == sorted(first), "events arrived out of order"
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
