"""Statistics of how a window of speech sounds: its spectrum, its pitch and its loudness contour (numpy only).

Whisper's encoder was trained to hear words; these 200 numbers describe the voice itself, which is where much of
an emotion lies (a raised, varied pitch; a tense, bright spectrum; a flat, quiet contour). The speech-emotion
head takes them beside the encoder's pooled frames (device/models/speech_emotion_whisper.py); the same code
makes the training features (converter/whisper_features.py).

Per window, after loudness normalisation (device/audio/loudness.py), so nothing depends on the recording level:

- the log-mel spectrum (device/models/log_mel.py, 64 bands, in dB): each band's mean, standard deviation and
  mean absolute frame-to-frame change (192 numbers);
- pitch, from the normalised autocorrelation of 40 ms frames every 10 ms (70-450 Hz; a frame is voiced when the
  autocorrelation peak passes 0.5 and the frame is within 35 dB of the loudest): the mean, standard deviation
  and 10-90 percentile range of log F0, its mean absolute change, and the voiced share of frames;
- the loudness contour (the mean log-mel per frame): its standard deviation, mean absolute change, and the share
  of frames within 10 dB of the loudest.
"""

from __future__ import annotations

import numpy as np

from device.audio.loudness import normalise_loudness
from device.models.log_mel import log_mel
from device.models.whisper_encoder import windows

SAMPLE_RATE = 16000
N_FEATURES = 200
PITCH_FRAME = 640  # 40 ms: two periods of the lowest pitch searched
PITCH_HOP = 160  # 10 ms, the log-mel's hop
F0_MIN, F0_MAX = 70.0, 450.0
VOICED_PEAK = 0.5  # normalised autocorrelation at the pitch period
VOICED_RANGE_DB = 35.0  # a voiced frame is within this much of the loudest frame


def pitch_track(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F0 in Hz of each 40 ms frame (10 ms apart), and the height of its autocorrelation peak (0 to 1)."""
    if len(samples) < PITCH_FRAME:
        return np.zeros(0), np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(samples.astype(np.float64), PITCH_FRAME)[::PITCH_HOP]
    frames = (frames - frames.mean(axis=1, keepdims=True)) * np.hanning(PITCH_FRAME)
    power = np.abs(np.fft.rfft(frames, 2 * PITCH_FRAME, axis=1)) ** 2
    ac = np.fft.irfft(power, axis=1)[:, :PITCH_FRAME]
    energy = ac[:, :1]
    ac = np.where(energy > 1e-9, ac / np.maximum(energy, 1e-9), 0.0)
    lo, hi = int(SAMPLE_RATE // F0_MAX), int(SAMPLE_RATE // F0_MIN)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(len(ac)), lag]
    return SAMPLE_RATE / lag, peak


def voice_statistics(samples: np.ndarray) -> np.ndarray:
    """The 200 statistics of one window of 16 kHz mono float samples (at least 40 ms), as float32."""
    x = normalise_loudness(np.asarray(samples, dtype=np.float32))
    mel = log_mel(x, normalise=False)  # (frames, 64) dB
    change = np.abs(np.diff(mel, axis=0)) if len(mel) > 1 else np.zeros_like(mel)
    contour = mel.mean(axis=1)
    f0, peak = pitch_track(x)
    n = min(len(f0), len(contour))
    voiced = (peak[:n] > VOICED_PEAK) & (contour[:n] > contour.max() - VOICED_RANGE_DB)
    log_f0 = np.log(f0[:n][voiced]) if voiced.sum() >= 3 else np.zeros(3)
    steps = np.abs(np.diff(log_f0))
    pitch = [log_f0.mean(), log_f0.std(), np.percentile(log_f0, 90) - np.percentile(log_f0, 10), steps.mean(),
             voiced.mean() if n else 0.0]
    level = [contour.std(), np.abs(np.diff(contour)).mean() if len(contour) > 1 else 0.0,
             (contour > contour.max() - 10).mean()]
    return np.concatenate([mel.mean(axis=0), mel.std(axis=0), change.mean(axis=0), pitch, level]).astype(np.float32)


def window_statistics(samples: np.ndarray) -> np.ndarray:
    """(n_windows, 200): the statistics of each 2 s window (1 s apart) of a segment, the windows of the encoder."""
    return np.stack([voice_statistics(w) for w in windows(samples)])
