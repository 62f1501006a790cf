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
MIN_SPEECH_S = 0.5  # shorter segments are counted but not classified (SpeechEmotionModel's minimum)


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
        self._capture_thread = None  # the capture thread of the current run, if any
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
        capture, source = self._capture_thread, self._source
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

    # ---- one run of the input: the same skeleton for every stage ---------------------------------------------

    what = "input"  # what the errors call the input: "camera", "microphone"

    @abstractmethod
    def _build_source(self):
        """A new, unopened source from the config; called once per run."""

    @abstractmethod
    def _capture(self, source):
        """Start a capture thread for a live (paced) source; it must have stop(), ended, alive and error."""

    @abstractmethod
    def _next_captured(self, capture):
        """The next captured item, or None after a short wait; may update drop counters."""

    @abstractmethod
    def _handle(self, item, captured: bool) -> None:
        """Process one frame or chunk; `captured` is False when pulled from a replay at full speed."""

    def _begin(self) -> None:
        """Set up per-run state before the source opens (optional)."""
        return None

    def _input_ended(self) -> None:
        """A finite input ended: flush what is pending (optional)."""
        return None

    def run_once(self) -> None:
        """Open the input and process it until stop, pause, end of a finite input, or an error."""
        source = self._build_source()
        self._source = source
        self._begin()
        try:
            if source.paced:
                self._follow(source)
            else:  # a replay at full speed: pull every item here, none dropped
                self._pull(source)
        finally:
            self._source = None

    def _pull(self, source) -> None:
        source.open()
        try:
            while self.should_run():
                self.beat()
                item = source.read()
                if item is None:
                    self._input_ended()
                    self.ended = True
                    return
                self._handle(item, captured=False)
        finally:
            source.close()

    def _follow(self, source) -> None:
        capture = self._capture_thread = self._capture(source)
        try:
            while self.should_run():
                self.beat()
                item = self._next_captured(capture)
                if item is None:
                    raise_capture_error(capture, self.what)
                    if capture.ended:
                        self._input_ended()
                        self.ended = True
                        return
                    if not capture.alive and not self.stop_event.is_set():
                        raise SourceError(f"{self.what} capture stopped unexpectedly")
                    continue
                self._handle(item, captured=True)
        finally:
            capture.stop()
            self._capture_thread = None

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

    what = "camera"

    def _build_source(self):
        from device.sources import build_source

        return build_source(self.camera_config)

    def _begin(self) -> None:
        self.rate.restart()
        self._base_counts = (self.frames_captured, self.frames_dropped)

    def _capture(self, source):
        from device.sources import CaptureThread

        return CaptureThread(source).start()

    def _next_captured(self, capture):
        frame = capture.slot.get(timeout=0.5)
        base_captured, base_dropped = self._base_counts
        self.frames_captured = base_captured + capture.slot.captured
        self.frames_dropped = base_dropped + capture.slot.dropped
        return frame

    def _handle(self, frame, captured: bool) -> None:
        if not captured:
            self.frames_captured += 1
        self._analyse(frame)

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

    def __init__(self, buckets, paused, audio_config, gate_config, speech_model=None, buffer_s: float = 30.0,
                 text_path=None):
        super().__init__(buckets, paused)
        self.audio_config = audio_config
        self.gate_config = gate_config
        self.speech_model = speech_model  # a SpeechEmotionModel (window_probs), or None to count segments only
        self.text_path = text_path  # a TextPath (device/text_path.py), or None: no words are recognised
        self.buffer_s = buffer_s
        self.segments = 0
        self.audio_dropped_s = 0.0
        self.buffer_unread = 0
        self.speech_ms: deque[float] = deque(maxlen=200)  # per 2 s window
        self.windows_classified = 0
        self._gate = None

    def _segment(self, seg) -> None:
        """One closed speech segment: classify its 2 s windows (1 s apart), counted in the window where the
        segment ends (earlier windows may already be published; nothing is dropped as late)."""
        self.segments += 1
        model = self.speech_model
        wave = seg.samples.astype(np.float32) / 32768.0
        if self.text_path is not None:
            self.text_path.submit(wave, seg.t_end, live=self._source is not None and self._source.paced)
        if model is None or seg.duration < MIN_SPEECH_S:
            self.buckets.add_speech(seg.t_end, None, seg.voiced_s)
            return
        t = time.perf_counter()
        probs, _ = model.window_probs(wave)
        self.speech_ms.append((time.perf_counter() - t) * 1000 / len(probs))
        self.windows_classified += len(probs)
        for p in probs:
            self.buckets.add_speech(seg.t_end, p, seg.voiced_s / len(probs))

    what = "microphone"

    def _build_source(self):
        from device.audio import build_audio_source

        return build_audio_source(self.audio_config)

    def _begin(self) -> None:
        from device.audio.voice_gate import VoiceGate

        self._gate = VoiceGate(self.gate_config)

    def _capture(self, source):
        from device.audio import AudioCaptureThread, AudioRingBuffer

        self._buffer = AudioRingBuffer(self.buffer_s)
        return AudioCaptureThread(source, self._buffer).start()

    def _next_captured(self, capture):
        chunk = self._buffer.read(timeout=0.5)
        self.audio_dropped_s = self._buffer.dropped_s
        self.buffer_unread = self._buffer.unread
        return chunk

    def _handle(self, chunk, captured: bool) -> None:
        if captured:
            self.delivered()
        for seg in self._gate.process(chunk):
            self._segment(seg)
        self.progress = chunk.t_end

    def _input_ended(self) -> None:
        tail = self._gate.flush()
        if tail is not None:
            self._segment(tail)

    def stop(self, timeout: float = 2.0) -> None:
        super().stop(timeout)
        if self.text_path is not None:
            self.text_path.stop()

    def health(self) -> dict:
        text = self.text_path.health() if self.text_path is not None else {}
        return text | {
            "speech_segments": self.segments,
            "voice_detector": self._gate.detector.name if self._gate is not None else None,
            "voiced_share": None if self._gate is None or self._gate.voiced_share is None
            else round(self._gate.voiced_share, 3),
            "audio_dropped_s": round(self.audio_dropped_s, 3),
            "audio_buffer_unread": self.buffer_unread,
            "speech_windows": self.windows_classified,
            "speech_emotion_ms_p50": percentile(self.speech_ms, 50),
            "speech_emotion_ms_p95": percentile(self.speech_ms, 95),
        }
