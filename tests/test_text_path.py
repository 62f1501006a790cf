"""The words path's scheduling, counting and privacy, with a scripted recogniser (the real recognisers and the
real text model run in tests/test_speech_to_text.py and in the device-service test with the text path on)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from device.text_path import TextPath
from device.window_buckets import WindowBuckets

SECRET = "pineapple submarine"


@dataclass
class Said:
    text: str


class ScriptedRecogniser:
    """Returns the text written in the segment's first sample (an index into `lines`); can be made slow."""

    name = "scripted"

    def __init__(self, lines, delay_s: float = 0.0, gate: threading.Event | None = None):
        self.lines = lines
        self.delay_s = delay_s
        self.gate = gate
        self.heard: list[int] = []

    def transcribe(self, samples):
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay_s)
        i = round(float(samples[0]) * 100)
        self.heard.append(i)
        line = self.lines[i]
        if isinstance(line, Exception):
            raise line
        return Said(line)


class CountingModel:
    """Seven probabilities with all the mass on 'happy'; remembers how many sentences it saw (not which)."""

    def __init__(self):
        self.calls = 0

    def predict(self, text):
        assert isinstance(text, str) and text
        self.calls += 1
        p = np.full(7, 0.01, np.float32)
        p[3] = 0.94
        return p


def segment(i: int, seconds: float = 1.0) -> np.ndarray:
    wave = np.zeros(int(16000 * seconds), np.float32)
    wave[0] = i / 100
    return wave


def test_a_replay_transcribes_every_segment_in_order_into_its_own_window():
    buckets = WindowBuckets(0.0, 2.0)
    rec = ScriptedRecogniser([SECRET, "", "  ...  ", "good morning"])
    path = TextPath(rec, CountingModel(), buckets)
    for i, t_end in enumerate((1.0, 3.0, 5.0, 7.0)):
        path.submit(segment(i), t_end, live=False)
    assert rec.heard == [0, 1, 2, 3]
    windows = [buckets.close(k) for k in range(4)]
    assert [len(w.text_rows) for w in windows] == [1, 0, 0, 1]  # no words, no utterance
    assert windows[0].text_probs.shape == (1, 7)
    h = path.health()
    assert h["segments_transcribed"] == 4 and h["segments_not_transcribed"] == 0
    assert h["text_utterances"] == 2 and h["transcribed_share"] == 1.0
    assert h["transcriber"] == "scripted" and h["transcriber_rtf"] is not None


def test_live_speech_faster_than_the_recogniser_skips_the_oldest_and_never_builds_a_backlog():
    buckets = WindowBuckets(time.monotonic(), 2.0)
    gate = threading.Event()
    rec = ScriptedRecogniser([f"sentence {i}" for i in range(10)], gate=gate)
    path = TextPath(rec, CountingModel(), buckets, max_waiting=2)
    now = time.monotonic()
    path.submit(segment(0), now, live=True)
    deadline = time.monotonic() + 5
    while path._waiting and time.monotonic() < deadline:  # the thread takes segment 0 first
        time.sleep(0.01)
    for i in range(1, 6):
        path.submit(segment(i), now, live=True)
    gate.set()
    deadline = time.monotonic() + 5
    while path.segments_transcribed < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    path.stop()
    # 0 was taken at once; of 1-5 only the two newest were still waiting, and the newest went first.
    assert rec.heard == [0, 5, 4]
    h = path.health()
    assert h["segments_not_transcribed"] == 3 and h["segments_transcribed"] == 3
    assert h["transcribed_share"] == 0.5


def test_a_failing_recogniser_is_counted_and_the_path_goes_on():
    buckets = WindowBuckets(0.0, 2.0)
    rec = ScriptedRecogniser([RuntimeError("decoder fell over"), "hello there"])
    path = TextPath(rec, CountingModel(), buckets)
    path.submit(segment(0), 0.5, live=False)
    path.submit(segment(1), 0.7, live=False)
    assert path.health()["transcriber_errors"] == 1
    assert len(buckets.close(0).text_rows) == 1


def test_the_words_are_never_logged_kept_or_reported(caplog):
    caplog.set_level(logging.DEBUG)
    buckets = WindowBuckets(0.0, 2.0)
    model = CountingModel()
    path = TextPath(ScriptedRecogniser([SECRET, ValueError(SECRET)]), model, buckets)
    path.submit(segment(0), 1.0, live=False)
    path.submit(segment(1), 1.5, live=False)
    assert model.calls == 1
    assert SECRET not in caplog.text
    assert SECRET not in repr(path.health())
    assert SECRET not in repr(vars(path))
    contents = buckets.close(0)
    assert SECRET not in repr(vars(contents))


def test_a_pause_discards_the_waiting_segments():
    gate = threading.Event()
    rec = ScriptedRecogniser([f"s{i}" for i in range(5)], gate=gate)
    path = TextPath(rec, CountingModel(), WindowBuckets(time.monotonic(), 2.0), max_waiting=3)
    for i in range(3):
        path.submit(segment(i), time.monotonic(), live=True)
    time.sleep(0.1)
    path.discard_waiting()
    gate.set()
    path.stop()
    assert len(rec.heard) <= 1
    assert path.segments_skipped >= 2


def test_max_waiting_must_be_positive():
    with pytest.raises(ValueError, match="max_waiting"):
        TextPath(ScriptedRecogniser([]), CountingModel(), None, max_waiting=0)
