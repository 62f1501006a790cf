"""Raspberry Pi CSI camera through picamera2; inference reads the small YUV420 lores stream."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from device.common.config_loader import StrictModel
from device.errors import BackendUnavailable, SourceError
from device.sources.base import Frame, FrameSource

logger = logging.getLogger(__name__)

# Tests (or a caller with a patched build) may set this to a Picamera2-compatible class.
Picamera2: type | None = None

_INSTALL_HINT = (
    "picamera2 is not installed; on Raspberry Pi OS: sudo apt install python3-picamera2 "
    "(create the venv with --system-site-packages so it is visible; pip install picamera2 also needs "
    "the system libcamera bindings)"
)


def _load_picamera2(override: type | None) -> type:
    """Return the Picamera2 class: the injected one, the module attribute, or the real import."""
    if override is not None:
        return override
    if Picamera2 is not None:
        return Picamera2
    try:
        from picamera2 import Picamera2 as cls  # lazy: the library exists only on a Pi
    except ImportError as exc:
        raise BackendUnavailable(_INSTALL_HINT) from exc
    return cls


def yuv420_to_bgr(buffer: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """Convert a planar YUV420 (I420) buffer with row padding to a packed BGR image."""
    w, h = size
    flat = np.ascontiguousarray(buffer).reshape(-1)
    # libcamera pads rows to `stride` bytes; the chroma planes use half that stride and half the rows.
    y_end = stride * h
    c_stride, c_rows = stride // 2, h // 2
    u_end = y_end + c_stride * c_rows
    v_end = u_end + c_stride * c_rows
    if flat.size < v_end:
        raise SourceError(f"lores buffer holds {flat.size} bytes, expected at least {v_end} for {w}x{h}")
    if stride == w:
        i420 = flat[:v_end].reshape(h * 3 // 2, w)
    else:
        # Strip the padding into a tight I420 layout, which is all cv2 understands.
        y = flat[:y_end].reshape(h, stride)[:, :w]
        u = flat[y_end:u_end].reshape(c_rows, c_stride)[:, : w // 2]
        v = flat[u_end:v_end].reshape(c_rows, c_stride)[:, : w // 2]
        i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, w)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)


class PiCameraConfig(StrictModel):
    """Settings for a Raspberry Pi CSI camera read through picamera2."""

    type: Literal["picamera2"] = Field("picamera2", description="Backend selector.")
    camera_num: int = Field(0, ge=0, description="Which camera (0 = first; a Pi 5 can have two).")
    main_size: tuple[int, int] = Field(
        (1280, 720), description="Main stream size (width, height), RGB888; kept for snapshots/recording."
    )
    lores_size: tuple[int, int] = Field(
        (640, 480), description="Low-resolution YUV420 stream (width, height) that inference reads."
    )
    fps: float | None = Field(30.0, gt=0, description="Sensor frame rate; None leaves the camera default.")
    buffer_count: int | None = Field(
        None, ge=2, description="Request buffers; None lets picamera2 choose (6 for video configurations)."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> PiCameraConfig:
        for field in ("main_size", "lores_size"):
            w, h = getattr(self, field)
            if w <= 0 or h <= 0:
                raise ValueError(f"{field} must be positive, got {w}x{h}")
        lw, lh = self.lores_size
        if lw % 2 or lh % 2:
            raise ValueError(f"lores_size must be even for YUV420, got {lw}x{lh}")
        mw, mh = self.main_size
        if lw > mw or lh > mh:
            raise ValueError(f"lores_size {lw}x{lh} cannot be larger than main_size {mw}x{mh}")
        return self


class PiCamera(FrameSource):
    """A Raspberry Pi camera; each Frame is the lores stream converted to BGR."""

    type_key = "picamera2"
    Config = PiCameraConfig

    def __init__(self, config: PiCameraConfig, picamera2_cls: type | None = None):
        super().__init__(config)
        self._cls_override = picamera2_cls
        self._cam: Any = None
        self.lores_size: tuple[int, int] = config.lores_size
        self._stride: int | None = None

    @classmethod
    def available(cls) -> bool:
        try:
            _load_picamera2(None)
        except BackendUnavailable:
            return False
        return True

    @property
    def name(self) -> str:
        return f"picamera2:{self.config.camera_num}"

    def open(self) -> None:
        cls = _load_picamera2(self._cls_override)
        cfg = self.config
        cameras = cls.global_camera_info()
        if len(cameras) <= cfg.camera_num:
            raise SourceError(
                f"no Raspberry Pi camera {cfg.camera_num}: libcamera sees {len(cameras)} camera(s)"
                f"{' ' + str([c.get('Model') for c in cameras]) if cameras else ''}. Check the ribbon cable "
                "(contacts facing the right way, seated at both ends), then run rpicam-hello --list-cameras"
            )
        try:
            cam = cls(cfg.camera_num)
        except (RuntimeError, IndexError) as exc:
            raise SourceError(
                f"cannot open Raspberry Pi camera {cfg.camera_num}: {exc}. Is another program "
                "(rpicam-*, another Aula service) using it?"
            ) from exc
        try:
            kwargs: dict[str, Any] = {
                "main": {"size": tuple(cfg.main_size), "format": "RGB888"},
                "lores": {"size": tuple(cfg.lores_size), "format": "YUV420"},
            }
            if cfg.fps:
                kwargs["controls"] = {"FrameRate": cfg.fps}
            if cfg.buffer_count:
                kwargs["buffer_count"] = cfg.buffer_count
            video_config = cam.create_video_configuration(**kwargs)
            cam.configure(video_config)
            lores = self._stream_config(cam, video_config)
            cam.start()
        except Exception as exc:
            cam.close()
            raise SourceError(f"cannot start Raspberry Pi camera {cfg.camera_num}: {exc}") from exc
        self.lores_size = tuple(lores.get("size", cfg.lores_size))
        self._stride = lores.get("stride")
        if self.lores_size != tuple(cfg.lores_size):
            logger.warning("camera adjusted lores size %s to %s", cfg.lores_size, self.lores_size)
        self._cam = cam
        self._wake.clear()
        logger.info(
            "opened %s (%s), lores %sx%s stride %s",
            self.name,
            getattr(cam, "camera_properties", {}).get("Model", "?"),
            *self.lores_size,
            self._stride,
        )

    @staticmethod
    def _stream_config(cam: Any, video_config: dict) -> dict:
        """Return the lores stream settings libcamera actually applied (size and stride)."""
        if hasattr(cam, "stream_configuration"):
            return dict(cam.stream_configuration("lores"))
        return dict(video_config.get("lores", {}))

    def read(self) -> Frame | None:
        cam = self._cam
        if cam is None:
            raise SourceError(f"{self.name} is not open; call open() first")
        # Convert inside the request so the buffer goes straight back to libcamera; holding it
        # starves the camera of buffers and stalls capture.
        if hasattr(cam, "captured_request"):
            with cam.captured_request() as request:
                image, t = self._convert(request)
        else:
            request = cam.capture_request()
            try:
                image, t = self._convert(request)
            finally:
                request.release()
        return self._make_frame(image, t)

    def _convert(self, request: Any) -> tuple[np.ndarray, float]:
        t = time.monotonic()
        yuv = request.make_array("lores")
        stride = self._stride or yuv.shape[-1]
        return yuv420_to_bgr(yuv, self.lores_size, stride), t

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()
