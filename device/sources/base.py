"""Frame sources behind one small interface, plus the latest-frame slot and capture thread."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from device.capture import SourceThread

logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """One BGR uint8 image with its capture time (time.monotonic seconds) and running index."""

    image: np.ndarray
    t_capture: float
    index: int
    source: str


class FrameSource(ABC):
    """A camera, video or folder that yields Frames; open, read until None (finite sources), close."""

    type_key: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    registry: ClassVar[dict[str, type[FrameSource]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        key = getattr(cls, "type_key", None)
        if not key:
            return
        # The config's discriminator must name the same backend, or build_source would pick the wrong class.
        field = cls.Config.model_fields.get("type")
        if field is None or field.default != key:
            raise TypeError(f"{cls.__name__}.Config needs a field type: Literal[{key!r}] = {key!r}")
        FrameSource.registry[key] = cls

    def __init__(self, config: BaseModel):
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self._index = 0
        # Set by interrupt() so pacing sleeps end at once when a capture thread is stopped.
        self._wake = threading.Event()

    @classmethod
    def available(cls) -> bool:
        """Return whether this backend's library imports here."""
        return True

    @property
    def paced(self) -> bool:
        """True when frames arrive at their own rate (a camera, a real-time replay); False when a
        replay yields frames as fast as they are read, so a consumer may pull them synchronously."""
        return True

    @property
    def name(self) -> str:
        """Short human label for logs and Frame.source."""
        return self.type_key

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError or BackendUnavailable with the fix."""

    @abstractmethod
    def read(self) -> Frame | None:
        """Return the next frame, or None at the end of a finite source."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def interrupt(self) -> None:
        """Cut short any pacing sleep in read() (called from another thread)."""
        self._wake.set()

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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

    def peek(self) -> Frame | None:
        """Return the newest frame without marking it read (for previews)."""
        with self._cond:
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
