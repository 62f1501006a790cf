"""The whole device with the words path on, against a real Mosquitto: real speech (espeak-ng) through the
voice detector, Whisper tiny.en and the int8 text model. The events carry the words' mood, and the words
themselves appear nowhere: not in the events, the health messages, the device's log or its queue file."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from device.contract import HealthMessage
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.mqtt_helpers import Collector, wait_for
from tests.speech_assets import espeak_missing, synthesise
from tests.system_deps import missing_system_dep
from tests.test_device_service import TOPICS, start_device

# Words no event, log line or file may contain; "wonderful" and "thrilled" also give the text model something.
LINES = ("I am thrilled, this is wonderful news about the science fair.",
         "Honestly the volcano project was a terrible disappointment.",
         "Please open your notebooks at page twelve.")
WORDS = ("thrilled", "wonderful", "volcano", "disappointment", "notebooks", "twelve")


def _speech_wav(path) -> None:
    gap = np.zeros(16000, np.float32)
    parts = []
    for line in LINES:
        parts += [gap, synthesise(line), gap]
    samples = (np.concatenate(parts) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())


@pytest.fixture
def speech_wav(tmp_path):
    reason = espeak_missing()
    if reason:
        missing_system_dep(reason)
    path = tmp_path / "lesson.wav"
    _speech_wav(path)
    return path


def test_the_events_carry_the_words_mood_and_never_the_words(mosquitto, tmp_path, speech_wav):
    config = tmp_path / "device.yaml"
    config.write_text("camera: null\ntext:\n  enabled: true\nmqtt:\n  health_interval_s: 1\n")
    collector = Collector(mosquitto, "aula/#", client_id="words")
    state = tmp_path / "state"
    proc = start_device(mosquitto, state, "--audio", str(speech_wav), "--fast", config=config)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert wait_for(lambda: any(e.counts.get("text_utterances") for e in collector.events(TOPICS)), 10)
    events = collector.events(TOPICS)
    with_words = [e for e in events if e.modalities.get("text")]
    assert sum(e.counts["text_utterances"] for e in events) >= 2
    assert with_words and all(abs(sum(e.modalities["text"].values()) - 1) < 1e-3 for e in with_words)
    assert {"text_emotion", "transcriber"} <= set(events[0].models)
    assert all(e.transcript is None for e in events)
    healths = [HealthMessage.from_payload(m.payload) for m in collector.on(TOPICS.health)]
    audio = healths[-1].audio if healths else None
    if audio is not None:
        assert audio["transcriber"].startswith("whisper")
    everything = b"".join(m.payload for m in collector.messages).decode().lower() + out.lower() + err.lower()
    everything += b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file()).decode("latin-1").lower()
    leaked = [w for w in WORDS if w in everything]
    assert not leaked, f"words left the recogniser: {leaked}"
    collector.close()


def test_a_words_path_that_cannot_be_built_degrades_the_device_and_the_faces_go_on(tmp_path):
    import json
    import subprocess
    import sys

    from tests.test_device_service import ROOT

    config = tmp_path / "device.yaml"
    config.write_text("text:\n  enabled: true\n  emotion_model: no_such_model\n")
    out = subprocess.run([sys.executable, "-m", "device", "demo", "--fast", "--summary", "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(next(line for line in reversed(out.stderr.splitlines())
                              if line.startswith('{"summary"')))["summary"]
    assert summary["reason"].startswith("text: text-emotion model: no model 'no_such_model'")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert any(e["modalities"]["face"] for e in events)
    assert all(e["modalities"]["text"] is None for e in events)
