"""The shared event schema: round trip, and clear reasons for malformed payloads."""

import json

import pytest

from device.contract import MAX_PAYLOAD_BYTES, EmotionEvent, SchemaError, decode_json, schema, valence_arousal

DIST = {"angry": 0.1, "disgust": 0.0, "fear": 0.1, "happy": 0.5, "neutral": 0.2, "sad": 0.05, "surprise": 0.05}


def _event(**kw) -> EmotionEvent:
    base = dict(device_id="pi-1", site="s", room="r", seq=1, window_start_ms=1_000, window_end_ms=3_000,
                distribution=DIST, dominant="happy", valence=0.3, arousal=0.2, modalities={"face": DIST},
                counts={"faces": 4})
    base.update(kw)
    return EmotionEvent(**base)


def test_round_trip_keeps_every_field():
    e = _event()
    again = EmotionEvent.from_payload(e.to_payload())
    assert again == e and json.loads(e.to_payload())["type"] == "emotion_window"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 16000, "nests too deeply"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
        (b'{"valence": NaN}', "NaN is not allowed|not JSON"),
        (b'{"valence": Infinity}', "Infinity is not allowed|not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b"[1, 2]", "JSON object"),
    ],
)
@pytest.mark.parametrize("decoder", ["orjson", "stdlib"])
def test_malformed_payloads_get_a_reason(payload, reason, decoder, monkeypatch):
    if decoder == "stdlib":
        monkeypatch.setattr(schema, "_orjson", None)
    else:
        assert schema._orjson is not None, "orjson is a server dependency"
    with pytest.raises(SchemaError, match=reason):
        EmotionEvent.from_dict(decode_json(payload))


@pytest.mark.parametrize("decoder", ["orjson", "stdlib"])
def test_a_number_that_overflows_is_refused(decoder, monkeypatch):
    if decoder == "stdlib":
        monkeypatch.setattr(schema, "_orjson", None)
    data = json.loads(_event().to_payload())
    data["valence"] = "@"
    payload = json.dumps(data).replace('"@"', "1e999").encode()
    with pytest.raises(SchemaError, match=r"valence|not JSON"):
        EmotionEvent.from_dict(decode_json(payload))


@pytest.mark.parametrize("decoder", ["orjson", "stdlib"])
def test_both_decoders_read_an_event_alike(decoder, monkeypatch):
    if decoder == "stdlib":
        monkeypatch.setattr(schema, "_orjson", None)
    e = _event()
    assert EmotionEvent.from_dict(decode_json(e.to_payload())) == e
    assert decode_json(e.to_payload().decode()) == json.loads(e.to_payload())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"seq": -1}, "seq"),
        ({"valence": 2.0}, "valence"),
        ({"dominant": "bored"}, "dominant"),
        ({"distribution": {**DIST, "happy": 0.9}}, "sums to"),
        ({"device_id": "a/b"}, "device_id"),
        ({"window_end_ms": 1_000}, "window_end_ms"),
    ],
)
def test_out_of_range_fields_are_named(change, reason):
    data = {**_event().to_dict(), **change}
    with pytest.raises(SchemaError, match=reason):
        EmotionEvent.from_dict(data)


def test_valence_arousal_of_pure_labels():
    assert valence_arousal({**dict.fromkeys(DIST, 0.0), "happy": 1.0}) == (0.8, 0.5)
    assert valence_arousal({**dict.fromkeys(DIST, 0.0), "neutral": 1.0}) == (0.0, 0.0)
