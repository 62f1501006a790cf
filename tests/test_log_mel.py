"""The speech front end: librosa's log-mel within a stated tolerance, and independent of the recording level."""

import numpy as np
import pytest

from device.models.log_mel import LogMelConfig, log_mel, mel_filters

librosa = pytest.importorskip("librosa")  # a dev dependency, never a device one

CFG = LogMelConfig()


def _speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CFG.sample_rate)) / CFG.sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 1.5 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / CFG.sample_rate) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * envelope * voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_mel_filters_match_librosa():
    ref = librosa.filters.mel(sr=CFG.sample_rate, n_fft=CFG.n_fft, n_mels=CFG.n_mels, fmin=CFG.fmin, fmax=CFG.fmax)
    np.testing.assert_allclose(mel_filters(CFG), ref, rtol=1e-4, atol=1e-7)


def test_log_mel_matches_librosa_within_0_01_db():
    x = _speechlike()
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=x, sr=CFG.sample_rate, n_fft=CFG.n_fft, hop_length=CFG.hop, win_length=CFG.n_fft, window="hann",
            center=True, pad_mode="constant", power=2.0, n_mels=CFG.n_mels, fmin=CFG.fmin, fmax=CFG.fmax,
        ),
        ref=1.0, amin=CFG.amin, top_db=None,
    ).T
    ours = log_mel(x, CFG, normalise=False)
    assert ours.shape == ref.shape == (201, CFG.n_mels)
    assert np.max(np.abs(ours - ref)) < 0.01  # dB: float32 against librosa's float64 filters


@pytest.mark.parametrize("gain_db", [-12, -6, 6, 12])
def test_normalised_features_do_not_depend_on_the_level(gain_db):
    x = _speechlike()
    scaled = x * np.float32(10 ** (gain_db / 20))
    assert np.max(np.abs(log_mel(scaled) - log_mel(x))) < 1e-3


def test_stereo_input_is_refused():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((100, 2), np.float32))
