"""Late fusion: calibration, weights, confidence, smoothing, gaps, privacy, valence/arousal, on recorded streams."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from device.contract import VALENCE_AROUSAL, EmotionEvent, Modality
from device.contract.labels import LABELS
from device.fusion import (
    FusionConfig,
    LateFusion,
    WindowInputs,
    calibrate,
    confidence,
    evidence_factor,
    smoothing_alpha,
)

STREAMS = json.loads((Path(__file__).parent / "fixtures" / "fusion_streams.json").read_text())
OFF = {"confidence_weighting": False}


def full(sparse: dict[str, float] | None) -> dict[str, float] | None:
    """Expand a fixture distribution that lists only its non-zero labels."""
    if sparse is None:
        return None
    return {k: float(sparse.get(k, 0.0)) for k in LABELS}


def one_hot(label: str, p: float = 1.0) -> dict[str, float]:
    rest = (1.0 - p) / (len(LABELS) - 1)
    return {k: (p if k == label else rest) for k in LABELS}


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def hand_inputs(w: dict) -> WindowInputs:
    def dist(v):
        return [full(x) for x in v] if isinstance(v, list) else full(v)

    return WindowInputs(
        start=w["start"],
        end=w["end"],
        face=dist(w.get("face")),
        speech=dist(w.get("speech")),
        text=dist(w.get("text")),
        faces=w.get("faces"),
        speech_segments=w.get("speech_segments"),
        text_utterances=w.get("text_utterances"),
    )


def run_hand_stream() -> list:
    stream = STREAMS["hand"]
    fusion = LateFusion(FusionConfig(**stream["config"]), temperatures=stream["temperatures"])
    return [fusion.update(hand_inputs(w)) for w in stream["windows"]]


def approx_dist(actual: dict[str, float] | None, expected_sparse: dict[str, float] | None) -> None:
    if expected_sparse is None:
        assert actual is None
        return
    assert list(actual) == list(LABELS)
    assert actual == pytest.approx(full(expected_sparse), abs=1e-12)


# --- calibration ------------------------------------------------------------------------------------------------


def test_calibration_identity_at_temperature_one():
    p = np.array([0.1, 0.05, 0.05, 0.5, 0.2, 0.05, 0.05])
    assert calibrate(p, 1.0) == pytest.approx(p, abs=1e-15)


def test_calibration_above_one_flattens_and_below_one_sharpens_keeping_order():
    p = np.array([0.1, 0.05, 0.05, 0.5, 0.2, 0.05, 0.05])
    flat, sharp = calibrate(p, 2.0), calibrate(p, 0.5)
    assert confidence(flat) < confidence(p) < confidence(sharp)
    assert list(np.argsort(flat, kind="stable")) == list(np.argsort(p, kind="stable"))
    assert flat.sum() == pytest.approx(1.0) and sharp.sum() == pytest.approx(1.0)
    # Hand check: 0.5^(1/2) / 0.1^(1/2) = sqrt(5) for the top-vs-angry ratio.
    assert flat[3] / flat[0] == pytest.approx(math.sqrt(5.0))
    assert calibrate(p, 1e6) == pytest.approx(np.full(7, 1 / 7), abs=1e-5)


def test_calibrating_probabilities_equals_softmax_of_scaled_logits():
    logits = np.array(STREAMS["logits"]["face_logits"])
    for t in (STREAMS["logits"]["temperature"], 0.7, 1.0, 3.5):
        assert calibrate(softmax(logits), t) == pytest.approx(softmax(logits / t), abs=1e-12)


def test_calibration_keeps_zeros_and_survives_tiny_probabilities():
    p = np.array([0.0, 1e-300, 0.0, 1.0 - 1e-9, 1e-9, 0.0, 0.0])
    q = calibrate(p, 0.25)
    assert np.isfinite(q).all() and q[0] == 0.0 and q.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        calibrate(p, 0.0)


def test_fusion_calibrates_each_modality_with_its_temperature():
    cfg = FusionConfig(temperatures={"speech": 0.5}, **OFF)
    fusion = LateFusion(cfg, temperatures={"face": 2.0, "speech": 9.0})
    assert fusion.temperatures == {"face": 2.0, "speech": 0.5, "text": 1.0}  # override beats manifest; text default
    p = np.array([0.1, 0.05, 0.05, 0.5, 0.2, 0.05, 0.05])
    out = fusion.update(WindowInputs(0, 2, face=p, faces=4, speech=p, text=p))
    assert list(out.modalities["face"].values()) == pytest.approx(calibrate(p, 2.0))
    assert list(out.modalities["speech"].values()) == pytest.approx(calibrate(p, 0.5))
    assert list(out.modalities["text"].values()) == pytest.approx(p)


def test_stacked_rows_are_calibrated_one_by_one_then_averaged():
    rows = softmax(np.array(STREAMS["logits"]["face_logits"]))
    fusion = LateFusion(FusionConfig(**OFF), temperatures={"speech": 2.0})
    out = fusion.update(WindowInputs(0, 2, speech=rows))
    assert out.counts["speech_segments"] == len(rows)
    assert list(out.modalities["speech"].values()) == pytest.approx(calibrate(rows, 2.0).mean(axis=0))


# --- the recorded hand-checkable stream -------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(STREAMS["hand"]["windows"])))
def test_hand_stream_window_matches_paper_arithmetic(index):
    out = run_hand_stream()[index]
    exp = STREAMS["hand"]["windows"][index]["expected"]
    approx_dist(out.raw_distribution, exp["raw"])
    approx_dist(out.distribution, exp["distribution"])
    assert out.dominant == exp["dominant"]
    assert out.valence == (None if exp["valence"] is None else pytest.approx(exp["valence"], abs=1e-4))
    assert out.arousal == (None if exp["arousal"] is None else pytest.approx(exp["arousal"], abs=1e-4))
    assert [m.value for m in out.contributed] == exp["contributed"]
    assert out.reset is exp["reset"]
    assert out.face_withheld is exp["face_withheld"]
    assert out.counts == exp["counts"]


def test_fused_windows_make_valid_emotion_events():
    for i, out in enumerate(run_hand_stream()):
        event = EmotionEvent(
            device_id="pi-1",
            site="s",
            room="r",
            seq=i,
            window_start_ms=int(out.start * 1000),
            window_end_ms=int(out.end * 1000),
            **out.to_dict(),
        )
        assert EmotionEvent.from_payload(event.to_payload()).distribution == event.distribution


def test_determinism_same_stream_same_numbers():
    first = [w.to_dict() for w in run_hand_stream()]
    second = [w.to_dict() for w in run_hand_stream()]
    assert json.dumps(first) == json.dumps(second)
    a, b = run_hand_stream(), run_hand_stream()
    assert [w.distribution for w in a] == [w.distribution for w in b]  # bit for bit, not approximately


# --- renormalisation, weights, confidence, evidence ------------------------------------------------------------


def test_missing_modality_drops_out_and_weights_renormalise():
    fusion = LateFusion(FusionConfig(half_life_s=0, **OFF))
    both = fusion.update(WindowInputs(0, 2, face=one_hot("happy"), faces=5, speech=one_hot("sad")))
    assert both.weights == pytest.approx({"face": 0.5, "speech": 0.5})
    assert both.distribution["happy"] == pytest.approx(0.5) and both.distribution["sad"] == pytest.approx(0.5)
    only_face = fusion.update(WindowInputs(2, 4, face=one_hot("happy"), faces=5, speech=None))
    assert only_face.weights == {"face": pytest.approx(1.0)}
    assert only_face.distribution["happy"] == pytest.approx(1.0)
    assert only_face.modalities["speech"] is None and only_face.contributed == (Modality.FACE,)
    empty_list = fusion.update(WindowInputs(4, 6, face=one_hot("happy"), faces=5, speech=[]))
    assert empty_list.contributed == (Modality.FACE,) and empty_list.counts["speech_segments"] == 0


def test_reliability_weights_mix_in_their_ratio_and_zero_ignores_a_modality():
    cfg = FusionConfig(half_life_s=0, weights={"face": 3.0, "speech": 1.0, "text": 0.0}, **OFF)
    out = LateFusion(cfg).update(
        WindowInputs(0, 2, face=one_hot("happy"), faces=5, speech=one_hot("sad"), text=one_hot("angry"))
    )
    assert out.distribution["happy"] == pytest.approx(0.75) and out.distribution["sad"] == pytest.approx(0.25)
    assert out.distribution["angry"] == 0.0
    assert out.contributed == (Modality.FACE, Modality.SPEECH)
    assert out.modalities["text"] is not None  # still reported, just not fused
    with pytest.raises(ValidationError, match="at least one modality"):
        FusionConfig(weights={"face": 0, "speech": 0, "text": 0})


@pytest.mark.parametrize("measure", ["entropy", "max_prob"])
def test_confidence_weighting_favours_the_confident_modality(measure):
    sure, unsure = one_hot("happy", 0.9), one_hot("sad", 0.3)
    floor = 0.1
    cfg = FusionConfig(half_life_s=0, confidence_measure=measure, confidence_floor=floor)
    out = LateFusion(cfg).update(WindowInputs(0, 2, face=sure, faces=5, speech=unsure))
    c_face = floor + (1 - floor) * confidence(np.array(list(sure.values())), measure)
    c_speech = floor + (1 - floor) * confidence(np.array(list(unsure.values())), measure)
    assert c_face > c_speech
    assert out.weights["face"] == pytest.approx(c_face / (c_face + c_speech))
    fused = (c_face * np.array(list(sure.values())) + c_speech * np.array(list(unsure.values()))) / (c_face + c_speech)
    assert list(out.distribution.values()) == pytest.approx(fused)
    plain = LateFusion(FusionConfig(half_life_s=0, **OFF)).update(WindowInputs(0, 2, face=sure, faces=5, speech=unsure))
    assert out.distribution["happy"] > plain.distribution["happy"]


def test_confidence_measures_on_known_distributions():
    uniform = np.full(7, 1 / 7)
    certain = np.eye(7)[3]
    for measure in ("entropy", "max_prob"):
        assert confidence(uniform, measure) == pytest.approx(0.0, abs=1e-12)
        assert confidence(certain, measure) == pytest.approx(1.0)
    half = np.array([0.5, 0.5, 0, 0, 0, 0, 0])
    assert confidence(half, "entropy") == pytest.approx(1 - math.log(2) / math.log(7))
    assert confidence(half, "max_prob") == pytest.approx((0.5 - 1 / 7) / (1 - 1 / 7))


def test_a_flat_modality_keeps_the_floor_weight():
    cfg = FusionConfig(half_life_s=0, confidence_floor=0.1)
    out = LateFusion(cfg).update(WindowInputs(0, 2, face=np.eye(7)[3], faces=5, speech=np.full(7, 1 / 7)))
    assert out.weights == pytest.approx({"face": 1 / 1.1, "speech": 0.1 / 1.1})


def test_evidence_weighting_saturates_with_count():
    assert evidence_factor(0, 5) == 0.0
    assert evidence_factor(5, 5) == 0.5
    assert evidence_factor(45, 5) == pytest.approx(0.9)
    assert evidence_factor(1000, 5) < 1.0
    cfg = FusionConfig(half_life_s=0, evidence_weighting=True, evidence_half_counts={"face": 5, "speech": 1}, **OFF)
    out = LateFusion(cfg).update(
        WindowInputs(0, 2, face=one_hot("happy"), faces=15, speech=[one_hot("sad")], speech_segments=1)
    )
    # face 15/(15+5) = 0.75, speech 1/(1+1) = 0.5 -> 0.6 : 0.4
    assert out.weights == pytest.approx({"face": 0.6, "speech": 0.4})


# --- smoothing and gaps -----------------------------------------------------------------------------------------


def test_after_one_half_life_the_old_value_has_half_weight():
    assert smoothing_alpha(6.0, 6.0) == pytest.approx(0.5)
    assert smoothing_alpha(12.0, 6.0) == pytest.approx(0.75)
    assert smoothing_alpha(2.0, 0.0) == 1.0
    cfg = FusionConfig(window_s=2.0, half_life_s=4.0, **OFF)
    assert cfg.alpha == pytest.approx(1 - 2**-0.5)
    fusion = LateFusion(cfg)
    fusion.update(WindowInputs(0, 2, text=one_hot("happy")))
    fusion.update(WindowInputs(2, 4, text=one_hot("sad")))
    out = fusion.update(WindowInputs(4, 6, text=one_hot("sad")))
    # Two 2 s windows = one 4 s half-life later, the first window's weight has halved.
    assert out.distribution["happy"] == pytest.approx(0.5)
    assert out.distribution["sad"] == pytest.approx(0.5)
    assert out.raw_distribution["sad"] == pytest.approx(1.0)


def test_gap_longer_than_n_half_lives_resets_and_shorter_does_not():
    cfg = FusionConfig(half_life_s=2.0, reset_after_half_lives=3.0, **OFF)
    fusion = LateFusion(cfg)
    fusion.update(WindowInputs(0, 2, text=one_hot("happy")))
    near = fusion.update(WindowInputs(6, 8, text=one_hot("sad")))  # dt 6 s = 3 half-lives: not beyond
    assert not near.reset and near.distribution["happy"] == pytest.approx(0.125)
    far = fusion.update(WindowInputs(12.5, 14.5, text=one_hot("sad")))  # dt 6.5 s
    assert far.reset and far.distribution["sad"] == pytest.approx(1.0)


def test_all_missing_emits_no_distribution_and_smoothing_resumes_from_kept_state():
    fusion = LateFusion(FusionConfig(half_life_s=2.0, **OFF))
    fusion.update(WindowInputs(0, 2, speech=one_hot("happy")))
    gap = fusion.update(WindowInputs(2, 4, faces=0))
    assert gap.distribution is None and gap.dominant is None and gap.valence is None and gap.arousal is None
    assert gap.contributed == () and gap.weights == {}
    assert gap.modalities == {"face": None, "speech": None, "text": None}
    nxt = fusion.update(WindowInputs(4, 6, speech=one_hot("sad")))
    # The state is 4 s (two half-lives) old: alpha 0.75, not restarted.
    assert not nxt.reset and nxt.distribution["happy"] == pytest.approx(0.25)


def test_windows_must_advance_and_reset_forgets():
    fusion = LateFusion(FusionConfig(**OFF))
    fusion.update(WindowInputs(0, 2, text=one_hot("happy")))
    with pytest.raises(ValueError, match="does not follow"):
        fusion.update(WindowInputs(0, 2, text=one_hot("happy")))
    with pytest.raises(ValueError, match="after its start"):
        fusion.update(WindowInputs(5, 5, text=one_hot("happy")))
    fusion.reset()
    assert fusion.update(WindowInputs(0, 2, text=one_hot("sad"))).reset


# --- privacy: minimum group size --------------------------------------------------------------------------------


@pytest.mark.parametrize(("faces", "withheld"), [(0, False), (1, True), (2, True), (3, False), (30, False)])
def test_face_distribution_withheld_below_min_faces_but_count_reported(faces, withheld):
    out = LateFusion(FusionConfig(min_faces=3, **OFF)).update(
        WindowInputs(0, 2, face=one_hot("happy") if faces else None, faces=faces, text=one_hot("sad"))
    )
    assert out.counts["faces"] == faces
    assert out.face_withheld is withheld
    assert (out.modalities["face"] is None) is (faces < 3)
    assert (Modality.FACE in out.contributed) is (faces >= 3)


def test_a_pooled_face_distribution_without_a_count_is_withheld():
    out = LateFusion(FusionConfig(**OFF)).update(WindowInputs(0, 2, face=one_hot("happy")))
    assert out.counts["faces"] == 1 and out.face_withheld and out.distribution is None


# --- valence and arousal ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_valence_arousal_of_a_certain_window_is_the_label_mapping(label):
    out = LateFusion(FusionConfig(**OFF)).update(WindowInputs(0, 2, text=np.eye(7)[LABELS.index(label)]))
    assert (out.valence, out.arousal) == pytest.approx(VALENCE_AROUSAL[label])


def test_valence_arousal_is_the_probability_weighted_mapping():
    out = LateFusion(FusionConfig(**OFF)).update(
        WindowInputs(0, 2, text={**dict.fromkeys(LABELS, 0.0), "happy": 0.25, "sad": 0.75})
    )
    assert out.valence == pytest.approx(0.25 * 0.8 + 0.75 * -0.7, abs=1e-4)
    assert out.arousal == pytest.approx(0.25 * 0.5 + 0.75 * -0.4, abs=1e-4)


# --- input validation and config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [0.5, 0.5],
        [0.1] * 6 + [-0.1],
        [float("nan")] * 7,
        [0.0] * 7,
        {"happy": 1.0},
        [[0.1] * 7, [0.1] * 6],
        "happy",
    ],
)
def test_bad_distributions_are_rejected_with_the_modality_named(bad):
    with pytest.raises(ValueError, match="speech"):
        LateFusion(FusionConfig()).update(WindowInputs(0, 2, speech=bad))


def test_rounded_inputs_are_renormalised():
    p = [0.1429, 0.1429, 0.1429, 0.1429, 0.1429, 0.1429, 0.1429]  # sums to 1.0003, as the pooler's rounding can
    out = LateFusion(FusionConfig(**OFF)).update(WindowInputs(0, 2, text=p))
    assert sum(out.distribution.values()) == pytest.approx(1.0, abs=1e-12)


def test_config_is_strict_and_documented():
    with pytest.raises(ValidationError):
        FusionConfig(window=2.0)
    with pytest.raises(ValidationError):
        FusionConfig(weights={"face": 1, "audio": 1})
    with pytest.raises(ValidationError):
        FusionConfig(temperatures={"face": 0})
    with pytest.raises(ValidationError):
        FusionConfig(half_life_s=-1)
    for name, fld in FusionConfig.model_fields.items():
        assert fld.description, name
