"""The voice statistics beside Whisper's encoder features: their size, the pitch they find, and that the recording
level does not change them."""

import numpy as np
import pytest

from device.models.voice_statistics import N_FEATURES, VOICED_PEAK, pitch_track, voice_statistics

SR = 16000


def _voice(f0: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.05 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))).astype(np.float32)


@pytest.mark.parametrize("f0", [110.0, 180.0, 300.0])
def test_the_pitch_track_finds_a_voices_fundamental(f0):
    hz, peak = pitch_track(_voice(f0))
    assert np.median(hz) == pytest.approx(f0, rel=0.03)
    assert np.median(peak) > VOICED_PEAK  # voiced (the Hann window lowers the peak at long periods)


def test_a_window_gives_200_finite_numbers_whatever_its_level():
    wave = _voice(180.0)
    quiet, loud = voice_statistics(wave * 10 ** (-12 / 20)), voice_statistics(wave * 10 ** (12 / 20))
    assert quiet.shape == (N_FEATURES,) and quiet.dtype == np.float32
    np.testing.assert_allclose(quiet, loud, atol=1e-2)


def test_silence_and_noise_give_finite_numbers_and_no_voiced_frames():
    silence = voice_statistics(np.zeros(SR, np.float32))
    noise = voice_statistics(np.random.default_rng(0).normal(0, 0.1, SR).astype(np.float32))
    assert np.isfinite(silence).all() and np.isfinite(noise).all()
    voiced_share = N_FEATURES - 4  # pitch: mean, sd, range, change, voiced share; then 3 of the loudness contour
    assert silence[voiced_share] == 0
    assert noise[voiced_share] < 0.2
