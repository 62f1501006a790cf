"""Streaming band-limited resampling of int16 audio (e.g. a 44.1 or 48 kHz microphone to 16 kHz), numpy only."""

from __future__ import annotations

import math

import numpy as np

from device.audio.base import SAMPLE_RATE


def to_mono(samples: np.ndarray, channels: int) -> np.ndarray:
    """Average interleaved int16 channels into one (a stereo-only USB mic carries the same voice on both)."""
    if channels == 1:
        return samples
    frames = samples[: len(samples) // channels * channels].reshape(-1, channels)
    return np.round(frames.astype(np.float32).mean(axis=1)).astype(np.int16)


class StreamResampler:
    """Windowed-sinc resampler that keeps its phase and filter history across chunks, so chunk edges do not click.

    Output sample k sits at input position k * src / dst exactly (integer arithmetic, no drift over hours). One
    filter per phase is precomputed: 48 -> 16 kHz has one phase, 44.1 -> 16 kHz has 160.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE, zero_crossings: int = 16, rolloff: float = 0.9):
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(src_rate, dst_rate)
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self.up, self.down = dst_rate // g, src_rate // g
        # Cut off below the lower Nyquist frequency, so downsampling does not alias.
        cutoff = rolloff * min(1.0, dst_rate / src_rate)
        self.half_width = math.ceil(zero_crossings / cutoff)
        offsets = np.arange(-self.half_width + 1, self.half_width + 1)  # taps relative to floor(position)
        frac = np.arange(self.up)[:, None] / self.up
        t = frac - offsets[None, :]
        taps = cutoff * np.sinc(cutoff * t) * (0.5 + 0.5 * np.cos(np.pi * np.clip(t / self.half_width, -1, 1)))
        self._taps = (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)  # unity gain at DC per phase
        self._offsets = offsets
        self.reset()

    @property
    def passthrough(self) -> bool:
        return self.src_rate == self.dst_rate

    def reset(self) -> None:
        """Start a new stream (zeros before the first sample)."""
        self._buf = np.zeros(self.half_width, np.float32)
        self._base = -self.half_width  # absolute input index of _buf[0]
        self._k = 0  # next output index
        self._n_in = 0

    def _emit(self, last_k: int) -> np.ndarray:
        if last_k < self._k:
            return np.zeros(0, np.int16)
        ks = np.arange(self._k, last_k + 1, dtype=np.int64)
        pos = ks * self.down
        i0, phase = pos // self.up, pos % self.up
        idx = i0[:, None] + self._offsets[None, :] - self._base
        y = (self._taps[phase] * self._buf[idx]).sum(axis=1)
        self._k = last_k + 1
        # Forget input no later output can reach.
        keep_from = (self._k * self.down) // self.up - self.half_width + 1 - self._base
        if keep_from > 0:
            self._buf = self._buf[keep_from:]
            self._base += keep_from
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed int16 input; return the int16 output that is ready (a few ms lag behind the input)."""
        if self.passthrough:
            return samples
        self._buf = np.concatenate([self._buf, samples.astype(np.float32)])
        self._n_in += len(samples)
        # Output k needs input up to floor(k * down / up) + half_width.
        limit = self._base + len(self._buf) - 1 - self.half_width  # highest usable floor position
        if limit < 0:
            return np.zeros(0, np.int16)
        return self._emit(((limit + 1) * self.up - 1) // self.down)

    def flush(self) -> np.ndarray:
        """Return the remaining output at the end of a stream (the input is padded with zeros)."""
        if self.passthrough:
            return np.zeros(0, np.int16)
        total = -(-self._n_in * self.up // self.down)  # ceil: outputs that fall inside the input
        self._buf = np.concatenate([self._buf, np.zeros(self.half_width + 1, np.float32)])
        out = self._emit(total - 1)
        return out
