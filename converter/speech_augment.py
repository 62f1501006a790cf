"""Waveform and spectrogram augmentation for speech-emotion training, in numpy.

Gain, speed (tempo and pitch together), room reverberation, additive noise (white, pink and a fan-like hum) and
babble mixed from *training* actors' clips only, then a random 2 s crop of the voiced part and SpecAugment masks.
"""

from __future__ import annotations

import numpy as np

from device.models.log_mel import LogMelConfig, log_mel, normalised_crop

FRAMES_PER_S = 100  # 10 ms hop
DEFAULT_CONFIG = LogMelConfig()


def voiced_range(features_db: np.ndarray, below_peak_db: float = 35.0) -> tuple[int, int]:
    """The first and last frame whose energy is within `below_peak_db` of the loudest frame (un-normalised dB)."""
    energy = features_db.max(axis=1)
    on = np.flatnonzero(energy > energy.max() - below_peak_db)
    return (int(on[0]), int(on[-1]) + 1) if on.size else (0, len(energy))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """speech + noise scaled to `snr_db` (noise tiled or cut to length, from a random offset)."""
    if len(noise) < len(speech):
        noise = np.tile(noise, int(np.ceil(len(speech) / max(1, len(noise)))) + 1)
    start = rng.integers(0, len(noise) - len(speech) + 1)
    noise = noise[start : start + len(speech)]
    p_s = np.mean(speech**2) + 1e-12
    p_n = np.mean(noise**2) + 1e-12
    return (speech + noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))).astype(np.float32)


def coloured_noise(n: int, kind: str, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """White, pink (1/f) or fan (pink plus a hum at a random low frequency and its harmonics) noise."""
    white = rng.standard_normal(n).astype(np.float32)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    spectrum /= np.sqrt(np.maximum(f, 20.0))
    pink = np.fft.irfft(spectrum, n).astype(np.float32)
    if kind == "pink":
        return pink
    t = np.arange(n) / sample_rate
    hum_hz = rng.uniform(50, 180)
    hum = sum(np.sin(2 * np.pi * hum_hz * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    return (pink / (np.std(pink) + 1e-9) + 0.7 * hum).astype(np.float32)


def babble(pool: list[np.ndarray], n: int, voices: int, rng: np.random.Generator) -> np.ndarray:
    """`voices` clips from `pool` (other speakers), each shifted at random, summed to `n` samples."""
    out = np.zeros(n, np.float32)
    for i in rng.choice(len(pool), size=voices, replace=False):
        clip = pool[i]
        clip = clip / (np.sqrt(np.mean(clip**2)) + 1e-9)
        shift = rng.integers(0, max(1, len(clip)))
        tiled = np.roll(np.tile(clip, int(np.ceil(n / len(clip))) + 1), -shift)[:n]
        out += tiled
    return out


def room_response(rt60_s: float, drr_db: float, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """A synthetic room impulse response: the direct sound, then after 3 ms a diffuse tail of noise decaying by
    60 dB in `rt60_s` seconds, scaled so that direct over reverberant energy is `drr_db` (a classroom: RT60 about
    0.4-0.9 s; a microphone across the room hears about as much reverberation as direct sound, DRR near 0 dB)."""
    n = round(min(1.5 * rt60_s, 1.5) * sample_rate)
    delay = round(0.003 * sample_rate)
    t = np.arange(n - delay) / sample_rate
    tail = rng.standard_normal(n - delay) * np.exp(-6.908 * t / rt60_s)  # 60 dB of amplitude decay at rt60
    tail *= np.sqrt(10 ** (-drr_db / 10) / (np.sum(tail**2) + 1e-12))
    response = np.zeros(n)
    response[0] = 1.0
    response[delay:] = tail
    return response


def reverberate(wave: np.ndarray, rt60_s: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`wave` heard in a room (`room_response`), cut to its own length and brought back to its own RMS level."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(wave.astype(np.float64), room_response(rt60_s, drr_db, rng))[: len(wave)]
    wet *= np.sqrt((np.mean(wave.astype(np.float64) ** 2) + 1e-12) / (np.mean(wet**2) + 1e-12))
    return wet.astype(np.float32)


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Resample so the clip plays `factor` times faster (pitch moves with it), by linear interpolation."""
    n = int(len(wave) / factor)
    return np.interp(np.arange(n) * factor, np.arange(len(wave)), wave).astype(np.float32)


def spec_augment(x: np.ndarray, rng: np.random.Generator, freq_masks: int = 2, time_masks: int = 2,
                 max_f: int = 8, max_t: int = 20) -> np.ndarray:
    """Zero (the normalised mean) random bands of mel channels and of frames."""
    x = x.copy()
    frames, bands = x.shape
    for _ in range(freq_masks):
        w = rng.integers(0, max_f + 1)
        f0 = rng.integers(0, max(1, bands - w))
        x[:, f0 : f0 + w] = 0.0
    for _ in range(time_masks):
        w = rng.integers(0, max_t + 1)
        t0 = rng.integers(0, max(1, frames - w))
        x[t0 : t0 + w, :] = 0.0
    return x


def windows(raw_db: np.ndarray, frames: int, hop: int) -> np.ndarray:
    """Every `frames`-long window of the voiced part, `hop` apart (at least one), as the device takes them."""
    start, end = voiced_range(raw_db)
    starts = [start] if end - start <= frames else list(range(start, end - frames + 1, hop))
    return np.stack([normalised_crop(raw_db, s, frames) for s in starts])


class Augmenter:
    """Makes one augmented, normalised 2 s log-mel crop of a clip per call."""

    def __init__(self, babble_pool: list[np.ndarray], config: LogMelConfig = DEFAULT_CONFIG, frames: int = 200,
                 seed: int = 0):
        self.pool = babble_pool
        self.config = config
        self.frames = frames
        self.rng = np.random.default_rng(seed)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        rng = self.rng
        x = wave * np.float32(10 ** (rng.uniform(-12, 12) / 20))
        if rng.random() < 0.5:
            x = change_speed(x, rng.uniform(0.9, 1.1))
        raw = log_mel(x, self.config, normalise=False)
        start, end = voiced_range(raw)
        feats = raw  # the voiced range comes from the clean clip; features are computed again only if noise is added
        r = rng.random()
        if r < 0.25 and len(self.pool) >= 4:
            x = mix_at_snr(x, babble(self.pool, len(x), int(rng.integers(2, 5)), rng), rng.uniform(5, 20), rng)
            feats = log_mel(x, self.config, normalise=False)
        elif r < 0.5:
            kind = ("white", "pink", "fan")[rng.integers(0, 3)]
            x = mix_at_snr(x, coloured_noise(len(x), kind, rng), rng.uniform(5, 25), rng)
            feats = log_mel(x, self.config, normalise=False)
        span = end - start
        if span > self.frames:
            s = int(rng.integers(start, end - self.frames + 1))
        else:
            s = start - int(rng.integers(0, self.frames - span + 1))
        return spec_augment(normalised_crop(feats, s, self.frames), rng)
