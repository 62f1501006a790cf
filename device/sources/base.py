"""Frame sources behind one small interface, plus the latest-frame slot and capture thread."""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from device.capture import Source, SourceThread

logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """One BGR uint8 image with its capture time (time.monotonic seconds) and running index."""

    image: np.ndarray
    t_capture: float
    index: int
    source: str


class FrameSource(Source):
    """A camera, video or folder that yields Frames; open, read until None (finite sources), close."""

    registry: ClassVar[dict[str, type[FrameSource]]] = {}

    def __init__(self, config: BaseModel):
        super().__init__(config)
        self._index = 0

    @abstractmethod
    def read(self) -> Frame | None:
        """Return the next frame, or None at the end of a finite source."""

    def _make_frame(self, image: np.ndarray, t_capture: float | None = None) -> Frame:
        """Wrap an image in a Frame with the next index."""
        frame = Frame(image, time.monotonic() if t_capture is None else t_capture, self._index, self.name)
        self._index += 1
        return frame


class Pacer:
    """Spaces reads at a fixed rate against time.monotonic, without bursting after a stall."""

    def __init__(self, fps: float | None, wake: threading.Event):
        self.period = 1.0 / fps if fps else 0.0
        self._wake = wake
        self._due: float | None = None

    def reset(self) -> None:
        self._due = None

    def wait(self) -> None:
        """Sleep until the next slot; the first call starts the clock and returns at once."""
        if not self.period:
            return
        now = time.monotonic()
        if self._due is None:
            self._due = now
        delay = self._due - now
        if delay > 0:
            self._wake.wait(delay)
        # After a stall the clock re-anchors to now: a replay drops the lost time like a camera
        # instead of emitting a burst of late frames to catch up.
        self._due = max(self._due + self.period, time.monotonic())


class LatestFrameSlot:
    """Thread-safe single slot: a new frame replaces an unread one, which is counted as dropped."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._unread = False
        self._closed = False
        self.captured = 0
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._unread:
                self.dropped += 1
            self._frame = frame
            self._unread = True
            self.captured += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """Wait for a frame not yet returned; None on timeout or once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._unread or self._closed, timeout)
            if not self._unread:
                return None
            self._unread = False
            return self._frame

    def close(self) -> None:
        """Wake waiting consumers; get() returns the last unread frame, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class CaptureThread(SourceThread):
    """Reads a frame source into a LatestFrameSlot, so a slow consumer never builds a backlog."""

    kind = "camera"

    def __init__(self, source: FrameSource, slot: LatestFrameSlot | None = None):
        super().__init__(source, slot if slot is not None else LatestFrameSlot())

    @property
    def slot(self) -> LatestFrameSlot:
        return self.sink
