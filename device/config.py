"""The device's configuration: every field documented where it is declared; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.sources import SourceConfig, VideoFileConfig

SAMPLE_VIDEO = Path(__file__).resolve().parent / "samples" / "classroom_sample.mp4"


class StrictModel(BaseModel):
    """A config section that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


class VisionConfig(StrictModel):
    """Face detection and facial-emotion classification."""

    enabled: bool = Field(True, description="Run the face path at all.")
    detector: Literal["auto", "short", "full"] = Field(
        "auto", description="BlazeFace variant: short range (faces near the camera), full range, or auto by frame size."
    )
    emotion_model: str = Field("face_emotion_int8", description="Manifest name of the face-emotion model.")
    runtime: Literal["auto", "litert", "onnxruntime"] = Field(
        "auto", description="Inference runtime; auto picks by file type (.tflite -> LiteRT, .onnx -> ONNX Runtime)."
    )
    threads: int = Field(1, ge=1, le=8, description="Threads per model; 1 leaves the other cores for audio and MQTT.")
    analysis_fps: float = Field(
        5.0, gt=0, le=30, description="Frames analysed per second at most; capture runs at the camera's rate."
    )
    min_analysis_fps: float = Field(
        1.0, gt=0, le=30, description="The adaptive rate never drops below this (class-level mood needs about 1/s)."
    )
    max_duty: float = Field(
        0.5, gt=0, le=1, description="Share of one core the vision step may use; the analysis rate adapts to it."
    )
    min_face_px: int = Field(20, ge=8, description="Ignore detections narrower than this many pixels.")


    @model_validator(mode="after")
    def _rates(self) -> VisionConfig:
        if self.min_analysis_fps > self.analysis_fps:
            raise ValueError("min_analysis_fps must not exceed analysis_fps")
        return self


class WindowConfig(StrictModel):
    """Class-level windows."""

    seconds: float = Field(2.0, gt=0, le=60, description="Length of one window in seconds.")
    min_faces: int = Field(
        3, ge=1, description="Withhold the face distribution when fewer faces than this were seen (privacy)."
    )


class DeviceConfig(StrictModel):
    """Top level of the device config file."""

    camera: SourceConfig = Field(
        default_factory=lambda: VideoFileConfig(path=SAMPLE_VIDEO),
        description="Frame source: opencv, picamera2, video (replay) or images (folder). Default: the bundled sample.",
    )
    vision: VisionConfig = Field(default_factory=VisionConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DeviceConfig:
    """Load and validate a device config file (documented defaults when path is None)."""
    from device.config_loader import load_yaml_model

    return load_yaml_model(DeviceConfig, path, overrides)
