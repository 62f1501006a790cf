"""The fusion evaluation: triple sampling, the validation-only choice, the neutral discount, the manifest settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converter import evaluate_fusion as ef
from converter import goemotions, ravdess
from device.contract.labels import LABELS
from device.fusion import FusionConfig, LateFusion, WindowInputs, manifest_fusion, with_manifest_settings

NEUTRAL = LABELS.index("neutral")
ANGRY = LABELS.index("angry")


def noisy(y: np.ndarray, rng, strength: float) -> np.ndarray:
    """Probabilities that point at y with the given strength (0: random guesses)."""
    logits = rng.normal(size=(len(y), len(LABELS)))
    logits[np.arange(len(y)), y] += strength
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- triples -------------------------------------------------------------------------------------------------------


def test_triples_pair_equal_labels_evenly_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    labels = {"face": rng.integers(0, 7, 500), "speech": rng.integers(0, 7, 40), "text": rng.integers(0, 7, 300)}
    idx, y = ef.sample_triples(labels, per_label=20, seed=5)
    assert np.bincount(y, minlength=7).tolist() == [20] * 7
    for m, rows in idx.items():
        assert rows.min() >= 0 and rows.max() < len(labels[m])  # rows of the pool given, nothing else
        assert (labels[m][rows] == y).all()
    again, _ = ef.sample_triples(labels, per_label=20, seed=5)
    other, _ = ef.sample_triples(labels, per_label=20, seed=6)
    assert all((again[m] == idx[m]).all() for m in idx)
    assert any((other[m] != idx[m]).any() for m in idx)
    # Without replacement while the pool allows it.
    face_angry = idx["face"][y == ANGRY]
    assert len(set(face_angry.tolist())) == len(face_angry)


def test_a_label_missing_from_a_pool_is_a_clear_error():
    labels = {"face": np.arange(7), "speech": np.zeros(7, int)}
    with pytest.raises(ValueError, match="speech has no row labelled disgust"):
        ef.sample_triples(labels, per_label=2, seed=0)


# --- fusion as the device computes it ------------------------------------------------------------------------------


def test_vectorised_fusion_is_what_late_fusion_computes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 25)
    probs = {m: noisy(y, rng, 1.5) for m in ef.MODALITIES}
    setting = ef.Setting((1.0, 0.5, 2.0), (0.5, 0.0, 0.9))
    cfg = FusionConfig(half_life_s=0, **setting.as_config())
    fused = ef.fuse(probs, setting, cfg)
    for i in range(len(y)):
        out = LateFusion(cfg).update(WindowInputs(0, 2, face=probs["face"][i], speech=probs["speech"][i],
                                                  text=probs["text"][i], faces=3))
        assert [out.raw_distribution[k] for k in LABELS] == pytest.approx(fused[i].tolist())


def test_the_neutral_discount_lowers_a_neutral_modality_weight():
    text = np.full(7, 0.1 / 6)
    text[NEUTRAL] = 0.9
    speech = np.full(7, 0.4 / 6)
    speech[ANGRY] = 0.6
    base = {"confidence_weighting": False, "half_life_s": 0}
    plain = LateFusion(FusionConfig(**base)).update(WindowInputs(0, 2, speech=speech, text=text))
    assert plain.dominant == "neutral" and plain.weights == pytest.approx({"speech": 0.5, "text": 0.5})
    cfg = FusionConfig(**base, neutral_discount={"text": 1.0})
    out = LateFusion(cfg).update(WindowInputs(0, 2, speech=speech, text=text))
    # text: 1 x (1 - 1.0 x 0.9) = 0.1 against speech's 1 x (1 - 0 x ...) = 1
    assert out.weights == pytest.approx({"speech": 1 / 1.1, "text": 0.1 / 1.1})
    assert out.dominant == "angry"
    with pytest.raises(ValueError):
        FusionConfig(neutral_discount={"text": 1.5})


# --- the choice uses validation data only --------------------------------------------------------------------------


def test_the_grid_search_takes_the_best_validation_setting_within_the_pair_constraint():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 700)
    val = {"face": noisy(y, rng, 1.0), "speech": noisy(y, rng, 0.0), "text": noisy(y, rng, 4.0)}
    py = rng.integers(0, 7, 300)
    pair_speech = noisy(py, rng, 3.0)
    pair_text = np.full((300, 7), 0.001 / 6)
    pair_text[:, NEUTRAL] = 0.999  # confident that the words are neutral
    settings = [ef.NEUTRAL_SETTING, ef.Setting((1, 1, 4), (0, 0, 0)), ef.Setting((1, 1, 4), (0, 0, 1.0)),
                ef.Setting((1, 1, 0.25), (0, 0, 1.0))]
    chosen, table = ef.choose(val, y, pair_speech, pair_text, py, settings)
    # Text carries the evidence in these triples, but undiscounted it drags the neutral-worded pairs down.
    assert [row["pairs_ok"] for row in table] == [False, False, True, True]
    assert chosen == settings[2]


def fake_world(monkeypatch, tmp_path):
    """Synthetic data where validation favours text and test favours speech, behind evaluate()'s loaders."""
    rng = np.random.default_rng(3)
    clips = [ravdess.Clip(Path(f"c{i}.wav"), int(rng.integers(0, 7)), 1 + i % 24, 1, 1) for i in range(840)]
    y = np.array([c.label for c in clips])
    test = np.array([c.actor in ravdess.TEST_ACTORS for c in clips])
    speech = np.where(test[:, None], noisy(y, rng, 5.0), noisy(y, rng, 0.0))
    fy_va, fy_te = rng.integers(0, 7, 400), rng.integers(0, 7, 400)
    ty_va, ty_te = rng.integers(0, 7, 400), rng.integers(0, 7, 400)
    monkeypatch.setattr(ef, "MODELS", tmp_path)
    monkeypatch.setenv("AULA_MODELS_DIR", str(tmp_path))  # nothing may reach the committed model folder
    monkeypatch.setattr(ef, "PER_LABEL", 30)
    monkeypatch.setattr(ef.ravdess, "clips", lambda: clips)
    monkeypatch.setattr(ef, "speech_data", lambda c: (speech, "speech outputs as given"))
    monkeypatch.setattr(ef, "face_data", lambda: {"validation": (noisy(fy_va, rng, 1.0), fy_va),
                                                  "test": (noisy(fy_te, rng, 1.0), fy_te)})
    monkeypatch.setattr(ef, "transcribe_ravdess", lambda c: {x.path.name: "kids are talking by the door" for x in c})
    monkeypatch.setattr(ef, "text_model", lambda: None)
    splits = {"dev": (ty_va, 4.0), "test": (ty_te, 0.0)}
    texts = {"ravdess_transcripts": noisy(np.full(840, NEUTRAL), rng, 3.0),
             "goemotions_dev": noisy(ty_va, rng, 4.0), "goemotions_test": noisy(ty_te, rng, 0.0)}
    monkeypatch.setattr(ef, "text_probs", lambda model, name, t: texts[name])

    def load(name):
        labels, _ = splits[name]
        targets = np.eye(7, dtype=np.float32)[labels]
        return goemotions.Split([f"t{i}" for i in range(len(labels))], targets, np.ones(len(labels), bool))

    monkeypatch.setattr(ef.goemotions, "load", load)
    monkeypatch.setattr(ef, "grid", lambda: [ef.NEUTRAL_SETTING, ef.Setting((1, 0.25, 4), (0, 0, 1.0)),
                                             ef.Setting((1, 4, 0.25), (0, 0, 1.0))])


def test_evaluate_chooses_on_validation_and_writes_the_card_and_manifest(monkeypatch, tmp_path, capsys):
    fake_world(monkeypatch, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {"x": {"file": "x.tflite"}}}))
    report = ef.evaluate()
    capsys.readouterr()
    # Validation says text (the test split would say speech): the choice follows validation.
    assert report["chosen"]["weights"] == {"face": 1, "speech": 0.25, "text": 4}
    assert report["triples"]["chosen"]["speech"]["accuracy"] > report["triples"]["chosen"]["text"]["accuracy"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"] == {"x": {"file": "x.tflite"}}  # other keys kept
    assert manifest["fusion"]["weights"] == report["chosen"]["weights"]
    assert json.loads((tmp_path / "cards" / "fusion_metrics.json").read_text())["chosen"] == report["chosen"]
    assert set(report["triples"]["chosen"]) == {"face", "speech", "text", "face+speech", "face+text",
                                                "speech+text", "face+speech+text"}


def test_with_cached_transcripts_only_the_transcribed_validation_clips_are_paired(monkeypatch, tmp_path, capsys):
    fake_world(monkeypatch, tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {}}))
    cache = tmp_path / "transcripts.json"
    cache.write_text(json.dumps({f"c{i}.wav": "dogs are sitting by the door" for i in range(0, 840, 7)}))
    monkeypatch.setattr(ef, "transcripts_path", lambda: cache)
    monkeypatch.setattr(ef, "text_probs", lambda model, name, t: noisy(np.full(len(t), NEUTRAL),
                                                                        np.random.default_rng(0), 3.0))
    report = ef.evaluate(write=False, complete=False)
    capsys.readouterr()
    cached_val = sum(1 for i in range(0, 840, 7) if 1 + i % 24 <= 18)
    assert report["pairs"]["actors_1_18"]["n"] == cached_val
    assert report["pairs"]["test_actors"]["n"] == sum(1 for i in range(840) if 1 + i % 24 >= 19)
    assert f"the {cached_val} clips" in report["chosen_on"]["constraint"]


# --- the manifest's settings on the device -------------------------------------------------------------------------


def write_manifest(folder: Path, fusion: dict | None) -> None:
    body = {"schema": 1, "models": {}} | ({"fusion": fusion} if fusion is not None else {})
    (folder / "manifest.json").write_text(json.dumps(body))


SHIPPED = {"weights": {"face": 1.0, "speech": 2.0, "text": 0.5},
           "neutral_discount": {"face": 0, "speech": 0, "text": 0.9}, "temperatures": None}


def test_the_manifest_settings_apply_unless_the_config_sets_them(tmp_path):
    write_manifest(tmp_path, SHIPPED)
    assert manifest_fusion(tmp_path) == SHIPPED
    resolved = with_manifest_settings(FusionConfig(), tmp_path)
    assert resolved.weights.model_dump() == SHIPPED["weights"]
    assert resolved.neutral_discount.text == 0.9
    own = with_manifest_settings(FusionConfig(weights={"face": 1, "speech": 1, "text": 1}), tmp_path)
    assert own.weights.model_dump() == {"face": 1.0, "speech": 1.0, "text": 1.0}  # the config wins
    assert own.neutral_discount.text == 0.9  # what the config leaves unset still comes from the manifest


def test_without_manifest_settings_the_weights_stay_equal(tmp_path, monkeypatch):
    write_manifest(tmp_path, None)
    cfg = with_manifest_settings(FusionConfig(), tmp_path)
    assert cfg.weights is None and cfg.neutral_discount is None
    out = LateFusion(cfg).update(WindowInputs(0, 2, speech=np.eye(7)[0], text=np.eye(7)[0]))
    assert out.weights == pytest.approx({"speech": 0.5, "text": 0.5})
    write_manifest(tmp_path, {"weights": {"face": -1}})  # a bad section is ignored, not fatal
    assert with_manifest_settings(FusionConfig(), tmp_path).weights is None
    monkeypatch.setenv("AULA_MODELS_DIR", str(tmp_path))  # the device's model folder is the default
    write_manifest(tmp_path, SHIPPED)
    assert with_manifest_settings(FusionConfig()).weights.speech == 2.0


def test_the_example_config_and_a_config_without_weights_stay_valid():
    from device.config import load_config

    example = Path(__file__).resolve().parent.parent / "docs" / "device.example.yaml"
    cfg = load_config(example)
    assert cfg.fusion.weights is None  # it leaves them unset, so the manifest's apply
    assert FusionConfig.model_validate({"window_s": 2}).weights is None
