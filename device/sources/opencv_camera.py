"""USB / V4L2 camera or GStreamer pipeline (Jetson CSI) through cv2.VideoCapture."""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field

from device.common.config_loader import StrictModel
from device.errors import BackendUnavailable, SourceError
from device.sources.base import Frame, FrameSource

logger = logging.getLogger(__name__)

# Reads that may fail in a row before a live camera counts as gone (USB cameras drop the odd frame).
_MAX_READ_FAILURES = 10


def list_video_devices() -> list[str]:
    """Return the /dev/video* nodes on this machine, in numeric order."""

    def number(path: str) -> int:
        digits = re.sub(r"\D", "", path)
        return int(digits) if digits else -1

    return sorted(glob.glob("/dev/video*"), key=lambda p: (number(p), p))


def _describe_devices() -> str:
    """List video nodes with their driver names (a Pi has many codec/ISP nodes that are not cameras)."""
    devices = list_video_devices()
    if not devices:
        return "none found"
    parts = []
    for dev in devices:
        label = ""
        try:
            label = Path(f"/sys/class/video4linux/{Path(dev).name}/name").read_text().strip()
        except OSError:
            pass
        parts.append(f"{dev} ({label})" if label else dev)
    return ", ".join(parts)


class OpenCVCameraConfig(StrictModel):
    """Settings for a camera opened with cv2.VideoCapture."""

    type: Literal["opencv"] = Field("opencv", description="Backend selector.")
    device: int | str = Field(
        0,
        description="USB camera index (0), a device path (/dev/video0), or a GStreamer pipeline "
        "containing '!' and ending in appsink (Jetson CSI camera).",
    )
    width: int | None = Field(640, gt=0, description="Requested frame width; None keeps the driver's.")
    height: int | None = Field(480, gt=0, description="Requested frame height; None keeps the driver's.")
    fps: float | None = Field(None, gt=0, description="Requested frame rate; None keeps the driver's.")
    fourcc: str | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="Pixel format to request, e.g. MJPG (many USB cameras reach 720p30 only in MJPG).",
    )


def _has_gstreamer() -> bool:
    """Return whether this OpenCV build can run GStreamer pipelines (pip wheels cannot)."""
    has_backend = getattr(cv2.videoio_registry, "hasBackend", None)
    if has_backend is not None:
        return bool(has_backend(cv2.CAP_GSTREAMER))
    # Older builds (JetPack's 4.x) lack hasBackend; the build summary says the same thing.
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def _is_pipeline(device: int | str) -> bool:
    return isinstance(device, str) and "!" in device


class OpenCVCamera(FrameSource):
    """A live camera read with cv2.VideoCapture; frames come out BGR."""

    type_key = "opencv"
    Config = OpenCVCameraConfig

    def __init__(self, config: OpenCVCameraConfig):
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None

    @property
    def name(self) -> str:
        device = self.config.device
        return "opencv:gstreamer" if _is_pipeline(device) else f"opencv:{device}"

    def open(self) -> None:
        device = self.config.device
        if _is_pipeline(device):
            if not _has_gstreamer():
                raise BackendUnavailable(
                    "this OpenCV build has no GStreamer support, so the pipeline cannot run; on Jetson use "
                    "the JetPack OpenCV (sudo apt install python3-opencv) in a venv made with "
                    "--system-site-packages, without opencv-python from pip"
                )
            cap = cv2.VideoCapture(device, cv2.CAP_GSTREAMER)
        else:
            if isinstance(device, str) and device.strip().isdigit():
                device = int(device)
            cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        self._configure(cap)
        self._cap = cap
        self._wake.clear()
        logger.info(
            "opened camera %s at %dx%d %.1f fps",
            self.name,
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            cap.get(cv2.CAP_PROP_FPS),
        )

    def _configure(self, cap: cv2.VideoCapture) -> None:
        cfg = self.config
        if _is_pipeline(cfg.device):
            return  # caps are set inside the pipeline string; properties are ignored there
        if cfg.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        # Keep the driver queue short: the capture thread already drops stale frames, and
        # V4L2's default of 4 buffers would add ~130 ms of latency at 30 fps.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def _open_error(self) -> str:
        device = self.config.device
        if _is_pipeline(device):
            return (
                f"cannot start GStreamer pipeline {device!r}; check it with gst-launch-1.0 (replace appsink "
                "with fakesink) and that nvargus-daemon is running for a CSI camera"
            )
        path = f"/dev/video{device}" if isinstance(device, int) or str(device).isdigit() else str(device)
        hint = ""
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            hint = f" Permission denied on {path}: add this user to the video group, then log in again."
        return (
            f"cannot open camera {device!r}. Video devices found: {_describe_devices()}. "
            "Check the camera is plugged in and not used by another program, and that this user is in the "
            "video group (sudo usermod -aG video $USER). For a Raspberry Pi CSI camera use type: picamera2."
            + hint
        )

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"camera {self.name} is not open; call open() first")
        for _ in range(_MAX_READ_FAILURES):
            ok, image = self._cap.read()
            if ok and image is not None:
                return self._make_frame(image)
            if self._wake.wait(0.05):
                return None  # interrupted by a stopping capture thread, not a camera fault
        raise SourceError(
            f"camera {self.name} stopped delivering frames (unplugged, or another program took it?). "
            f"Video devices now: {_describe_devices()}"
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
