"""A stand-in for picamera2.Picamera2 with synthetic YUV420 lores frames and request accounting."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, ClassVar

import numpy as np


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class FakeRequest:
    """One completed request; make_array() copies nothing, like the real one, so release matters."""

    def __init__(self, camera: FakePicamera2, arrays: dict[str, np.ndarray]):
        self._camera = camera
        self._arrays = arrays
        self.released = False

    def make_array(self, name: str) -> np.ndarray:
        if self.released:
            raise RuntimeError("request used after release()")
        return self._arrays[name]

    def get_metadata(self) -> dict[str, Any]:
        return {"SensorTimestamp": self._camera.frames * 33_333_333}

    def release(self) -> None:
        if self.released:
            raise RuntimeError("request released twice")
        self.released = True
        self._camera._on_release()


class FakePicamera2:
    """The slice of the Picamera2 API that device.sources.picamera uses."""

    # Class-level so global_camera_info() (a staticmethod upstream) can see it; see make_fake_picamera2.
    cameras: ClassVar[list[dict[str, Any]]] = [
        {
            "Model": "imx708",
            "Location": 2,
            "Rotation": 180,
            "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
            "Num": 0,
        },
    ]
    stride_align = 64  # the Pi's ISP pads lores rows; 64 makes a 100-pixel-wide stream padded
    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self, camera_num: int = 0):
        if camera_num >= len(type(self).cameras):
            raise IndexError("list index out of range")  # what picamera2 raises with no camera
        self.camera_num = camera_num
        model = type(self).cameras[camera_num]["Model"]
        self.camera_properties = {"Model": model, "PixelArraySize": (4608, 2592)}
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        self.frames = 0
        self.requests = 0
        self.releases = 0
        self._lock = threading.Lock()
        type(self).instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        # Upstream this is a staticmethod; subclasses made by make_fake_picamera2 override it.
        return list(FakePicamera2.cameras)

    def create_video_configuration(
        self, main=None, lores=None, controls=None, buffer_count=6, **_: Any
    ) -> dict:
        main = dict(main or {"size": (1280, 720), "format": "XBGR8888"})
        config = {
            "use_case": "video",
            "main": main,
            "lores": dict(lores) if lores else None,
            "controls": dict(controls or {}),
            "buffer_count": buffer_count,
        }
        return config

    def configure(self, config: dict) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        lores = config.get("lores")
        if lores is not None:
            if lores.get("format") != "YUV420":
                raise RuntimeError("lores stream must be YUV420 on this platform")
            lores["stride"] = _align(lores["size"][0], type(self).stride_align)
        main = config["main"]
        main["stride"] = _align(main["size"][0] * 3, type(self).stride_align)
        self.camera_config = config

    def stream_configuration(self, name: str = "main") -> dict:
        return self.camera_config[name]

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        self.closed = True

    @property
    def outstanding(self) -> int:
        """Requests handed out and not yet released."""
        return self.requests - self.releases

    def _on_release(self) -> None:
        with self._lock:
            self.releases += 1

    def lores_yuv(self, frame: int) -> np.ndarray:
        """The lores YUV420 buffer for a frame, shaped (h*3/2, stride) like Picamera2.make_array."""
        (w, h), stride = self.camera_config["lores"]["size"], self.camera_config["lores"]["stride"]
        buf = np.full(stride * h * 3 // 2, 255, np.uint8)  # padding bytes are garbage-bright on purpose
        y = buf[: stride * h].reshape(h, stride)
        y[:, :w] = expected_luma(w, h, frame)
        chroma = buf[stride * h :].reshape(h, stride // 2)  # U then V: h/2 rows each, half stride
        chroma[:, : w // 2] = 128  # neutral chroma: the BGR result is grey, B == G == R == Y
        return buf.reshape(h * 3 // 2, stride)

    def capture_request(self, wait: Any = None, flush: Any = None) -> FakeRequest:
        if not self.started:
            raise RuntimeError("Camera is not running")
        with self._lock:
            self.requests += 1
            frame = self.frames
            self.frames += 1
        arrays = {"lores": self.lores_yuv(frame)}
        w, h = self.camera_config["main"]["size"]
        arrays["main"] = np.zeros((h, w, 3), np.uint8)
        return FakeRequest(self, arrays)

    @contextlib.contextmanager
    def captured_request(self, wait: Any = None, flush: Any = None):
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()


def expected_luma(w: int, h: int, frame: int) -> np.ndarray:
    """Horizontal gradient that moves 8 pixels right per frame."""
    x = np.arange(w, dtype=np.int32)
    row = ((x * 2 + frame * 8) % 200 + 28).astype(np.uint8)  # stays inside video range 16..235
    return np.broadcast_to(row, (h, w))


def make_fake_picamera2(
    num_cameras: int = 1, stride_align: int = 64, legacy: bool = False
) -> type[FakePicamera2]:
    """A fresh FakePicamera2 subclass with its own cameras and instance list (no shared test state).

    legacy=True drops captured_request, like picamera2 before 0.3.13, to exercise capture_request + release.
    """
    cameras = [dict(FakePicamera2.cameras[0], Num=i) for i in range(num_cameras)]
    attrs: dict[str, Any] = {
        "cameras": cameras,
        "stride_align": stride_align,
        "instances": [],
        "global_camera_info": staticmethod(lambda: list(cameras)),
    }
    if legacy:

        def _absent(self):
            raise AttributeError("captured_request")

        attrs["captured_request"] = property(_absent)  # hasattr() is False, as on old picamera2
    return type("FakePicamera2", (FakePicamera2,), attrs)
