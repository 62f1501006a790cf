"""Frame sources: config, registry, pacing, latest-frame slot, capture thread, error messages, picamera2."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.errors import BackendUnavailable, ConfigError, SourceError
from device.sources import (
    SOURCE_TYPES,
    CaptureThread,
    FrameSource,
    ImageFolder,
    ImageFolderConfig,
    LatestFrameSlot,
    OpenCVCamera,
    OpenCVCameraConfig,
    Pacer,
    PiCamera,
    PiCameraConfig,
    SourceConfig,
    VideoFile,
    VideoFileConfig,
    build_source,
    list_video_devices,
    opencv_camera,
    parse_source_config,
    picamera,
)
from device.sources.base import Frame
from tests.fake_picamera2 import expected_luma, make_fake_picamera2

BUILTIN = {"opencv", "video", "images", "picamera2"}


# --- a synthetic source: a real plugin, registered like the built-in ones -------------------------------


class SyntheticConfig(BaseModel):
    """Settings for the in-test synthetic source."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["synthetic-test"] = Field("synthetic-test", description="Backend selector.")
    fps: float | None = Field(None, gt=0, description="Frames per second; None is as fast as possible.")
    frames: int | None = Field(None, ge=0, description="Frames before end of stream; None is endless.")
    fail_on_open: bool = Field(False, description="Raise SourceError from open().")


class SyntheticSource(FrameSource):
    """Numbered 8x8 frames, optionally paced."""

    type_key = "synthetic-test"
    Config = SyntheticConfig

    def open(self) -> None:
        if self.config.fail_on_open:
            raise SourceError("synthetic camera unplugged")
        self._wake.clear()
        self._pacer = Pacer(self.config.fps, self._wake)
        self.closed = False

    def read(self) -> Frame | None:
        self._pacer.wait()
        if self.config.frames is not None and self._index >= self.config.frames:
            return None
        return self._make_frame(np.full((8, 8, 3), self._index % 256, np.uint8))

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module", autouse=True)
def _unregister_synthetic():
    yield
    SOURCE_TYPES.pop("synthetic-test", None)


# --- helpers -----------------------------------------------------------------------------------------


def write_video(path: Path, frames: int = 10, fps: float = 10.0, size: tuple[int, int] = (64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), i * 20, np.uint8))
    writer.release()
    return path


def read_all(source: FrameSource, limit: int = 1000) -> list[Frame]:
    frames = []
    with source:
        while len(frames) < limit:
            frame = source.read()
            if frame is None:
                break
            frames.append(frame)
    return frames


# --- config and registry -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [OpenCVCameraConfig, PiCameraConfig, VideoFileConfig, ImageFolderConfig])
def test_configs_reject_unknown_keys_and_describe_every_field(cls):
    with pytest.raises(ValidationError):
        cls.model_validate({"path": "x", "widht": 640})
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"


def test_discriminator_picks_the_config_class():
    assert isinstance(parse_source_config({"type": "video", "path": "a.avi"}), VideoFileConfig)
    assert isinstance(parse_source_config({"type": "images", "path": "d"}), ImageFolderConfig)
    assert isinstance(parse_source_config({"type": "picamera2"}), PiCameraConfig)
    cam = parse_source_config({"type": "opencv", "device": "/dev/video2", "fourcc": "MJPG"})
    assert isinstance(cam, OpenCVCameraConfig) and cam.device == "/dev/video2"
    with pytest.raises(ConfigError, match="type"):
        parse_source_config({"type": "webcam"})
    with pytest.raises(ConfigError):
        parse_source_config({"path": "a.avi"})  # no discriminator
    with pytest.raises(ConfigError, match="realtme"):
        parse_source_config({"type": "video", "path": "a.avi", "realtme": False})


def test_source_config_embeds_in_a_larger_model():
    class DeviceConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source: SourceConfig = Field(default_factory=OpenCVCameraConfig, description="Frame source.")

    assert isinstance(DeviceConfig().source, OpenCVCameraConfig)
    parsed = DeviceConfig.model_validate({"source": {"type": "images", "path": "/tmp", "fps": 2}})
    assert isinstance(parsed.source, ImageFolderConfig) and parsed.source.fps == 2


def test_picamera_config_checks_sizes():
    with pytest.raises(ValidationError, match="even"):
        PiCameraConfig(lores_size=(321, 240))
    with pytest.raises(ValidationError, match="larger"):
        PiCameraConfig(main_size=(640, 480), lores_size=(1280, 720))


def test_registry_and_build_source(tmp_path):
    assert BUILTIN <= set(SOURCE_TYPES)
    assert SOURCE_TYPES["opencv"] is OpenCVCamera and SOURCE_TYPES["picamera2"] is PiCamera
    for key, cls in SOURCE_TYPES.items():
        assert cls.Config.model_fields["type"].default == key
    assert isinstance(build_source({"type": "video", "path": str(tmp_path / "a.avi")}), VideoFile)
    assert isinstance(build_source(ImageFolderConfig(path=tmp_path)), ImageFolder)
    assert isinstance(build_source(SyntheticConfig()), SyntheticSource)  # plugins outside the union too
    with pytest.raises(TypeError):
        VideoFile(ImageFolderConfig(path=tmp_path))


def test_plugin_config_must_name_its_type_key():
    with pytest.raises(TypeError, match="Literal"):

        class Broken(FrameSource):  # defining it is the test
            type_key = "broken-test"
            Config = SyntheticConfig

    assert "broken-test" not in SOURCE_TYPES


# --- video file --------------------------------------------------------------------------------------


def test_video_realtime_replay_takes_the_clip_duration(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=10, fps=10.0)
    start = time.monotonic()
    frames = read_all(VideoFile(VideoFileConfig(path=path)))
    elapsed = time.monotonic() - start
    assert len(frames) == 10
    assert 0.85 <= elapsed < 1.6, elapsed
    assert [f.index for f in frames] == list(range(10))
    gaps = np.diff([f.t_capture for f in frames])
    assert gaps.min() > 0.05  # paced, not bursty
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert frames[0].source == "video:clip.avi"


def test_video_fast_mode_is_much_faster(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=10, fps=10.0)
    start = time.monotonic()
    frames = read_all(VideoFile(VideoFileConfig(path=path, realtime=False)))
    assert len(frames) == 10
    assert time.monotonic() - start < 0.4


def test_video_loop_restarts_from_the_first_frame(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=5, fps=10.0)
    frames = read_all(VideoFile(VideoFileConfig(path=path, realtime=False, loop=True)), limit=12)
    assert len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    values = [int(f.image.mean()) for f in frames]
    assert values[5] == pytest.approx(values[0], abs=3)
    assert values[10] == pytest.approx(values[0], abs=3)
    assert values[4] == pytest.approx(80, abs=4)


def test_missing_and_unreadable_video_name_the_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"nope\.mp4"):
        VideoFile(VideoFileConfig(path=missing)).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(SourceError, match=r"junk\.avi"):
        VideoFile(VideoFileConfig(path=junk)).open()


# --- image folder ------------------------------------------------------------------------------------


def _write_images(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "b.png"), np.full((10, 12, 3), 20, np.uint8))
    cv2.imwrite(str(folder / "a.jpg"), np.full((10, 12, 3), 10, np.uint8))
    cv2.imwrite(str(folder / "c.bmp"), np.full((10, 12), 30, np.uint8))  # grey -> comes out BGR
    (folder / "notes.txt").write_text("not an image")
    (folder / "d.png").write_bytes(b"broken")


def test_image_folder_sorted_skips_broken_and_loops(tmp_path):
    _write_images(tmp_path / "imgs")
    frames = read_all(ImageFolder(ImageFolderConfig(path=tmp_path / "imgs")))
    assert [int(f.image.mean()) for f in frames] == [10, 20, 30]
    assert all(f.image.shape == (10, 12, 3) for f in frames)
    looped = read_all(ImageFolder(ImageFolderConfig(path=tmp_path / "imgs", loop=True)), limit=7)
    assert [int(f.image.mean()) for f in looped] == [10, 20, 30, 10, 20, 30, 10]


def test_image_folder_fps_pacing(tmp_path):
    _write_images(tmp_path / "imgs")
    start = time.monotonic()
    frames = read_all(ImageFolder(ImageFolderConfig(path=tmp_path / "imgs", fps=10)))
    assert len(frames) == 3
    assert 0.18 <= time.monotonic() - start < 0.6


def test_image_folder_empty_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no \.jpg"):
        ImageFolder(ImageFolderConfig(path=tmp_path / "empty")).open()
    with pytest.raises(SourceError, match="not found"):
        ImageFolder(ImageFolderConfig(path=tmp_path / "absent")).open()


# --- latest-frame slot and capture thread -------------------------------------------------------------


def _frame(i: int) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), time.monotonic(), i, "t")


def test_slot_keeps_only_the_newest_frame():
    slot = LatestFrameSlot()
    for i in range(3):
        slot.put(_frame(i))
    assert slot.get(timeout=0.1).index == 2
    assert (slot.captured, slot.dropped) == (3, 2)
    start = time.monotonic()
    assert slot.get(timeout=0.05) is None  # the same frame is never handed out twice
    assert time.monotonic() - start >= 0.04
    slot.put(_frame(3))
    slot.close()
    assert slot.get(timeout=0.1).index == 3  # unread frame still delivered after close
    assert slot.get() is None  # closed and drained: returns at once


def test_slow_consumer_sees_no_backlog():
    with CaptureThread(SyntheticSource(SyntheticConfig(fps=200))) as capture:
        seen = []
        for _ in range(5):
            frame = capture.slot.get(timeout=1.0)
            assert frame is not None
            seen.append(frame.index)
            # The frame handed out is the newest one, however long the consumer took.
            assert capture.slot.captured - 1 - frame.index <= 3  # slack: the thread may add one meanwhile
            time.sleep(0.05)
    assert capture.slot.dropped > 0
    assert all(b - a > 1 for a, b in itertools.pairwise(seen))  # skipped stale frames, never queued them


def test_capture_thread_stops_within_a_second_even_mid_pacing():
    source = SyntheticSource(SyntheticConfig(fps=0.25))  # 4 s between frames
    capture = CaptureThread(source).start()
    assert capture.slot.get(timeout=1.0) is not None
    assert capture.alive
    start = time.monotonic()
    assert capture.stop() is True
    assert time.monotonic() - start < 1.0
    assert not capture.alive and source.closed
    assert capture.error is None and not capture.ended


def test_capture_thread_flags_end_of_stream(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=4)
    capture = CaptureThread(VideoFile(VideoFileConfig(path=path, realtime=False))).start()
    capture._thread.join(2.0)
    assert capture.ended and not capture.alive and capture.error is None
    assert capture.slot.captured == 4 and capture.slot.closed


def test_capture_thread_keeps_the_error_instead_of_raising(caplog):
    capture = CaptureThread(SyntheticSource(SyntheticConfig(fail_on_open=True))).start()
    assert capture.slot.get(timeout=1.0) is None  # closed slot wakes the consumer
    capture.stop()
    assert isinstance(capture.error, SourceError)
    assert not capture.alive and not capture.ended
    assert "synthetic camera unplugged" in caplog.text


# --- OpenCV camera -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [97, "97", "/dev/video97"])
def test_missing_camera_lists_devices_and_hints(device):
    with pytest.raises(SourceError) as info:
        OpenCVCamera(OpenCVCameraConfig(device=device)).open()
    message = str(info.value)
    assert "97" in message and "video group" in message
    found = list_video_devices()
    if found:
        assert all(dev in message for dev in found)
    else:
        assert "none found" in message


def test_missing_camera_message_names_present_devices(monkeypatch):
    monkeypatch.setattr(opencv_camera, "list_video_devices", lambda: ["/dev/video0", "/dev/video2"])
    with pytest.raises(SourceError, match=r"/dev/video0.*/dev/video2"):
        OpenCVCamera(OpenCVCameraConfig(device="/dev/video97")).open()


def test_list_video_devices_sorts_numerically(monkeypatch):
    monkeypatch.setattr(opencv_camera.glob, "glob", lambda _: ["/dev/video10", "/dev/video2", "/dev/video0"])
    assert list_video_devices() == ["/dev/video0", "/dev/video2", "/dev/video10"]


@pytest.mark.skipif(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER), reason="this OpenCV has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_is_backend_unavailable():
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! appsink"
    with pytest.raises(BackendUnavailable, match="GStreamer"):
        OpenCVCamera(OpenCVCameraConfig(device=pipeline)).open()


# --- picamera2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["captured_request", "capture_request"])
def test_picamera_reads_lores_as_bgr_and_releases_every_request(legacy):
    fake = make_fake_picamera2(stride_align=64, legacy=legacy)  # 100 px wide -> 128-byte stride
    config = PiCameraConfig(main_size=(640, 480), lores_size=(100, 50), fps=15)
    frames = read_all(build_source(config, picamera2_cls=fake), limit=4)
    assert len(frames) == 4
    cam = fake.instances[0]
    for i, frame in enumerate(frames):
        assert frame.image.shape == (50, 100, 3) and frame.image.dtype == np.uint8
        # Neutral chroma over the moving gradient; the bright padding bytes must never leak in.
        i420 = np.concatenate([expected_luma(100, 50, i).reshape(-1), np.full(100 * 50 // 2, 128, np.uint8)])
        expected = cv2.cvtColor(i420.reshape(75, 100), cv2.COLOR_YUV2BGR_I420)
        assert np.array_equal(frame.image, expected)
        assert np.array_equal(frame.image[..., 0], frame.image[..., 2])
    assert cam.requests == 4 and cam.releases == 4 and cam.outstanding == 0
    assert cam.closed and not cam.started
    assert cam.camera_config["lores"]["format"] == "YUV420"
    assert cam.camera_config["main"] == {"size": (640, 480), "format": "RGB888", "stride": 1920}
    assert cam.camera_config["controls"] == {"FrameRate": 15}


def test_picamera_module_attribute_injection_and_capture_thread(monkeypatch):
    fake = make_fake_picamera2()
    monkeypatch.setattr(picamera, "Picamera2", fake)
    assert PiCamera.available()
    with CaptureThread(PiCamera(PiCameraConfig(lores_size=(64, 48)))) as capture:
        for _ in range(3):
            assert capture.slot.get(timeout=1.0).image.shape == (48, 64, 3)
    assert capture.error is None
    cam = fake.instances[0]
    assert cam.requests > 0 and cam.outstanding == 0 and cam.closed


def test_picamera_without_camera_is_a_source_error():
    fake = make_fake_picamera2(num_cameras=0)
    with pytest.raises(SourceError, match="rpicam-hello"):
        PiCamera(PiCameraConfig(), picamera2_cls=fake).open()
    with pytest.raises(SourceError, match="camera 1"):
        PiCamera(PiCameraConfig(camera_num=1), picamera2_cls=make_fake_picamera2(num_cameras=1)).open()


def test_picamera_missing_library_is_backend_unavailable(monkeypatch):
    monkeypatch.setattr(picamera, "Picamera2", None)
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    assert not PiCamera.available()
    with pytest.raises(BackendUnavailable, match="sudo apt install python3-picamera2"):
        PiCamera(PiCameraConfig()).open()
    capture = CaptureThread(PiCamera(PiCameraConfig())).start()  # reported, not raised
    assert capture.slot.get(timeout=1.0) is None
    assert isinstance(capture.error, BackendUnavailable)


def test_yuv420_tight_and_padded_buffers_agree():
    rng = np.random.default_rng(0)
    w, h = 32, 16
    tight = rng.integers(16, 235, size=(h * 3 // 2, w), dtype=np.uint8)
    stride = 64
    padded = np.full(stride * h * 3 // 2, 7, np.uint8)
    padded[: stride * h].reshape(h, stride)[:, :w] = tight[:h]
    chroma_tight = tight[h:].reshape(-1).reshape(h, w // 2)  # U rows then V rows, w/2 wide
    padded[stride * h :].reshape(h, stride // 2)[:, : w // 2] = chroma_tight
    expected = cv2.cvtColor(tight, cv2.COLOR_YUV2BGR_I420)
    assert np.array_equal(picamera.yuv420_to_bgr(tight, (w, h), w), expected)
    padded = padded.reshape(h * 3 // 2, stride)
    assert np.array_equal(picamera.yuv420_to_bgr(padded, (w, h), stride), expected)
