"""Supervised stage workers: vision (camera -> faces) and audio (mic -> voice gate -> speech emotion).

Each worker runs in its own thread, restarts its source with backoff after a failure, reports the fault
while it lasts, and adds its results to the shared WindowBuckets. A privacy pause closes the device
(camera or mic) and stops inference until resumed.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from device.analysis_rate import AnalysisRate
from device.errors import AulaError, SourceError
from device.window_buckets import WindowBuckets

logger = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def percentile(values, q: float) -> float | None:
    """Return the q-th percentile of values, or None when there are none."""
    return float(np.percentile(np.fromiter(values, float), q)) if values else None


def raise_capture_error(capture, what: str) -> None:
    """Re-raise a capture thread's error on the worker's thread (as a SourceError when it is not ours)."""
    if capture.error is None:
        return
    if isinstance(capture.error, AulaError):
        raise capture.error
    raise SourceError(f"{what} failed: {capture.error!r}") from capture.error


class StageWorker(ABC):
    """A stage running in a thread: supervised, restartable, with a heartbeat and a fault reason."""

    name = "stage"

    def __init__(self, buckets: WindowBuckets, paused: threading.Event):
        self.buckets = buckets
        self.paused = paused
        self.stop_event = threading.Event()
        self.fault: str | None = None
        self.ended = False
        self.restarts = 0
        self.heartbeat = time.monotonic()
        self.progress: float | None = None  # capture time of the newest input handled
        self._thread: threading.Thread | None = None
        self._capture = None  # the capture thread of the current run, if any
        self._source = None

    def start(self) -> StageWorker:
        self.stop_event.clear()
        self._thread = threading.Thread(target=self._supervise, name=self.name, daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        self.interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def interrupt(self) -> None:
        """Stop the current capture so a blocking read or pacing sleep ends now (stop, pause, reload)."""
        capture, source = self._capture, self._source
        if capture is not None:
            capture.stop(timeout=0.1)
        elif source is not None:
            source.interrupt()

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def delivered(self) -> None:
        """The input produces data again: whatever fault was reported is over."""
        self._failures = 0
        if self.fault is not None:
            logger.info("%s recovered", self.name)
            self.fault = None

    def _supervise(self) -> None:
        self._failures = 0
        while not self.stop_event.is_set() and not self.ended:
            self.beat()
            if self.paused.is_set():
                self.paused_wait()
                continue
            try:
                self.run_once()
                self.delivered()
            except AulaError as exc:
                self.fault = str(exc)
                logger.error("%s failed: %s", self.name, exc)
            except Exception as exc:
                self.fault = f"{type(exc).__name__}: {exc}"
                logger.exception("%s crashed", self.name)
            if self.fault is not None and not self.stop_event.is_set():
                delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
                self._failures += 1
                self.restarts += 1
                logger.info("%s retries in %.0f s", self.name, delay)
                self._wait(delay)

    def paused_wait(self) -> None:
        while self.paused.is_set() and not self.stop_event.is_set():
            self.beat()
            self._wait(0.2)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.beat()
            self.stop_event.wait(min(0.5, end - time.monotonic()))

    def should_run(self) -> bool:
        return not self.stop_event.is_set() and not self.paused.is_set()

    @abstractmethod
    def run_once(self) -> None:
        """Open the input and process it until stop, pause, end of a finite input, or an error."""

    @abstractmethod
    def health(self) -> dict:
        """Counters and timings for the health message."""


class VisionWorker(StageWorker):
    """Camera -> latest-frame slot -> face detection and classification at the adaptive analysis rate."""

    name = "vision"

    def __init__(self, buckets, paused, camera_config, stage, rate: AnalysisRate):
        super().__init__(buckets, paused)
        self.camera_config = camera_config
        self.stage = stage
        self.rate = rate
        self.frames_analysed = 0
        self.frames_dropped = 0
        self.frames_captured = 0
        self.detect_ms: deque[float] = deque(maxlen=600)
        self.classify_ms_per_face: deque[float] = deque(maxlen=600)

    def _analyse(self, frame) -> None:
        if not self.rate.admit(frame.t_capture):
            return
        t = time.perf_counter()
        analysis = self.stage.analyse(frame.image, frame.t_capture)
        if self._source is not None and self._source.paced:
            self.rate.observe(time.perf_counter() - t)
        self.frames_analysed += 1
        self.delivered()
        self.detect_ms.append(analysis.detect_ms)
        if analysis.n_faces:
            self.classify_ms_per_face.append(analysis.classify_ms / analysis.n_faces)
        self.buckets.add_faces(frame.t_capture, analysis.probs)
        self.progress = frame.t_capture

    def run_once(self) -> None:
        from device.sources import CaptureThread, build_source

        source = build_source(self.camera_config)
        self._source = source
        self.rate.restart()
        try:
            if not source.paced:  # a replay at full speed: pull every frame here, none dropped
                source.open()
                try:
                    while self.should_run():
                        self.beat()
                        frame = source.read()
                        if frame is None:
                            self.ended = True
                            return
                        self.frames_captured += 1
                        self._analyse(frame)
                finally:
                    source.close()
                return
            capture = CaptureThread(source).start()
            self._capture = capture
            base_captured, base_dropped = self.frames_captured, self.frames_dropped
            try:
                while self.should_run():
                    self.beat()
                    frame = capture.slot.get(timeout=0.5)
                    self.frames_captured = base_captured + capture.slot.captured
                    self.frames_dropped = base_dropped + capture.slot.dropped
                    if frame is None:
                        raise_capture_error(capture, "camera")
                        if capture.ended:
                            self.ended = True
                            return
                        if not capture.alive and not self.stop_event.is_set():
                            raise SourceError("camera capture stopped unexpectedly")
                        continue
                    self._analyse(frame)
            finally:
                capture.stop()
                self._capture = None
        finally:
            self._source = None

    def health(self) -> dict:
        return {
            "frames_captured": self.frames_captured,
            "frames_analysed": self.frames_analysed,
            "frames_dropped": self.frames_dropped,
            "analysis_fps_target": round(self.rate.fps, 2),
            "detect_ms_p50": percentile(self.detect_ms, 50),
            "detect_ms_p95": percentile(self.detect_ms, 95),
            "face_emotion_ms_per_face_p50": percentile(self.classify_ms_per_face, 50),
            "face_emotion_ms_per_face_p95": percentile(self.classify_ms_per_face, 95),
            "faces_mirrored_share": self._mirrored_share(),
        }

    def _mirrored_share(self) -> float | None:
        """Share of classified faces that got the mirror gate's second pass (None before the first face)."""
        share = getattr(getattr(self.stage, "classifier", None), "mirrored_share", None)
        return None if share is None else round(share, 3)


class AudioWorker(StageWorker):
    """Microphone -> ring buffer -> voice gate -> speech segments (-> speech emotion model, when one is set)."""

    name = "audio"

    def __init__(self, buckets, paused, audio_config, gate_config, speech_model=None, buffer_s: float = 30.0):
        super().__init__(buckets, paused)
        self.audio_config = audio_config
        self.gate_config = gate_config
        self.speech_model = speech_model  # anything with predict(samples) -> 7 probabilities
        self.buffer_s = buffer_s
        self.segments = 0
        self.audio_dropped_s = 0.0
        self.buffer_unread = 0
        self.speech_ms: deque[float] = deque(maxlen=200)

    def _segment(self, seg) -> None:
        probs = None
        if self.speech_model is not None:
            t = time.perf_counter()
            probs = self.speech_model.predict(seg.samples)
            self.speech_ms.append((time.perf_counter() - t) * 1000)
        self.segments += 1
        self.buckets.add_speech(seg.t_end, probs, seg.voiced_s)

    def run_once(self) -> None:
        from device.audio import AudioCaptureThread, AudioRingBuffer, build_audio_source
        from device.audio.voice_gate import VoiceGate

        source = build_audio_source(self.audio_config)
        self._source = source
        gate = VoiceGate(self.gate_config)
        try:
            if not source.paced:
                source.open()
                try:
                    while self.should_run():
                        self.beat()
                        chunk = source.read()
                        if chunk is None:
                            tail = gate.flush()
                            if tail is not None:
                                self._segment(tail)
                            self.ended = True
                            return
                        for seg in gate.process(chunk):
                            self._segment(seg)
                        self.progress = chunk.t_end
                finally:
                    source.close()
                return
            buffer = AudioRingBuffer(self.buffer_s)
            capture = AudioCaptureThread(source, buffer).start()
            self._capture = capture
            try:
                while self.should_run():
                    self.beat()
                    chunk = buffer.read(timeout=0.5)
                    self.audio_dropped_s = buffer.dropped_s
                    self.buffer_unread = buffer.unread
                    if chunk is None:
                        raise_capture_error(capture, "microphone")
                        if capture.ended:
                            self.ended = True
                            return
                        continue
                    self.delivered()
                    for seg in gate.process(chunk):
                        self._segment(seg)
                    self.progress = chunk.t_end
            finally:
                capture.stop()
                self._capture = None
        finally:
            self._source = None

    def health(self) -> dict:
        return {
            "speech_segments": self.segments,
            "audio_dropped_s": round(self.audio_dropped_s, 3),
            "audio_buffer_unread": self.buffer_unread,
            "speech_emotion_ms_p50": percentile(self.speech_ms, 50),
            "speech_emotion_ms_p95": percentile(self.speech_ms, 95),
        }
