"""A stand-in for the pyaudio module: a Pi's ALSA device list, format checks, and streams of a sine tone."""

from __future__ import annotations

import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

paInt16 = 8  # the real constants' values
paFloat32 = 1


@dataclass
class FakeDevice:
    """One PortAudio device as the ALSA host API reports it, plus the formats it really accepts."""

    name: str
    max_input_channels: int
    default_rate: float = 48000.0
    rates: tuple[int, ...] = (48000,)
    channels: tuple[int, ...] = (1,)
    max_output_channels: int = 0

    def info(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "structVersion": 2,
            "name": self.name,
            "hostApi": 0,
            "maxInputChannels": self.max_input_channels,
            "maxOutputChannels": self.max_output_channels,
            "defaultLowInputLatency": 0.0087,
            "defaultHighInputLatency": 0.035,
            "defaultSampleRate": self.default_rate,
        }


def pi_devices() -> list[FakeDevice]:
    """What a Raspberry Pi with a USB microphone lists under ALSA (no sound server running)."""
    return [
        FakeDevice("bcm2835 Headphones: - (hw:0,0)", 0, 44100.0, (44100, 48000), (2,), max_output_channels=8),
        FakeDevice("USB PnP Sound Device: Audio (hw:1,0)", 1, 44100.0, (44100, 48000), (1,)),
        FakeDevice("ReSpeaker 2-Mics: - (hw:2,0)", 2, 16000.0, (16000, 48000), (2,)),
        FakeDevice("sysdefault", 128, 48000.0, (8000, 16000, 44100, 48000), (1, 2)),
        FakeDevice("default", 128, 44100.0, (8000, 16000, 44100, 48000), (1, 2)),
    ]


@dataclass
class StreamLog:
    """What the code under test asked of the fake, for assertions."""

    opened: list[dict[str, Any]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    terminated: int = 0
    instances: int = 0


class FakeStream:
    """A blocking input stream producing a sine tone, interleaved over its channels."""

    def __init__(self, module: types.ModuleType, rate: int, channels: int, frames_per_buffer: int):
        self.rate, self.channels, self.frames_per_buffer = rate, channels, frames_per_buffer
        self._module = module
        self._pos = 0
        self._t0 = time.monotonic()
        self.reads = 0
        self.active = True
        self.closed = False

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        if self.closed:
            raise OSError("Stream closed")
        self.reads += 1
        if self._module.fail_reads_after is not None and self.reads > self._module.fail_reads_after:
            raise OSError(-9999, "Unanticipated host error")
        if self._module.realtime:
            # Block like a real device: a buffer is ready once its last frame is recorded.
            due = self._t0 + (self._pos + num_frames) / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t = (self._pos + np.arange(num_frames)) / self.rate
        mono = np.round(self._module.amplitude * np.sin(2 * np.pi * self._module.tone_hz * t)).astype("<i2")
        self._pos += num_frames
        return np.repeat(mono, self.channels).tobytes()

    def get_read_available(self) -> int:
        return 0

    def is_active(self) -> bool:
        return self.active

    def stop_stream(self) -> None:
        self.active = False

    def close(self) -> None:
        self.closed = True


class FakePyAudio:
    """The slice of pyaudio.PyAudio that device.audio.pyaudio_mic uses."""

    def __init__(self, module: types.ModuleType):
        self._module = module
        module.log.instances += 1

    @property
    def _devices(self) -> list[FakeDevice]:
        return self._module.devices

    def get_device_count(self) -> int:
        return len(self._devices)

    def get_device_info_by_index(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._devices):
            raise OSError(-9996, "Invalid device")
        return self._devices[index].info(index)

    def get_default_input_device_info(self) -> dict[str, Any]:
        index = self._module.default_input
        if index is None:
            raise OSError(-9996, "No Default Input Device Available")
        return self.get_device_info_by_index(index)

    def is_format_supported(self, rate, input_device=None, input_channels=None, input_format=None, **_: Any) -> bool:
        dev = self._devices[input_device]
        if input_format != paInt16:
            raise ValueError("Sample format not supported", -9994)
        if input_channels not in dev.channels or input_channels > dev.max_input_channels:
            raise ValueError("Invalid number of channels", -9998)
        if int(rate) not in dev.rates:
            raise ValueError("Invalid sample rate", -9997)
        return True

    def open(self, rate, channels, format, input=False, input_device_index=None, frames_per_buffer=1024, **_: Any):
        self.is_format_supported(rate, input_device_index, channels, format)
        if self._module.busy:
            raise OSError(-9985, "Device unavailable")
        stream = FakeStream(self._module, int(rate), channels, frames_per_buffer)
        with self._module.lock:
            self._module.log.opened.append(
                {"rate": rate, "channels": channels, "device": input_device_index, "frames": frames_per_buffer}
            )
            self._module.log.streams.append(stream)
        return stream

    def get_sample_size(self, fmt: int) -> int:
        return 2

    def terminate(self) -> None:
        self._module.log.terminated += 1


def make_fake_pyaudio(
    devices: list[FakeDevice] | None = None,
    default_input: int | None = 3,
    realtime: bool = False,
    tone_hz: float = 440.0,
    amplitude: float = 8000.0,
    fail_reads_after: int | None = None,
    busy: bool = False,
) -> types.ModuleType:
    """Return a module object that passes for `pyaudio`, with its own device list and log."""
    module = types.ModuleType("fake_pyaudio_instance")
    module.paInt16 = paInt16
    module.paFloat32 = paFloat32
    module.devices = pi_devices() if devices is None else devices
    module.default_input = default_input
    module.realtime = realtime
    module.tone_hz = tone_hz
    module.amplitude = amplitude
    module.fail_reads_after = fail_reads_after
    module.busy = busy
    module.lock = threading.Lock()
    module.log = StreamLog()
    module.PyAudio = lambda: FakePyAudio(module)
    return module
