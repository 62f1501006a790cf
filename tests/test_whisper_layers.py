"""Whisper's encoder in numpy (device/models/whisper_layers.py): the same output as CTranslate2's, each layer on
its own, and clear errors for a file it cannot read."""

import numpy as np
import pytest

from device.errors import ModelError
from device.model_store import models_dir
from device.models.whisper_encoder import WhisperEncoder
from device.models.whisper_layers import WhisperLayers, gelu, read_encoder_weights

SR = 16000
FOLDER = models_dir() / "whisper-tiny.en"


def _voice(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.5 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 12))
    return (0.1 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)).astype(np.float32)


@pytest.fixture(scope="module")
def layers() -> WhisperEncoder:
    return WhisperEncoder(FOLDER, layers=(1, 2, 3, 4))


def test_the_last_layer_is_ctranslate2s_encoder_output(layers):
    reference = WhisperEncoder(FOLDER, compute_type="float32")
    wave = _voice(2.0)
    mine, theirs = layers.frames(wave), reference.frames(wave)
    assert mine.shape == (100, 4 * 384) and theirs.shape == (100, 384)
    assert np.abs(mine[:, 3 * 384 :] - theirs).max() < 1e-3


def test_each_layer_is_its_own_block_of_columns_and_later_blocks_are_skipped(layers):
    wave = _voice(1.3)
    every = layers.frames(wave)
    second_third = WhisperEncoder(FOLDER, layers=(3, 2)).frames(wave)
    assert np.array_equal(second_third, np.hstack([every[:, 768:1152], every[:, 384:768]]))
    assert not np.allclose(every[:, :384], every[:, 384:768])


def test_pooled_windows_have_384_columns_per_layer(layers):
    x = layers.features(_voice(3.2))
    assert x.shape == (2, 4 * 384) and x.dtype == np.float32


def test_gelu_matches_the_exact_one():
    from math import erf

    x = np.linspace(-6, 6, 241, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(gelu(x) - exact).max() < 1e-6


def test_only_the_encoders_weights_are_read_and_only_the_blocks_in_use_are_kept():
    w = read_encoder_weights(FOLDER / "model.bin")
    assert "conv1/weight" in w and not any(k.startswith("decoder") for k in w)
    kept = WhisperLayers(FOLDER, up_to=2)._w
    assert "layer_1/ffn/linear_0/weight" in kept and not any(k.startswith(("layer_2/", "layer_3/", "layer_norm/"))
                                                              for k in kept)
    # the weight matrices stay float16, as stored; biases, norms and positions are float32
    assert {k for k, v in kept.items() if v.dtype == np.float16} == {k for k in kept if k.endswith("weight")}
    assert all(v.dtype == np.float32 for k, v in kept.items() if not k.endswith("weight"))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a readable CTranslate2 model file"),
    (b"\x05\x00\x00\x00", "format 5, expected 6"),
    (b"\x06\x00\x00\x00\x09\x00TestSpec\x00", "a TestSpec, not a Whisper model"),
])
def test_a_file_that_is_not_a_whisper_model_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "model.bin").write_bytes(content)
    with pytest.raises(ModelError, match=message):
        WhisperLayers(tmp_path)


def test_a_truncated_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.bin").write_bytes((FOLDER / "model.bin").read_bytes()[:5_000_000])
    with pytest.raises(ModelError, match="not a readable CTranslate2 model file"):
        WhisperLayers(tmp_path)


def test_layers_outside_the_encoder_are_refused(tmp_path):
    with pytest.raises(ModelError, match=r"numbered from 1, asked for \(0, 2\)"):
        WhisperEncoder(FOLDER, layers=(0, 2))
    with pytest.raises(ModelError, match=r"layers 1\.\.4, asked for up to 5"):
        WhisperEncoder(FOLDER, layers=(2, 5))
    with pytest.raises(ValueError, match=r"within 1\.\.2"):
        WhisperLayers(FOLDER, up_to=2).frames(np.zeros((80, 200), np.float32), (3,))
