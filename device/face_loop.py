"""Run the face path on a frame source: capture thread, rate-limited analysis, class-level windows."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.analysis_rate import AnalysisRate
from device.errors import AulaError, SourceError
from device.sources import CaptureThread, FrameSource
from device.vision import VisionStage
from device.windows import FaceWindow, FaceWindowPooler

logger = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """Counters for one run of the face loop."""

    frames_captured: int = 0
    frames_dropped: int = 0
    frames_skipped_rate: int = 0
    frames_analysed: int = 0
    windows: int = 0
    wall_s: float = 0.0


def run_face_windows(
    source: FrameSource,
    stage: VisionStage,
    pooler: FaceWindowPooler,
    emit: Callable[[FaceWindow], None],
    rate: AnalysisRate,
    stop: threading.Event | None = None,
) -> LoopStats:
    """Analyse frames at the (adaptive) rate until the source ends or `stop` is set."""
    stop = stop or threading.Event()
    stats = LoopStats()
    last_t = None
    rate.restart()
    t0 = time.monotonic()
    if not source.paced:
        return _run_unpaced(source, stage, pooler, emit, rate, stop, stats, t0)
    capture = CaptureThread(source).start()  # opens and closes the source on its own thread
    try:
        while not stop.is_set():
            frame = capture.slot.get(timeout=0.5)
            if frame is None:
                if isinstance(capture.error, AulaError):
                    raise capture.error
                if capture.error is not None:
                    raise SourceError(f"{source.name} failed: {capture.error!r}") from capture.error
                if capture.ended or not capture.alive:
                    break
                continue
            last_t = _step(frame, stage, pooler, emit, rate, stats, last_t)
        _flush(pooler, emit, stats, last_t, capture.ended)
    finally:
        capture.stop()
        stats.frames_captured = capture.slot.captured
        stats.frames_dropped = capture.slot.dropped
        stats.wall_s = time.monotonic() - t0
    return stats


def _step(frame, stage, pooler, emit, rate, stats, last_t, adapt=True):
    if not rate.admit(frame.t_capture):
        stats.frames_skipped_rate += 1
        return last_t
    t = time.perf_counter()
    analysis = stage.analyse(frame.image, frame.t_capture)
    if adapt:
        rate.observe(time.perf_counter() - t)
    stats.frames_analysed += 1
    for window in pooler.add(analysis):
        stats.windows += 1
        emit(window)
    return frame.t_capture


def _flush(pooler, emit, stats, last_t, ended: bool) -> None:
    if last_t is None:
        return
    tail = pooler.flush(last_t + 1e-3 if ended else max(last_t, time.monotonic()))
    if tail is not None:
        stats.windows += 1
        emit(tail)


def _run_unpaced(source, stage, pooler, emit, rate, stop, stats, t0) -> LoopStats:
    """Pull every frame of an as-fast-as-possible replay in this thread: no frame is dropped.

    Media time is not wall time here, so the rate stays at its target instead of adapting to CPU cost.
    """
    last_t = None
    source.open()
    try:
        while not stop.is_set():
            frame = source.read()
            if frame is None:
                break
            stats.frames_captured += 1
            last_t = _step(frame, stage, pooler, emit, rate, stats, last_t, adapt=False)
        _flush(pooler, emit, stats, last_t, ended=not stop.is_set())
    finally:
        source.close()
        stats.wall_s = time.monotonic() - t0
    return stats
