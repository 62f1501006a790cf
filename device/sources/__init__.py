"""Frame sources chosen from config: OpenCV camera, picamera2, video file, image folder."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter

from device.capture import build_from_config, parse_config
from device.sources.base import CaptureThread, Frame, FrameSource, LatestFrameSlot, Pacer
from device.sources.image_folder import ImageFolder, ImageFolderConfig
from device.sources.opencv_camera import OpenCVCamera, OpenCVCameraConfig, list_video_devices
from device.sources.picamera import PiCamera, PiCameraConfig
from device.sources.video_file import VideoFile, VideoFileConfig

# type_key -> FrameSource subclass; filled by FrameSource.__init_subclass__ as the modules import.
SOURCE_TYPES: dict[str, type[FrameSource]] = FrameSource.registry

SourceConfig = Annotated[
    OpenCVCameraConfig | PiCameraConfig | VideoFileConfig | ImageFolderConfig,
    Field(discriminator="type"),
]

_adapter: TypeAdapter = TypeAdapter(SourceConfig)


def parse_source_config(data: dict[str, Any]) -> BaseModel:
    """Validate a plain mapping (e.g. from YAML) into the matching source config."""
    return parse_config(_adapter, data, "source")


def build_source(config: BaseModel | dict[str, Any], **kwargs: Any) -> FrameSource:
    """Make the FrameSource a config names; extra kwargs go to its constructor (e.g. picamera2_cls)."""
    return build_from_config(FrameSource, _adapter, config, "source", **kwargs)


__all__ = [
    "SOURCE_TYPES",
    "CaptureThread",
    "Frame",
    "FrameSource",
    "ImageFolder",
    "ImageFolderConfig",
    "LatestFrameSlot",
    "OpenCVCamera",
    "OpenCVCameraConfig",
    "Pacer",
    "PiCamera",
    "PiCameraConfig",
    "SourceConfig",
    "VideoFile",
    "VideoFileConfig",
    "build_source",
    "list_video_devices",
    "parse_source_config",
]
