"""Replay a video file as if it were a camera (real-time pacing) or as fast as it decodes."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field

from device.common.config_loader import StrictModel
from device.errors import SourceError
from device.sources.base import Frame, FrameSource, Pacer

logger = logging.getLogger(__name__)

# Used when the container reports no usable frame rate (some MJPEG and raw streams report 0 or 1000).
_FALLBACK_FPS = 30.0


class VideoFileConfig(StrictModel):
    """Settings for replaying a video file."""

    type: Literal["video"] = Field("video", description="Backend selector.")
    path: Path = Field(description="Video file to replay (anything the OpenCV FFmpeg backend decodes).")
    realtime: bool = Field(True, description="Pace frames at the file's rate; false: as fast as possible.")
    loop: bool = Field(False, description="Start again from the first frame at the end instead of ending.")
    fps: float | None = Field(None, gt=0, description="Override the file's frame rate for pacing.")


class VideoFile(FrameSource):
    """Frames of a video file, BGR, optionally paced at real time and looped."""

    type_key = "video"
    Config = VideoFileConfig

    def __init__(self, config: VideoFileConfig):
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None
        self._pacer: Pacer | None = None
        self._pending = None  # first frame, decoded in open() to prove the file is readable
        self.fps = _FALLBACK_FPS

    @property
    def name(self) -> str:
        return f"video:{self.config.path.name}"

    def _open_capture(self) -> cv2.VideoCapture:
        path = self.config.path
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot read video file {path}: OpenCV could not open or decode it")
        return cap

    def open(self) -> None:
        cap = self._open_capture()
        file_fps = cap.get(cv2.CAP_PROP_FPS)
        if self.config.fps:
            self.fps = self.config.fps
        elif file_fps and math.isfinite(file_fps) and 0 < file_fps <= 240:
            self.fps = file_fps
        else:
            logger.warning(
                "%s reports no usable frame rate (%s); pacing at %.0f fps", self.name, file_fps, _FALLBACK_FPS
            )
            self.fps = _FALLBACK_FPS
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"cannot read video file {self.config.path}: it has no decodable frames")
        self._pending = first
        self._cap = cap
        self._wake.clear()
        self._pacer = Pacer(self.fps if self.config.realtime else None, self._wake)
        self._t_open = time.monotonic()
        logger.info(
            "opened %s: %.0f frames at %.2f fps, realtime=%s loop=%s",
            self.name,
            cap.get(cv2.CAP_PROP_FRAME_COUNT),
            self.fps,
            self.config.realtime,
            self.config.loop,
        )

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.name} is not open; call open() first")
        if self._pending is not None:
            ok, image = True, self._pending
            self._pending = None
        else:
            ok, image = self._cap.read()
        if not ok and self.config.loop:
            # Reopening is more reliable than seeking to frame 0, which some codecs do inexactly.
            self._cap.release()
            self._cap = self._open_capture()
            ok, image = self._cap.read()  # still nothing means a file with no frames: end, not spin
        # The end of the clip is paced too, so a 1 s clip lasts 1 s.
        self._pacer.wait()
        if not ok or image is None:
            return None
        if not self.config.realtime:
            # As fast as possible: stamp frames on the media clock so windows still span media time.
            return self._make_frame(image, self._t_open + self._index / self.fps)
        return self._make_frame(image)

    @property
    def paced(self) -> bool:
        return self.config.realtime

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None
