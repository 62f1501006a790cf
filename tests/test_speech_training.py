"""Speech training data: RAVDESS names and the actor-independent folds, and the augmentation's building blocks."""

from pathlib import Path

import numpy as np
import pytest

from converter import ravdess
from converter.speech_augment import Augmenter, mix_at_snr, reverberate, room_response, voiced_range
from device.contract.labels import LABELS
from device.models.log_mel import normalised_crop


def test_names_map_to_canonical_labels_with_calm_as_neutral():
    calm = ravdess.parse_name(Path("03-01-02-01-01-01-12.wav"))
    assert LABELS[calm.label] == "neutral" and calm.actor == 12 and calm.female
    fear = ravdess.parse_name(Path("03-01-06-02-02-01-07.wav"))
    assert LABELS[fear.label] == "fear" and fear.intensity == 2 and fear.statement == 2 and not fear.female
    with pytest.raises(ValueError, match="not a RAVDESS"):
        ravdess.parse_name(Path("01-01-02-01-01-01-12.wav"))  # 01: audio-video, not audio-only


def test_folds_are_grouped_by_actor_cover_the_training_actors_and_hold_both_sexes():
    actors = np.repeat(np.arange(1, 25), 60)
    folds = ravdess.actor_folds(actors, 5)
    seen = []
    for train, val in folds:
        val_actors, train_actors = set(actors[val]), set(actors[train])
        assert not val_actors & train_actors
        assert not (val_actors | train_actors) & ravdess.TEST_ACTORS
        assert {a % 2 for a in val_actors} == {0, 1}
        seen += sorted(val_actors)
    assert sorted(seen) == sorted(ravdess.TRAIN_ACTORS)


def test_noise_is_mixed_at_the_asked_snr():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000).astype(np.float32) * 0.1
    noise = rng.standard_normal(8000).astype(np.float32)
    mixed = mix_at_snr(speech, noise, 10.0, rng)
    snr = 10 * np.log10(np.mean(speech**2) / np.mean((mixed - speech) ** 2))
    assert snr == pytest.approx(10.0, abs=0.05)


def test_a_crop_before_the_start_is_shifted_and_each_band_loses_its_mean():
    raw = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    out = normalised_crop(raw, -10, 20)
    assert np.all(out[:10] == 0) and np.allclose(out[10:].mean(axis=0), 0)
    assert np.allclose(np.diff(out[10:, 0]), 4)  # rows in order


def test_the_augmenter_makes_finite_2_s_crops_of_the_voiced_part():
    rng = np.random.default_rng(1)
    t = np.arange(48000) / 16000
    wave = np.where((t > 1) & (t < 2.5), 0.2 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)
    wave += rng.standard_normal(len(wave)).astype(np.float32) * 1e-4
    pool = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(5)]
    aug = Augmenter(pool, seed=3)
    crops = [aug(wave) for _ in range(20)]
    assert all(c.shape == (200, 64) and np.isfinite(c).all() for c in crops)
    from device.models.log_mel import log_mel

    start, end = voiced_range(log_mel(wave, normalise=False))
    assert 95 <= start <= 105 and 245 <= end <= 255  # the tone from 1 s to 2.5 s


def test_a_synthetic_room_decays_60_db_in_its_rt60_at_the_asked_direct_to_reverberant_ratio():
    rng = np.random.default_rng(2)
    h = room_response(0.6, 3.0, rng)
    assert h[0] == 1.0 and len(h) == int(0.9 * 16000)
    assert 10 * np.log10(1.0 / np.sum(h[1:] ** 2)) == pytest.approx(3.0, abs=1e-6)
    blocks = (h[48:] ** 2)[: 80 * 100].reshape(80, 100).sum(1)  # 80 blocks of 6.25 ms from the tail's start
    slope_db_per_s = np.polyfit(np.arange(80) * 100 / 16000, 10 * np.log10(blocks), 1)[0]
    assert slope_db_per_s == pytest.approx(-60 / 0.6, rel=0.1)


def test_reverberation_keeps_the_length_and_the_level_of_the_speech():
    rng = np.random.default_rng(4)
    wave = (0.1 * np.sin(2 * np.pi * 200 * np.arange(24000) / 16000)).astype(np.float32)
    wet = reverberate(wave, 0.9, 0.0, rng)
    assert wet.dtype == np.float32 and wet.shape == wave.shape
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(wave**2)), rel=1e-3)
    assert not np.allclose(wet, wave)


def test_reverberant_training_copies_cover_training_actors_and_test_rooms_test_actors():
    from converter import whisper_features as wf

    clips = ravdess.clips()
    for variant, actors in (("rev3", ravdess.TRAIN_ACTORS), ("room600", ravdess.TRAIN_ACTORS),
                            ("aug12", ravdess.TRAIN_ACTORS), ("reverb600", ravdess.TEST_ACTORS),
                            ("fan10", ravdess.TEST_ACTORS)):
        assert {clips[i].actor for i in wf.clip_indices(variant, clips)} == actors, variant


def test_a_voice_statistics_cache_of_another_version_is_computed_again(tmp_path):
    from converter import whisper_features as wf

    old, new = tmp_path / "old.npz", tmp_path / "new.npz"
    np.savez(old, x=np.zeros((1, 2)), clip=np.zeros(1))  # written before caches recorded a version: version 1
    np.savez(new, x=np.zeros((1, 2)), clip=np.zeros(1), version=np.int64(2))
    assert wf._current(old, 1) and not wf._current(old, 2)
    assert wf._current(new, 2) and not wf._current(new, 1)
    assert not wf._current(tmp_path / "missing.npz", None) and wf._current(old, None)
