"""Audio sources chosen from config (PyAudio microphone, WAV replay), the ring buffer and the voice gate."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter

from device.audio.base import SAMPLE_RATE, AudioCaptureThread, AudioChunk, AudioPacer, AudioRingBuffer, AudioSource
from device.audio.pyaudio_mic import PyAudioMic, PyAudioMicConfig, list_input_devices
from device.audio.resample import StreamResampler, to_mono
from device.audio.voice_gate import SpeechSegment, VoiceGate, VoiceGateConfig
from device.audio.wav_file import WavFile, WavFileConfig
from device.capture import build_from_config, parse_config

# type_key -> AudioSource subclass; filled by AudioSource.__init_subclass__ as the modules import.
AUDIO_SOURCE_TYPES: dict[str, type[AudioSource]] = AudioSource.registry

AudioSourceConfig = Annotated[PyAudioMicConfig | WavFileConfig, Field(discriminator="type")]

_adapter: TypeAdapter = TypeAdapter(AudioSourceConfig)


def parse_audio_source_config(data: dict[str, Any]) -> BaseModel:
    """Validate a plain mapping (e.g. from YAML) into the matching audio source config."""
    return parse_config(_adapter, data, "audio source")


def build_audio_source(config: BaseModel | dict[str, Any], **kwargs: Any) -> AudioSource:
    """Make the AudioSource a config names; extra kwargs go to its constructor (e.g. pyaudio_module)."""
    return build_from_config(AudioSource, _adapter, config, "audio source", **kwargs)


__all__ = [
    "AUDIO_SOURCE_TYPES",
    "SAMPLE_RATE",
    "AudioCaptureThread",
    "AudioChunk",
    "AudioPacer",
    "AudioRingBuffer",
    "AudioSource",
    "AudioSourceConfig",
    "PyAudioMic",
    "PyAudioMicConfig",
    "SpeechSegment",
    "StreamResampler",
    "VoiceGate",
    "VoiceGateConfig",
    "WavFile",
    "WavFileConfig",
    "build_audio_source",
    "list_input_devices",
    "parse_audio_source_config",
    "to_mono",
]
