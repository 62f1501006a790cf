"""The device's configuration: every field documented where it is declared; unknown keys are errors."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from device.audio import AudioSourceConfig, WavFileConfig
from device.audio.voice_gate import VoiceGateConfig
from device.common.config_loader import StrictModel, load_yaml_model
from device.fusion import FusionConfig
from device.mqtt.config import MqttConfig
from device.sources import SourceConfig, VideoFileConfig
from device.speech_to_text.settings import TranscriberSettings

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_VIDEO = SAMPLES / "classroom_sample.mp4"
SAMPLE_AUDIO = SAMPLES / "classroom_sample.wav"


def default_state_dir() -> Path:
    """Return $STATE_DIRECTORY (set by systemd's StateDirectory=) or ~/.local/state/aula."""
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else Path.home() / ".local" / "state" / "aula"


def default_device_id() -> str:
    """Return a topic-safe id derived from the host name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "aula-device"


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
    tile: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="Detection tiles, side in frame px: auto tiles frames >= 960 px wide (320 px tiles at 1280x720, "
                    "15 tiles); 0 never tiles. Smaller tiles find smaller faces at more cost: at 1280x720, 224 px "
                    "(32 tiles) found 97% of 25-40 px faces against 49%, for about 2.1x the detection time and "
                    "more false positives (6 against 1 in 8 test frames).",
    )
    mirror_below: float | None = Field(
        None, ge=0, le=1,
        description="Mirror gate: faces whose top probability is below this get a second, mirrored pass "
                    "(about +1 accuracy point for about 1.2x the cost per face). Unset: the threshold fitted "
                    "on validation data (manifest); 0: one pass per face.",
    )


    @model_validator(mode="after")
    def _rates(self) -> VisionConfig:
        if self.min_analysis_fps > self.analysis_fps:
            raise ValueError("min_analysis_fps must not exceed analysis_fps")
        return self


class SpeechConfig(StrictModel):
    """The microphone path: the voice gate, then the speech-emotion model on each stretch of speech."""

    enabled: bool = Field(True, description="Capture audio and run the voice gate (and the speech model, if set).")
    emotion_model: str | None = Field(
        "speech_emotion_whisper_int8",
        description="Manifest name of the speech-emotion model (the default: a head on Whisper tiny.en's "
        "encoder; speech_emotion_int8: the smaller log-mel CNN); null counts speech segments without classifying "
        "them. Its distribution describes the voices in the room (mostly the teacher's), not the class.",
    )
    runtime: Literal["auto", "litert", "onnxruntime"] = Field("auto", description="Inference runtime.")


class TextConfig(StrictModel):
    """The words path: each speech segment is transcribed on the device and only its emotion is kept."""

    enabled: bool = Field(
        True,
        description="Recognise words in speech segments and classify their emotion. The transcript lives in memory "
        "for one call and is never logged, stored or sent; events carry only the 7 probabilities. Needs the "
        "speech path (speech.enabled and a microphone).",
    )
    emotion_model: str = Field("text_emotion_int8", description="Manifest name of the text-emotion model.")
    runtime: Literal["auto", "litert", "onnxruntime"] = Field("auto", description="Inference runtime.")
    recogniser: TranscriberSettings = Field(
        default_factory=TranscriberSettings,
        description="Speech-to-text backends, tried in order; one whose library or model is missing is reported "
        "once and skipped.",
    )
    max_waiting: int = Field(
        2, ge=1, le=16,
        description="Live input: segments waiting for the recogniser at most. When speech outpaces it, the oldest "
        "waiting segment is skipped (health counts it in segments_not_transcribed); the newest goes first.",
    )


class PrivacyConfig(StrictModel):
    """What the device may sense and send."""

    paused: bool = Field(False, description="Start in privacy pause: no camera or microphone until resumed.")
    send_transcripts: bool = Field(
        False, description="Include transcript text in events. Refused: words never leave the device (the "
                           "server refuses an event with a transcript too); only their emotion is sent."
    )

    @model_validator(mode="after")
    def _no_transcripts(self) -> PrivacyConfig:
        if self.send_transcripts:
            raise ValueError("send_transcripts: transcripts never leave the device, only the emotion of the words "
                             "does; remove the key or set it to false")
        return self


class DeviceConfig(StrictModel):
    """Top level of the device config file."""

    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Writable folder for the offline queue and counters ($STATE_DIRECTORY under systemd).",
    )
    camera: SourceConfig | None = Field(
        default_factory=lambda: VideoFileConfig(path=SAMPLE_VIDEO),
        description="Frame source: opencv, picamera2, video (replay) or images (folder); null for none. "
        "Default: the bundled sample recording.",
    )
    microphone: AudioSourceConfig | None = Field(
        default_factory=lambda: WavFileConfig(path=SAMPLE_AUDIO),
        description="Audio source: pyaudio (microphone by name) or wav (replay); null for none. "
        "Default: the bundled sample.",
    )
    vision: VisionConfig = Field(default_factory=VisionConfig)
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    voice_gate: VoiceGateConfig = Field(default_factory=VoiceGateConfig, description="Loudness gate with pre-roll.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Windows, calibration, weights, smoothing.")
    mqtt: MqttConfig = Field(description="Broker, identity (site, room, device id), TLS, credentials, queue.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        # Identity and the queue file have defaults that depend on the host and on state_dir.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        mqtt = dict(data.get("mqtt") or {})
        mqtt.setdefault("site", "demo-school")
        mqtt.setdefault("room", "demo-room")
        mqtt.setdefault("device_id", default_device_id())
        queue = dict(mqtt.get("queue") or {})
        queue.setdefault("path", Path(data.get("state_dir") or default_state_dir()) / "mqtt-queue.sqlite3")
        mqtt["queue"] = queue
        data["mqtt"] = mqtt
        return data

    @property
    def site(self) -> str:
        return self.mqtt.site

    @property
    def room(self) -> str:
        return self.mqtt.room

    @property
    def device_id(self) -> str:
        return self.mqtt.device_id

    def mqtt_config(self) -> MqttConfig:
        return self.mqtt


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> DeviceConfig:
    """Load and validate a device config file (documented defaults when path is None)."""
    return load_yaml_model(DeviceConfig, path, overrides)
