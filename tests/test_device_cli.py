"""The device's command line: demo output, validate-config errors, selftest, clear errors for bad input."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from device.__main__ import main
from device.config import SAMPLE_VIDEO
from device.contract import EmotionEvent
from device.model_store import models_dir
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "device", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_demo_runs_the_device_service_and_prints_its_events_on_the_bundled_sample():
    out = _run("demo", "--fast", "--summary")
    assert out.returncode == 0, out.stderr
    events = [EmotionEvent.from_payload(line) for line in out.stdout.splitlines()]  # what `run` would publish
    assert len(events) >= 5  # a 12 s sample in 2 s windows
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    with_faces = [e for e in events if e.modalities.get("face")]
    assert with_faces, "no window had enough faces for a distribution"
    for e in with_faces:
        assert e.counts["faces"] >= 3 and e.dominant in e.distribution
    summary = json.loads(out.stderr.strip().splitlines()[-1])["summary"]
    assert summary["vision"]["frames_dropped"] == 0 and summary["vision"]["frames_analysed"] >= 50
    assert summary["publisher"]["printed"] == len(events)
    assert summary["audio"]["voice_detector"] == "silero" and summary["audio"]["speech_segments"] >= 3


def test_with_the_speech_model_on_the_events_carry_the_voices(tmp_path):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("speech:\n  emotion_model: speech_emotion_int8\n")
    out = _run("demo", "--fast", "--summary", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    events = [EmotionEvent.from_payload(line) for line in out.stdout.splitlines()]
    # The sample's three spoken phrases reach the speech model through Silero VAD, and the events carry them.
    with_voices = [e for e in events if e.modalities.get("speech")]
    assert with_voices and all(e.counts["speech_segments"] > 0 for e in with_voices)
    assert all(e.models["speech_emotion"] for e in events)
    summary = json.loads(out.stderr.strip().splitlines()[-1])["summary"]
    assert summary["audio"]["speech_windows"] >= 3 and summary["audio"]["speech_emotion_ms_p50"] > 0


def test_validate_config_names_file_line_and_key(tmp_path, capsys):
    bad = tmp_path / "device.yaml"
    bad.write_text("vision:\n  threads: 2\n  colour: blue\nfusion:\n  window_s: -1\n")
    assert main(["validate-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: vision.colour: unknown key" in err
    assert f"{bad}:5: fusion.window_s" in err
    good = tmp_path / "ok.yaml"
    good.write_text(f"camera:\n  type: video\n  path: {SAMPLE_VIDEO}\nvision:\n  analysis_fps: 2\n")
    assert main(["validate-config", str(good)]) == 0


def test_sending_transcripts_is_refused(tmp_path, capsys):
    cfg = tmp_path / "device.yaml"
    cfg.write_text("privacy:\n  send_transcripts: true\n")
    assert main(["validate-config", str(cfg)]) == 2
    assert "transcripts never leave the device" in capsys.readouterr().err


def test_missing_camera_gives_a_clear_error_listing_devices(tmp_path):
    cfg = tmp_path / "cam.yaml"
    cfg.write_text("camera:\n  type: opencv\n  device: /dev/video97\n")
    out = _run("demo", "--config", str(cfg))
    assert out.returncode == 2
    assert "error:" in out.stderr and "/dev/video97" in out.stderr
    assert "video devices found" in out.stderr.lower() or "none found" in out.stderr.lower()
    assert "Traceback" not in out.stderr


def test_corrupt_model_gives_a_clear_error_and_no_traceback(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(models_dir(), folder)
    (folder / "face_emotion_int8.tflite").write_bytes(b"\x00" * 1000)
    out = _run("demo", "--fast", env={**__import__("os").environ, "AULA_MODELS_DIR": str(folder)})
    assert out.returncode == 2
    assert "face_emotion_int8.tflite" in out.stderr and "corrupt" in out.stderr
    assert "Traceback" not in out.stderr


def test_selftest_passes_on_the_sample_recording(tmp_path, mosquitto):
    cfg = tmp_path / "selftest.yaml"
    cfg.write_text(f"camera:\n  type: video\n  path: {SAMPLE_VIDEO}\n  realtime: false\n"
                   f"mqtt:\n  broker: {mosquitto.url}\n")
    out = _run("selftest", "--camera", "config", "--config", str(cfg), "--frames", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = dict(re.findall(r"^(.+?)\s+(PASS|FAIL)\s", out.stdout, re.M))
    assert rows["vision on known image"] == "PASS" and rows["camera"] == "PASS"
    assert rows["microphone"] == rows["broker"] == rows["clock"] == "PASS"
    assert re.search(r"microphone\s+PASS\s+wav: 1\.\d s, level -\d+ dBFS", out.stdout)
    assert re.search(r"speech emotion\s+PASS\s+speech-emotion-whisper-head: \d+ windows of the sample", out.stdout)
    assert "FAIL" not in rows.values() and out.stdout.strip().endswith(": ready")


def test_selftest_names_a_broker_it_cannot_reach(tmp_path):
    from tests.mosquitto import free_port

    cfg = tmp_path / "selftest.yaml"
    cfg.write_text(f"camera:\n  type: video\n  path: {SAMPLE_VIDEO}\n  realtime: false\n"
                   f"mqtt:\n  broker: mqtt://127.0.0.1:{free_port()}\n")
    out = _run("selftest", "--camera", "config", "--config", str(cfg), "--frames", "3")
    assert out.returncode == 1
    assert re.search(r"broker\s+FAIL\s+OSError: broker mqtt://127\.0\.0\.1:\d+ is unreachable", out.stdout)


def test_the_clock_check_refuses_an_unset_clock():
    from device.selftest_checks import clock_synchronised

    with pytest.raises(AssertionError, match="1970-01-01: it is not set"):
        clock_synchronised(now=3600.0)
    assert "2026-12-06" in clock_synchronised(now=1796544000.0)


def test_selftest_fails_loudly_without_a_camera(tmp_path):
    cfg = tmp_path / "selftest.yaml"
    cfg.write_text("camera:\n  type: opencv\n  device: 97\n")
    out = _run("selftest", "--camera", "config", "--config", str(cfg), "--frames", "3")
    assert out.returncode == 1
    rows = dict(re.findall(r"^(.+?)\s+(PASS|FAIL)\s", out.stdout, re.M))
    assert rows["camera"] == "FAIL" and "NOT READY" in out.stdout


@pytest.mark.parametrize("args", [["demo", "--config", "/nonexistent.yaml"], ["validate-config", "/nonexistent.yaml"]])
def test_missing_config_file_is_named(args):
    out = _run(*args)
    assert out.returncode == 2 and "/nonexistent.yaml" in out.stderr


def test_documented_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "docs" / "device.example.yaml"
    assert main(["validate-config", str(example)]) == 0


def test_verify_models_names_a_mismatched_and_a_missing_file(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(models_dir(), folder)
    ok = _run("verify-models", "--dir", str(folder))
    assert ok.returncode == 0 and "match the manifest" in ok.stdout, ok.stdout + ok.stderr
    (folder / "face_emotion_int8.tflite").write_bytes(b"\x00" * 10)
    (folder / "whisper-tiny.en" / "tokenizer.json").unlink()  # a companion file of a model of several files
    bad = _run("verify-models", "--dir", str(folder))
    assert bad.returncode == 1
    assert "mismatched: face_emotion_int8.tflite, model.bin" in bad.stdout
    assert "tokenizer.json" in bad.stdout and "Traceback" not in bad.stderr
