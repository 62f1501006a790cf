"""The face network's training-side pieces: the fused batch norm and growing a trained network."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")  # the converter extra (TensorFlow); the device never needs it

from converter.face_net import ARCHITECTURES, architecture_size, build_face_net, fused_batch_norm_layer  # noqa: E402
from converter.grow import check_growable, grow  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(11)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 48, 48, 1)).astype(np.float32)


def test_fused_batch_norm_matches_keras_in_both_modes():
    x = np.random.default_rng(1).normal(2.0, 3.0, (16, 6, 6, 5)).astype(np.float32)
    ours, ref = fused_batch_norm_layer(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, ref):
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 1.5, 5), np.linspace(-1, 1, 5), np.full(5, 0.3), np.full(5, 2.0)])
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)
    np.testing.assert_allclose(ours(x, training=True), ref(x, training=True), atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), atol=1e-5)
    # the fused kernel's running variance is the unbiased batch variance (n = 16 * 6 * 6 here)
    n = x.size / 5
    expected = 0.9 * 2.0 + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected, rtol=1e-4)


def test_weights_saved_with_keras_batch_norm_load_into_the_fused_network(tmp_path, monkeypatch):
    import converter.face_net as face_net

    with monkeypatch.context() as m:
        m.setattr(face_net, "fused_batch_norm_layer", lambda **kw: keras.layers.BatchNormalization(**kw))
        old = build_face_net(arch="v1")
    for layer in old.layers:  # non-trivial statistics, so a wrong mapping would show
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([np.full(c, 1.1), np.full(c, 0.1), np.full(c, 0.2), np.full(c, 0.7)])
    old.save_weights(tmp_path / "old.weights.h5")
    new = build_face_net(arch="v1")
    new.load_weights(tmp_path / "old.weights.h5")
    x = _faces(8)
    np.testing.assert_allclose(new(x, training=False), old(x, training=False), atol=1e-4)


def test_grown_network_computes_what_the_trained_one_did():
    small, big = build_face_net(arch="v1"), build_face_net(arch="v2")
    for layer in small.layers:  # move the statistics away from the identity so the new layer's set-up matters
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            rng = np.random.default_rng(c)
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(0, 0.5, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2, c)])
    grow(small, big, _faces(64, seed=2))
    x = _faces(16, seed=3)
    a, b = small(x, training=False).numpy(), big(x, training=False).numpy()
    np.testing.assert_allclose(b, a, atol=2e-3 * np.abs(a).max())
    assert big.count_params() > small.count_params()


def test_growing_refuses_to_shrink():
    with pytest.raises(ValueError, match="cannot grow v2"):
        check_growable("v2", "v1")
    check_growable("v1", "v2")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_size_counts_what_keras_builds(arch):
    params, macs = architecture_size(arch)
    assert params == build_face_net(arch=arch).count_params()
    assert 100e6 < macs < 160e6  # what the 1.5 ms per-face budget on one core allows
