"""The recogniser interface: one voiced segment of 16 kHz mono float samples in, its words out (in memory only)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from device.errors import AulaError

SAMPLE_RATE = 16000


class TranscriberError(AulaError):
    """A recogniser's library or model is missing or broken, or the samples it was given are not usable."""


@dataclass
class Transcript:
    """What a recogniser heard in one segment; it lives in memory only and is never logged or written."""

    text: str
    audio_s: float  # length of the audio decoded
    seconds: float  # compute time spent on it
    partials: list[str] = field(default_factory=list)  # streaming backends: the partial results, in order

    @property
    def real_time_factor(self) -> float:
        """Compute time per second of audio (below 1 is faster than real time)."""
        return self.seconds / self.audio_s if self.audio_s else math.inf

    def __repr__(self) -> str:  # keeps the words out of tracebacks and debug output
        return f"Transcript(words={len(self.text.split())}, audio_s={self.audio_s:.2f}, seconds={self.seconds:.3f})"


def check_samples(samples: np.ndarray) -> np.ndarray:
    """Return `samples` if they are 1-D float32 in [-1, 1] with no NaN or infinity; else raise with the reason."""
    if not isinstance(samples, np.ndarray):
        raise TranscriberError(f"samples must be a numpy array, got {type(samples).__name__}")
    if samples.dtype != np.float32:
        raise TranscriberError(
            f"samples must be float32 in [-1, 1] (int16 audio: divide by 32768), got {samples.dtype}"
        )
    if samples.ndim != 1:
        raise TranscriberError(f"samples must be 1-D mono audio, got shape {samples.shape}")
    if samples.size == 0:
        raise TranscriberError("samples are empty: there is no audio to transcribe")
    if not np.isfinite(samples).all():
        raise TranscriberError("samples contain NaN or infinity")
    peak = float(np.abs(samples).max())
    if peak > 1.0 + 1e-6:
        raise TranscriberError(f"samples must lie in [-1, 1], the largest is {peak:.3g} (int16 scaled by 1/32768?)")
    return samples


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> little-endian 16-bit PCM bytes, as Vosk and pocketsphinx take them."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class Transcriber(ABC):
    """A speech recogniser, loaded once; `transcribe` decodes one voiced segment."""

    name = "transcriber"

    def transcribe(self, samples: np.ndarray) -> Transcript:
        """Decode one segment of 16 kHz mono float32 samples in [-1, 1]."""
        check_samples(samples)
        t = time.perf_counter()
        text, partials = self._decode(samples)
        return Transcript(text.strip(), len(samples) / SAMPLE_RATE, time.perf_counter() - t, partials)

    @abstractmethod
    def _decode(self, samples: np.ndarray) -> tuple[str, list[str]]:
        """The words of checked samples, and any partial results on the way."""
