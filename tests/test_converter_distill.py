"""Starting a training cycle from the committed model: ONNX import, distillation targets, random erasing."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")  # the converter extra (TensorFlow); the device never needs it

from converter.distill import (  # noqa: E402
    distillation_loss,
    label_accuracy,
    load_teacher,
    mirror_averaged_logits,
    random_erasing,
)
from converter.onnx_import import architecture_of_weights, folded_weights, import_onnx  # noqa: E402
from device.model_store import models_dir  # noqa: E402
from device.models import FaceEmotionModel  # noqa: E402

ONNX = models_dir() / "face_emotion.onnx"


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.mixed_precision.set_global_policy("float32")


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def test_imported_network_computes_what_the_committed_onnx_model_computes():
    net, wrapper, arch = import_onnx(ONNX, _faces(256), max_images=256)
    faces = _faces(32, seed=1)
    ref = FaceEmotionModel.load("face_emotion_onnx", mirror_below=0.0).logits_batch(list(faces))
    ours = net((faces.astype(np.float32) / 255.0)[..., None], training=False).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-3 * np.abs(ref).max())
    assert arch == architecture_of_weights(folded_weights(ONNX)[0])
    assert wrapper.count_params() == net.count_params()


def test_imported_batch_norms_carry_the_measured_statistics():
    faces = _faces(128, seed=2)
    net, _, _ = import_onnx(ONNX, faces, max_images=128)
    bn = net.get_layer("s0bn0")
    pre = keras.Model(net.input, net.get_layer("s0c0").output)((faces.astype(np.float32) / 255.0)[..., None]).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(bn.gamma.numpy() ** 2, pre.var(axis=(0, 1, 2)) + bn.epsilon, rtol=1e-3)
    # training mode normalises with the batch's own statistics: the same batch gives the folded output
    y_train = bn(pre, training=True).numpy()
    y_infer = bn(pre, training=False).numpy()
    np.testing.assert_allclose(y_train, y_infer, atol=1e-3 * np.abs(y_infer).max())


def test_a_missing_or_foreign_onnx_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="export-face"):
        folded_weights(tmp_path / "none.onnx")


def test_distillation_loss_reduces_to_cross_entropy_and_kl():
    rng = np.random.default_rng(3)
    student = rng.normal(0, 2, (5, 7)).astype(np.float32)
    teacher = rng.normal(0, 2, (5, 7)).astype(np.float32)
    labels = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 5)]
    ce = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(labels, student).numpy()
    only_labels = distillation_loss(0.0, 3.0, 0.0)(np.concatenate([labels, teacher], 1), student).numpy()
    np.testing.assert_allclose(only_labels, ce, rtol=1e-5)
    # a student equal to its teacher pays no distillation term
    same = distillation_loss(1.0, 3.0, 0.0)(np.concatenate([labels, student], 1), student).numpy()
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    kd = distillation_loss(1.0, 2.0, 0.0)(np.concatenate([labels, teacher], 1), student).numpy()
    t = np.exp(teacher / 2) / np.exp(teacher / 2).sum(1, keepdims=True)
    s = np.exp(student / 2) / np.exp(student / 2).sum(1, keepdims=True)
    np.testing.assert_allclose(kd, 4 * (t * np.log(t / s)).sum(1), rtol=1e-4)
    acc = label_accuracy(np.concatenate([labels, teacher], 1), labels * 5).numpy()
    assert acc == pytest.approx(1.0)


def test_mirror_averaged_logits_are_mirror_invariant():
    model = FaceEmotionModel.load("face_emotion_onnx", mirror_below=0.0)
    faces = _faces(6, seed=4)
    a = mirror_averaged_logits(model, faces, batch=4)
    b = mirror_averaged_logits(model, faces[:, :, ::-1].copy(), batch=4)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_teacher_logits_must_match_the_splits(tmp_path):
    path = tmp_path / "teacher.npz"
    np.savez(path, train=np.zeros((10, 7), np.float32), val=np.zeros((3, 7), np.float32))
    assert load_teacher(path, 10, 3)[0].shape == (10, 7)
    with pytest.raises(ValueError, match="teacher-face"):
        load_teacher(path, 11, 3)


def test_random_erasing_blanks_one_rectangle_per_face_at_its_probability():
    import tensorflow as tf

    x = tf.fill((64, 48, 48, 1), 0.5)
    y, w = tf.zeros((64, 7)), tf.ones(64)
    never = random_erasing(0.0)(x, y, w)[0].numpy()
    np.testing.assert_array_equal(never, x.numpy())
    always = random_erasing(1.0)(x, y, w)[0].numpy()
    changed = (always != 0.5).reshape(64, -1).mean(1)
    assert (changed > 0).all() and changed.max() <= 0.2 + 0.05
    for face in always[:8, :, :, 0] != 0.5:  # the changed pixels form one axis-aligned rectangle
        rows, cols = np.flatnonzero(face.any(1)), np.flatnonzero(face.any(0))
        assert face[rows.min():rows.max() + 1, cols.min():cols.max() + 1].mean() > 0.95


def test_training_precision_is_bf16_only_where_onednn_has_bf16_kernels():
    from converter.face_net import training_precision

    assert training_precision("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n") == "float32"
    assert training_precision("flags\t\t: avx2 avx512f avx512bw avx512vl\n") == "mixed_bfloat16"
    assert training_precision("") == "float32"


def test_imported_weights_say_where_they_came_from(tmp_path):
    from converter.onnx_import import imported_from, provenance

    weights = tmp_path / "imported_v2.weights.h5"
    assert imported_from(weights) is None
    provenance(weights).write_text('{"imported_from": "models_tflite/face_emotion.onnx", "arch": "v2"}')
    assert imported_from(weights) == "models_tflite/face_emotion.onnx"


def test_a_soup_averages_two_networks_weights(tmp_path):
    from converter.swa import soup_net
    from converter.train_face import build_training_model

    keras.utils.set_random_seed(5)
    a, _ = build_training_model("v1")
    b, b_wrapper = build_training_model("v1")
    b_wrapper.save_weights(tmp_path / "b.weights.h5")
    faces = _faces(64, seed=6)
    soup = soup_net(a, tmp_path / "b.weights.h5", faces, "v1", share=0.25)
    for name in ("s0c0", "s3c1", "logits"):
        expected = 0.75 * a.get_layer(name).kernel.numpy() + 0.25 * b.get_layer(name).kernel.numpy()
        np.testing.assert_allclose(soup.get_layer(name).kernel.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(soup.get_layer("s0bn0").moving_variance.numpy(), 1.0)  # statistics recomputed


def test_random_erasing_runs_inside_a_tf_data_pipeline():
    import tensorflow as tf

    x = np.full((8, 48, 48, 1), 0.5, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 7), np.float32), np.ones(8, np.float32)))
    batch = next(iter(ds.batch(4).map(random_erasing(1.0))))[0].numpy()
    assert batch.shape == (4, 48, 48, 1) and (batch != 0.5).any()
