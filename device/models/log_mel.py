"""The log-mel front end of the speech-emotion model: numpy only, the same code in training and on the device.

16 kHz mono float32 in [-1, 1] -> (frames, n_mels) log power in dB, 25 ms Hann windows every 10 ms, Slaney mel
filters (librosa's defaults, which tests/test_log_mel.py checks it against). `normalise` subtracts each band's mean
over the segment, so the features do not depend on the recording level: a gain of g dB shifts every log-mel value
by g, and the mean takes that out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class LogMelConfig:
    """Front-end parameters; the speech model's manifest entry records them, and loading checks them."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400  # 25 ms
    hop: int = 160  # 10 ms
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    amin: float = 1e-10  # power floor before the log (-100 dB)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@cache
def mel_filters(config: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, each normalised to unit area (Slaney)."""
    n_bins = config.n_fft // 2 + 1
    fft_hz = np.linspace(0, config.sample_rate / 2, n_bins)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(config.fmax), config.n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


@cache
def _window(n_fft: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann


def power_spectrogram(wave: np.ndarray, config: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """(frames, n_fft // 2 + 1) power, frames centred on multiples of `hop` (zero padding at the ends)."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
    pad = config.n_fft // 2
    x = np.pad(x, pad)
    n = 1 + (len(x) - config.n_fft) // config.hop
    frames = np.lib.stride_tricks.sliding_window_view(x, config.n_fft)[:: config.hop][:n]
    spec = np.fft.rfft(frames * _window(config.n_fft), axis=1)
    return (spec.real**2 + spec.imag**2).astype(np.float32)


def log_mel(wave: np.ndarray, config: LogMelConfig = LogMelConfig(), normalise: bool = True) -> np.ndarray:
    """(frames, n_mels) log-mel power in dB; with `normalise`, each band's mean over the segment is removed."""
    mel = power_spectrogram(wave, config) @ mel_filters(config).T
    db = 10.0 * np.log10(np.maximum(mel, config.amin))
    if normalise:
        db -= db.mean(axis=0, keepdims=True)
    return db.astype(np.float32)


def normalised_crop(raw_db: np.ndarray, start: int, frames: int) -> np.ndarray:
    """`frames` rows of un-normalised log-mel from `start` (may be negative), each band's mean over the real rows
    removed, and zeros (that mean) where the crop runs past either end: the model's input window."""
    out = np.zeros((frames, raw_db.shape[1]), np.float32)
    lo, hi = max(0, start), min(len(raw_db), start + frames)
    if hi > lo:
        piece = raw_db[lo:hi]
        out[lo - start : hi - start] = piece - piece.mean(axis=0, keepdims=True)
    return out
