"""Loudness normalisation of a speech segment, so that a model downstream never sees absolute level.

The level is the mean power of the loudest half of the segment's 25 ms frames (the voice, not the pauses
between words); the segment is scaled so that level sits at `target_dbfs`, then scaled down again if its peak
would leave [-1, 1]. Silence (every frame below -80 dBFS) is returned unchanged.
"""

from __future__ import annotations

import numpy as np

FRAME = 400  # 25 ms at 16 kHz
SILENCE_DBFS = -80.0


def active_level_dbfs(samples: np.ndarray) -> float:
    """Level of the loudest half of the 25 ms frames, in dB relative to full scale (-inf for digital silence)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return -np.inf
    n = len(samples) // FRAME
    frames = samples[: n * FRAME].reshape(n, FRAME) if n else samples[None, :]
    n = len(frames)
    power = np.sort(np.mean(frames**2, axis=1))[::-1]
    loud = power[: max(1, n // 2)].mean()
    return float(10 * np.log10(loud)) if loud > 0 else -np.inf


def normalise_loudness(samples: np.ndarray, target_dbfs: float = -20.0, peak: float = 0.99) -> np.ndarray:
    """`samples` (float, 16 kHz mono) scaled to `target_dbfs` active level, never past `peak`; float32 out."""
    samples = np.asarray(samples, dtype=np.float32)
    level = active_level_dbfs(samples)
    if level < SILENCE_DBFS:
        return samples.copy()
    gain = 10 ** ((target_dbfs - level) / 20)
    top = float(np.abs(samples).max()) * gain
    if top > peak:
        gain *= peak / top
    return (samples * np.float32(gain)).astype(np.float32)
