"""Loudness normalisation before the speech model: the level of the recording must not reach the model."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from device.audio.loudness import active_level_dbfs, normalise_loudness
from device.models.whisper_encoder import window_starts

SR = 16000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > 0).astype(np.float32)  # syllables and pauses
    return (0.2 * envelope * np.sin(2 * np.pi * rng.uniform(100, 300) * t)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(gain_db=st.floats(-40, 20), seconds=st.floats(0.03, 4.0), seed=st.integers(0, 1000))
def test_any_gain_comes_out_at_the_same_level_and_in_range(gain_db, seconds, seed):
    x = _speechlike(seconds, seed)
    if not x.any():
        return
    y = normalise_loudness(np.clip(x * np.float32(10 ** (gain_db / 20)), -1, 1))
    assert np.abs(y).max() <= 0.99 + 1e-6
    ref = normalise_loudness(x)
    if np.abs(x).max() * 10 ** (gain_db / 20) < 1:  # not clipped: the same samples, whatever the gain
        assert np.allclose(y, ref, atol=1e-4)


def test_the_target_level_is_reached_unless_the_peak_forbids_it():
    x = _speechlike(2.0, 1) * np.float32(0.01)
    assert abs(active_level_dbfs(normalise_loudness(x, -20.0)) + 20.0) < 0.1
    y = normalise_loudness(x, 0.0)  # a sine at 0 dBFS active level would clip: the peak wins
    assert abs(np.abs(y).max() - 0.99) < 1e-3


def test_silence_and_empty_input_pass_through():
    assert not normalise_loudness(np.zeros(8000, np.float32)).any()
    assert normalise_loudness(np.zeros(0, np.float32)).size == 0


def test_windows_cover_the_segment_2_s_apart_by_1_s():
    assert window_starts(8000) == [0]
    assert window_starts(32000) == [0]
    assert window_starts(5 * SR) == [0, SR, 2 * SR, 3 * SR]
    assert window_starts(int(5.7 * SR)) == [0, SR, 2 * SR, 3 * SR, int(5.7 * SR) - 2 * SR]  # a long tail
