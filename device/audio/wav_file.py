"""Replay a 16-bit PCM mono WAV file as if it were a microphone (real-time pacing) or as fast as it reads."""

from __future__ import annotations

import logging
import wave
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from device.audio.base import SAMPLE_RATE, AudioChunk, AudioPacer, AudioSource
from device.audio.resample import StreamResampler
from device.common.config_loader import StrictModel
from device.errors import SourceError

logger = logging.getLogger(__name__)


class WavFileConfig(StrictModel):
    """Settings for replaying a WAV file."""

    type: Literal["wav"] = Field("wav", description="Backend selector.")
    path: Path = Field(description="WAV file to replay: 16-bit PCM, mono.")
    realtime: bool = Field(True, description="Release audio at the file's own pace; false: as fast as possible.")
    loop: bool = Field(False, description="Start again from the beginning at the end instead of ending.")
    chunk_ms: int = Field(30, ge=5, le=1000, description="Length of each chunk in milliseconds.")
    resample: bool = Field(
        True, description="Resample files not at 16 kHz; false: reject them (convert with sox beforehand)."
    )


def _fix(path: Path) -> str:
    return f"convert it with: sox {path} -r {SAMPLE_RATE} -c 1 -b 16 -e signed-integer out.wav"


class WavFile(AudioSource):
    """16 kHz mono int16 chunks of a WAV file, optionally paced at real time and looped."""

    type_key = "wav"
    Config = WavFileConfig

    def __init__(self, config: WavFileConfig):
        super().__init__(config)
        self._wav: wave.Wave_read | None = None
        self._pacer: AudioPacer | None = None
        self._resampler: StreamResampler | None = None
        self._ended = False
        self.file_rate = SAMPLE_RATE

    @property
    def name(self) -> str:
        return f"wav:{self.config.path.name}"

    @property
    def paced(self) -> bool:
        return self.config.realtime

    def _open_wave(self) -> wave.Wave_read:
        path = self.config.path
        if not path.is_file():
            raise SourceError(f"WAV file not found: {path}")
        try:
            wav = wave.open(str(path), "rb")
        except (wave.Error, EOFError) as exc:
            # The wave module reads only integer PCM; float or compressed WAVs land here.
            raise SourceError(f"cannot read WAV file {path} ({exc}); it must be 16-bit PCM; {_fix(path)}") from None
        problems = []
        if wav.getsampwidth() != 2:
            problems.append(f"{8 * wav.getsampwidth()}-bit samples (need 16-bit)")
        if wav.getnchannels() != 1:
            problems.append(f"{wav.getnchannels()} channels (need mono)")
        if wav.getframerate() != SAMPLE_RATE and not self.config.resample:
            problems.append(f"{wav.getframerate()} Hz (need {SAMPLE_RATE} Hz, or set resample: true)")
        if problems:
            wav.close()
            raise SourceError(f"WAV file {path} has {', '.join(problems)}; {_fix(path)}")
        return wav

    def open(self) -> None:
        self.close()
        self._wav = self._open_wave()
        self.file_rate = self._wav.getframerate()
        self._resampler = StreamResampler(self.file_rate, SAMPLE_RATE)
        self._wake.clear()
        self._pacer = AudioPacer(self.config.realtime, self._wake)
        self._ended = False
        logger.info(
            "opened %s: %.2f s at %d Hz%s, realtime=%s loop=%s",
            self.name,
            self._wav.getnframes() / self.file_rate,
            self.file_rate,
            " (resampled to 16 kHz)" if self.file_rate != SAMPLE_RATE else "",
            self.config.realtime,
            self.config.loop,
        )

    def _next_samples(self) -> np.ndarray | None:
        """Return the next 16 kHz samples of the file, looping if asked; None at the end."""
        frames = max(1, self.file_rate * self.config.chunk_ms // 1000)
        while not self._ended:
            raw = self._wav.readframes(frames)
            if raw:
                out = self._resampler.process(np.frombuffer(raw, "<i2").astype(np.int16))
                if len(out):
                    return out
                continue  # the resampler's first few input samples yield no output yet
            if self.config.loop and self._wav.getnframes() > 0:
                self._wav.rewind()
                continue
            self._ended = True
            tail = self._resampler.flush()
            return tail if len(tail) else None
        return None

    def read(self) -> AudioChunk | None:
        if self._wav is None:
            raise SourceError(f"{self.name} is not open; call open() first")
        samples = self._next_samples()
        if samples is None:
            return None
        # Real time: the chunk is released once its last sample would have been recorded. As fast as possible:
        # stamped on the media clock so downstream windows still span media time.
        t_first = self._pacer.next(len(samples))
        return AudioChunk(samples, t_first)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
