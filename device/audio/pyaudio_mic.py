"""Microphone through PyAudio (PortAudio over ALSA), chosen by device name, delivered as 16 kHz mono int16.

Under systemd there is no desktop session: no PULSE_SERVER and no XDG_RUNTIME_DIR, so the "pulse", "pipewire"
and often "default" devices cannot reach a sound server. Name the ALSA card instead, e.g. device: "USB" matches
"USB PnP Sound Device: Audio (hw:1,0)"; `arecord -l` lists the cards. Indexes are not used: they change when a
USB device is plugged in or the PortAudio host APIs change order.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field

from device.audio.base import SAMPLE_RATE, AudioChunk, AudioSource
from device.audio.resample import StreamResampler, to_mono
from device.common.config_loader import StrictModel
from device.errors import BackendUnavailable, SourceError

logger = logging.getLogger(__name__)

_INSTALL = (
    "install it with `sudo apt install portaudio19-dev` and `pip install pyaudio` "
    "(or the device extra: `pip install 'aula[device]'`)"
)
# Rates tried after the configured one: 16 kHz needs no resampling; USB and HDMI codecs often only do 48/44.1.
_FALLBACK_RATES = (SAMPLE_RATE, 48000, 44100, 32000, 22050, 8000)
# Reads that may fail in a row before the microphone counts as gone (an overrun is not a failure).
_MAX_READ_FAILURES = 5
# Audio dated later than the sample clock by more than this means samples were lost: the clock jumps.
_CLOCK_SLACK_S = 0.1
# Fraction of a smaller clock error corrected per chunk (about 3 s time constant at 30 ms chunks).
_CLOCK_SLEW = 0.01
# Device names that go through a sound server, which a systemd service usually cannot reach.
_SERVER_DEVICES = ("pulse", "pipewire", "default", "jack")


class PyAudioMicConfig(StrictModel):
    """Settings for a microphone opened with PyAudio."""

    type: Literal["pyaudio"] = Field("pyaudio", description="Backend selector.")
    device: str | None = Field(
        None,
        min_length=1,
        description="Case-insensitive substring of the input device's name, e.g. 'USB', 'ReSpeaker' or 'hw:1,0' "
        "(`arecord -l` lists the cards; an unmatched name logs the devices found); None takes the default input.",
    )
    rate: int | None = Field(
        None,
        ge=8000,
        le=192000,
        description="Capture rate to ask for; None tries 16000, the device's default, 48000, 44100... "
        "Anything but 16000 is resampled to 16 kHz.",
    )
    chunk_ms: int = Field(30, ge=5, le=500, description="Length of each chunk read from the device, in ms.")


def _input_devices(pa: Any) -> list[dict[str, Any]]:
    """Return PortAudio's devices that have input channels."""
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append(info)
    return devices


def _describe(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "none (is a microphone plugged in? `arecord -l` lists ALSA capture cards)"
    return "; ".join(
        f"'{d['name']}' ({int(d['maxInputChannels'])} ch, {int(d['defaultSampleRate'])} Hz)" for d in devices
    )


def list_input_devices(pyaudio_module: ModuleType | None = None) -> list[str]:
    """Return the names of the input devices PortAudio sees (for a setup command or the health report)."""
    module = _import_pyaudio(pyaudio_module)
    pa = module.PyAudio()
    try:
        return [d["name"] for d in _input_devices(pa)]
    finally:
        pa.terminate()


def _import_pyaudio(module: ModuleType | None) -> ModuleType:
    if module is not None:
        return module
    try:
        return importlib.import_module("pyaudio")
    except ImportError as exc:
        raise BackendUnavailable(f"PyAudio is not installed ({exc}); {_INSTALL}") from None


class PyAudioMic(AudioSource):
    """A live microphone: 16 kHz mono int16 chunks, resampled and downmixed when the device cannot do that."""

    type_key = "pyaudio"
    Config = PyAudioMicConfig

    def __init__(self, config: PyAudioMicConfig, pyaudio_module: ModuleType | None = None):
        super().__init__(config)
        self._module_override = pyaudio_module  # tests pass a fake; production imports pyaudio lazily in open()
        self._module: ModuleType | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._resampler: StreamResampler | None = None
        self.device_name: str | None = None
        self.device_rate = SAMPLE_RATE
        self.channels = 1
        self._frames = 0
        self._t0: float | None = None
        self._emitted = 0
        self.overruns = 0  # times the sample clock was re-anchored because audio was lost

    @classmethod
    def available(cls) -> bool:
        try:
            return importlib.util.find_spec("pyaudio") is not None
        except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
            return False

    @property
    def name(self) -> str:
        return f"mic:{self.device_name or self.config.device or 'default'}"

    def _choose_device(self) -> dict[str, Any]:
        devices = _input_devices(self._pa)
        wanted = self.config.device
        if wanted is None:
            try:
                info = self._pa.get_default_input_device_info()
            except (OSError, ValueError):
                raise SourceError(
                    f"no default input device; name one with audio.device. Input devices found: {_describe(devices)}"
                ) from None
            return info
        matches = [d for d in devices if wanted.lower() in d["name"].lower()]
        if not matches:
            raise SourceError(f"no input device matches '{wanted}'. Input devices found: {_describe(devices)}")
        if len(matches) > 1:
            logger.warning(
                "%d input devices match '%s'; using '%s' (others: %s)",
                len(matches),
                wanted,
                matches[0]["name"],
                ", ".join(d["name"] for d in matches[1:]),
            )
        return matches[0]

    def _supported(self, index: int, rate: int, channels: int) -> bool:
        try:
            return bool(
                self._pa.is_format_supported(
                    rate, input_device=index, input_channels=channels, input_format=self._module.paInt16
                )
            )
        except ValueError:
            return False

    def _choose_format(self, info: dict[str, Any]) -> tuple[int, int]:
        """Return (rate, channels) the device accepts, preferring the configured rate, 16 kHz and mono."""
        index = int(info["index"])
        rates = [self.config.rate] if self.config.rate else []
        rates += [int(info.get("defaultSampleRate", 0)) or SAMPLE_RATE, *_FALLBACK_RATES]
        rates = list(dict.fromkeys(r for r in rates if r))
        if not self.config.rate:
            rates.remove(SAMPLE_RATE)
            rates.insert(0, SAMPLE_RATE)
        # Some USB mics and hw: devices only open in stereo; the channels are averaged into mono.
        channel_options = list(dict.fromkeys([1, min(2, int(info["maxInputChannels"])), int(info["maxInputChannels"])]))
        for rate in rates:
            for channels in channel_options:
                if self._supported(index, rate, channels):
                    return rate, channels
        raise SourceError(
            f"input device '{info['name']}' accepts none of the rates {rates} Hz at 16-bit with "
            f"{'/'.join(map(str, channel_options))} channels"
        )

    def _warn_if_sound_server(self, name: str) -> None:
        on_server = any(key in name.lower() for key in _SERVER_DEVICES)
        if on_server and not (os.environ.get("PULSE_SERVER") or os.environ.get("XDG_RUNTIME_DIR")):
            logger.warning(
                "input device '%s' goes through a sound server, but neither PULSE_SERVER nor XDG_RUNTIME_DIR is "
                "set (as under systemd); if it records silence or fails, name the ALSA card with audio.device",
                name,
            )

    def open(self) -> None:
        self.close()
        self._module = _import_pyaudio(self._module_override)
        self._pa = self._module.PyAudio()
        try:
            info = self._choose_device()
            self.device_name = str(info["name"])
            self._warn_if_sound_server(self.device_name)
            self.device_rate, self.channels = self._choose_format(info)
            self._frames = max(1, self.device_rate * self.config.chunk_ms // 1000)
            try:
                self._stream = self._pa.open(
                    format=self._module.paInt16,
                    channels=self.channels,
                    rate=self.device_rate,
                    input=True,
                    input_device_index=int(info["index"]),
                    frames_per_buffer=self._frames,
                )
            except (OSError, ValueError) as exc:
                raise SourceError(
                    f"cannot open input device '{self.device_name}' at {self.device_rate} Hz ({exc}); "
                    "is another program (arecord, a second service) holding it?"
                ) from None
        except BaseException:
            self.close()
            raise
        self._resampler = StreamResampler(self.device_rate, SAMPLE_RATE)
        self._t0 = None
        self._emitted = 0
        logger.info(
            "opened microphone '%s' at %d Hz, %d channel(s)%s",
            self.device_name,
            self.device_rate,
            self.channels,
            ", resampled to 16 kHz" if self.device_rate != SAMPLE_RATE else "",
        )

    def _read_raw(self) -> bytes:
        failures = 0
        while True:
            try:
                # An overrun (the consumer stalled) returns what is there instead of raising: audio goes on.
                return self._stream.read(self._frames, exception_on_overflow=False)
            except OSError as exc:
                failures += 1
                if failures >= _MAX_READ_FAILURES:
                    raise SourceError(f"microphone '{self.device_name}' stopped delivering audio ({exc})") from None
                logger.warning("microphone read failed (%s); retrying", exc)
                time.sleep(0.05)

    def _buffered_s(self) -> float:
        """Seconds of audio already waiting in PortAudio's buffer (it was recorded before now)."""
        try:
            return self._stream.get_read_available() / self.device_rate
        except (OSError, AttributeError):
            return 0.0

    def read(self) -> AudioChunk | None:
        if self._stream is None:
            raise SourceError(f"{self.name} is not open; call open() first")
        samples = np.zeros(0, np.int16)
        while len(samples) == 0:  # the resampler may hold back the first few ms
            raw = self._read_raw()
            samples = self._resampler.process(to_mono(np.frombuffer(raw, "<i2").astype(np.int16), self.channels))
        # Date chunks on a sample clock (steady spacing, no scheduling jitter), anchored to time.monotonic at the
        # end of the audio read so far. Audio later than the clock by more than the slack means samples were lost
        # (an overrun): jump. Smaller errors are slewed away slowly, which follows the device's clock drift.
        measured = time.monotonic() - self._buffered_s() - len(samples) / SAMPLE_RATE
        if self._t0 is None:
            self._t0 = measured
        else:
            error = measured - (self._t0 + self._emitted / SAMPLE_RATE)
            if error > _CLOCK_SLACK_S:
                self.overruns += 1
                logger.debug("microphone audio %.3f s late: samples were lost; re-anchoring", error)
                self._t0 += error
            else:
                self._t0 += _CLOCK_SLEW * error
        t_first = self._t0 + self._emitted / SAMPLE_RATE
        self._emitted += len(samples)
        return AudioChunk(samples, t_first)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        pa, self._pa = self._pa, None
        if stream is not None:
            try:
                stream.stop_stream()
            finally:
                stream.close()
        if pa is not None:
            pa.terminate()
