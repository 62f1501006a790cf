"""Audio sources behind one small interface, plus a bounded ring buffer and a capture thread that never waits."""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from device.capture import Source, SourceThread

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # every source delivers 16 kHz mono int16, what the speech models take


@dataclass
class AudioChunk:
    """Mono int16 samples with the capture time (time.monotonic seconds) of the first sample."""

    samples: np.ndarray
    t_capture: float
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise ValueError(f"audio samples must be 1-D int16, got {self.samples.dtype} {self.samples.shape}")

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def t_end(self) -> float:
        """Time just after the last sample."""
        return self.t_capture + self.duration


class AudioSource(Source):
    """A microphone or file that yields AudioChunks at 16 kHz; open, read until None (finite sources), close."""

    registry: ClassVar[dict[str, type[AudioSource]]] = {}

    @abstractmethod
    def read(self) -> AudioChunk | None:
        """Return the next chunk, or None at the end of a finite source."""


class AudioRingBuffer:
    """Bounded, thread-safe store of the newest audio; a writer never waits, and audio overwritten before it was
    read is counted as dropped.

    Two ways to consume: read() hands out unread audio in order (for the voice gate), latest(seconds) returns the
    newest audio without consuming it (for a level meter or a snapshot).
    """

    # Chunks whose start time is off by more than this from the running sample clock start a new span, so that
    # read() never returns audio across a gap with a wrong timestamp.
    GAP_TOLERANCE_S = 0.02

    def __init__(self, seconds: float = 30.0, sample_rate: int = SAMPLE_RATE):
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.sample_rate = sample_rate
        self.capacity = round(seconds * sample_rate)
        self._data = np.zeros(self.capacity, np.int16)
        self._cond = threading.Condition()
        self._written = 0  # samples ever written (absolute index of the next sample)
        self._read_pos = 0  # absolute index of the next unread sample
        self._marks: deque[tuple[int, float]] = deque()  # (absolute index, time) where each chunk starts
        self._closed = False
        self.chunks = 0
        self.dropped = 0  # samples overwritten before read() returned them

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped_s(self) -> float:
        return self.dropped / self.sample_rate

    @property
    def unread(self) -> int:
        with self._cond:
            return self._written - self._read_pos

    def write(self, chunk: AudioChunk) -> None:
        """Append a chunk; when full, the oldest audio goes (and counts as dropped if it was unread)."""
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk is {chunk.sample_rate} Hz, buffer is {self.sample_rate} Hz")
        samples = chunk.samples
        t = chunk.t_capture
        if len(samples) == 0:
            return
        with self._cond:
            if len(samples) > self.capacity:
                skip = len(samples) - self.capacity
                self._marks.append((self._written, t))
                self._written += skip
                t += skip / self.sample_rate
                samples = samples[skip:]
            self._marks.append((self._written, t))
            start = self._written % self.capacity
            first = min(len(samples), self.capacity - start)
            self._data[start : start + first] = samples[:first]
            self._data[: len(samples) - first] = samples[first:]
            self._written += len(samples)
            oldest = self._written - self.capacity
            if self._read_pos < oldest:
                self.dropped += oldest - self._read_pos
                self._read_pos = oldest
            # Keep the last mark at or before the oldest sample: it still dates that sample.
            while len(self._marks) > 1 and self._marks[1][0] <= max(oldest, 0):
                self._marks.popleft()
            self.chunks += 1
            self._cond.notify_all()

    def _time_of(self, index: int) -> float:
        """Capture time of an absolute sample index (caller holds the lock)."""
        mark_index, mark_t = self._marks[0]
        for i, t in self._marks:
            if i > index:
                break
            mark_index, mark_t = i, t
        return mark_t + (index - mark_index) / self.sample_rate

    def _span_end(self, start: int, end: int) -> int:
        """Return where audio from `start` stops being contiguous in time, at most `end` (caller holds the lock)."""
        prev: tuple[int, float] | None = None
        for i, t in self._marks:
            if i >= end:
                break
            if prev is not None and i > start:
                expected = prev[1] + (i - prev[0]) / self.sample_rate
                if abs(t - expected) > self.GAP_TOLERANCE_S:
                    return i
            prev = (i, t)
        return end

    def _copy(self, start: int, end: int) -> np.ndarray:
        idx = np.arange(start, end) % self.capacity
        return self._data[idx]

    def read(self, max_samples: int | None = None, timeout: float | None = None) -> AudioChunk | None:
        """Return unread audio in order (waiting for some up to timeout); None on timeout or once closed and drained.

        A returned chunk never spans a gap in capture time, so its t_capture dates every sample in it.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._written > self._read_pos or self._closed, timeout)
            if self._written <= self._read_pos:
                return None
            start = self._read_pos
            end = self._written if max_samples is None else min(self._written, start + max_samples)
            end = self._span_end(start, end)
            chunk = AudioChunk(self._copy(start, end), self._time_of(start), self.sample_rate)
            self._read_pos = end
            return chunk

    def latest(self, seconds: float) -> AudioChunk | None:
        """Return the newest `seconds` of audio without consuming it; None when empty."""
        with self._cond:
            n = min(round(seconds * self.sample_rate), self.capacity, self._written)
            if n <= 0:
                return None
            start = self._written - n
            return AudioChunk(self._copy(start, self._written), self._time_of(start), self.sample_rate)

    def put(self, chunk: AudioChunk) -> None:
        """Sink interface for the capture thread: same as write()."""
        self.write(chunk)

    def close(self) -> None:
        """Wake waiting readers; read() drains what is left, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class AudioCaptureThread(SourceThread):
    """Reads an audio source into an AudioRingBuffer, so a slow consumer never stalls capture."""

    kind = "audio"

    def __init__(self, source: AudioSource, buffer: AudioRingBuffer | None = None):
        super().__init__(source, buffer if buffer is not None else AudioRingBuffer())

    @property
    def buffer(self) -> AudioRingBuffer:
        return self.sink


class AudioPacer:
    """Releases audio at real time against time.monotonic: a chunk is due once its last sample would exist."""

    # Behind by more than this, the clock re-anchors instead of releasing a burst of late audio.
    MAX_LAG_S = 0.5

    def __init__(self, realtime: bool, wake: threading.Event, sample_rate: int = SAMPLE_RATE):
        self.realtime = realtime
        self.sample_rate = sample_rate
        self._wake = wake
        self._t0 = time.monotonic()
        self._emitted = 0

    def next(self, n: int) -> float:
        """Wait (when real time) until n more samples are due; return the capture time of their first sample."""
        t_first = self._t0 + self._emitted / self.sample_rate
        self._emitted += n
        if self.realtime:
            due = self._t0 + self._emitted / self.sample_rate
            delay = due - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
            elif -delay > self.MAX_LAG_S:
                self._t0 -= delay  # behave like a live mic after a stall: the lost time is skipped
        return t_first
