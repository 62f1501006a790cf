"""The face model's mirror gate: a second, mirrored pass for the faces the model is unsure of."""

from types import SimpleNamespace

import numpy as np
import pytest

from device.errors import ModelError
from device.models import FaceEmotionModel
from device.models.face_emotion import mirror_gate, softmax
from tests.data import fer2013_test


@pytest.fixture(scope="module")
def faces():
    x, y = fer2013_test()
    return x[:96], y[:96]


def test_gate_zero_is_one_pass_and_one_mirrors_every_face():
    logits = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    assert not mirror_gate(logits, 0.0).any()
    assert mirror_gate(logits, 1.0).all()
    np.testing.assert_array_equal(mirror_gate(logits, 0.5), softmax(logits).max(1) < 0.5)


def test_gated_model_averages_exactly_the_unsure_faces_with_their_mirror(faces):
    crops = list(faces[0])
    one_pass = FaceEmotionModel.load(mirror_below=0.0)
    single = one_pass.logits_batch(crops)
    mirrored = one_pass.logits_batch([c[:, ::-1].copy() for c in crops])
    gated = FaceEmotionModel.load(mirror_below=0.6)
    out = gated.logits_batch(crops)
    unsure = softmax(single).max(1) < 0.6
    assert 0 < unsure.sum() < len(crops), "the sample should hold both sure and unsure faces"
    np.testing.assert_allclose(out[unsure], (single[unsure] + mirrored[unsure]) / 2, atol=1e-6)
    np.testing.assert_array_equal(out[~unsure], single[~unsure])
    assert (gated.faces_classified, gated.faces_mirrored) == (len(crops), int(unsure.sum()))
    # One face per call gives the same answers as the batch (the gate is per face).
    np.testing.assert_allclose(np.stack([gated.logits_batch([c])[0] for c in crops[:12]]), out[:12], atol=1e-6)


def test_default_model_uses_the_manifest_gate_and_its_temperatures():
    model = FaceEmotionModel.load()
    meta = model.entry.meta
    assert 0.0 <= meta["mirror_below_confidence"] <= 1.0
    assert model.mirror_below == meta["mirror_below_confidence"]
    assert model.temperature == meta["calibration_temperature"]
    one_pass = FaceEmotionModel.load(mirror_below=0.0)
    assert one_pass.temperature == meta["metrics"]["single_pass"]["calibration_temperature"]


def test_a_gate_outside_zero_to_one_is_a_clear_error():
    backend = FaceEmotionModel.load(mirror_below=0.0).backend
    entry = SimpleNamespace(meta={"mirror_below_confidence": 1.5})
    with pytest.raises(ModelError, match=r"mirror_below_confidence 1\.5"):
        FaceEmotionModel(backend, entry)
    with pytest.raises(ModelError, match="not in"):
        FaceEmotionModel(backend, None, mirror_below=-0.1)


def test_fit_gate_picks_the_cheapest_threshold_with_the_most_correct_validation_faces():
    from converter.face_eval import fit_gate

    one = np.zeros(7, np.float32)
    unsure, unsure_mirror = one.copy(), one.copy()
    unsure[:2] = (0.5, 0.7)  # top probability 0.23, wrong (class 1); its mirror says class 0
    unsure_mirror[0] = 3.0
    sure, sure_mirror = one.copy(), one.copy()
    sure[0] = 4.0  # top probability 0.90, right; its mirror would make it wrong
    sure_mirror[2] = 6.0
    single = np.stack([unsure] * 10 + [sure] * 10)
    mirrored = np.stack([unsure_mirror] * 10 + [sure_mirror] * 10)
    below, table = fit_gate(single, mirrored, np.zeros(20, int))
    assert below == 0.30
    by = {row["below"]: row for row in table}
    assert by[0.0]["val_accuracy"] == 0.5 and by[1.0]["val_accuracy"] == 0.5
    assert by[0.30]["val_accuracy"] == 1.0 and by[0.30]["mirrored_fraction"] == 0.5


def test_evaluation_fits_the_gate_on_validation_and_scores_test_through_the_device_path(faces):
    from converter.face_eval import GATE_GRID, evaluate_face_model, gated_logits

    x, y = fer2013_test()
    model = FaceEmotionModel.load(mirror_below=0.0)
    results, logits = evaluate_face_model(model, x[:120], y[:120], x[120:240], y[120:240])
    assert results["mirror_below_confidence"] in GATE_GRID
    assert model.mirror_below == results["mirror_below_confidence"]
    one_pass = FaceEmotionModel.load(mirror_below=0.0)
    mirrored = one_pass.logits_batch([c[:, ::-1].copy() for c in x[120:240]])
    np.testing.assert_allclose(logits["gated"], gated_logits(logits["single"], mirrored,
                                                             results["mirror_below_confidence"]), atol=1e-6)
    assert results["test"]["accuracy"] == pytest.approx(float((logits["gated"].argmax(1) == y[120:240]).mean()))
    assert results["single_pass"]["test"]["accuracy"] == pytest.approx(
        float((logits["single"].argmax(1) == y[120:240]).mean()))
    best = max(row["val_accuracy"] for row in results["mirror_gate_table"])
    assert results["val_accuracy"] == pytest.approx(best)


def test_config_sets_the_gate_and_rejects_one_outside_zero_to_one(tmp_path):
    from pydantic import ValidationError

    from device.config import DeviceConfig
    from device.vision import VisionStage

    with pytest.raises(ValidationError, match="mirror_below"):
        DeviceConfig(vision={"mirror_below": 1.5})
    stage = VisionStage.from_config(DeviceConfig(vision={"mirror_below": 0}).vision)
    assert stage.classifier.mirror_below == 0.0
    assert VisionStage.load().classifier.mirror_below == FaceEmotionModel.load().mirror_below


def test_fusion_calibrates_faces_with_the_temperature_of_the_gate_in_force():
    from device.config import DeviceConfig
    from device.service import DeviceService

    meta = FaceEmotionModel.load().entry.meta
    for below, expected in ((None, meta["calibration_temperature"]),
                            (0, meta["metrics"]["single_pass"]["calibration_temperature"])):
        service = DeviceService(DeviceConfig(vision={"mirror_below": below}))
        service._load_models()
        assert service.fusion.temperatures["face"] == pytest.approx(expected)
