"""Text training: GoEmotions as the 7 labels, the Keras MiniLM against sentence-transformers' published
similarities, length buckets, class weights, dev-fitted offsets and a resumable smoke run."""

import json

import numpy as np
import pytest

from converter import emoevent, goemotions
from converter.export_text import bagged_offsets, fit_offsets
from converter.train_text import batches, class_weights
from device.contract.labels import LABELS


def test_goemotions_rows_map_to_canonical_labels_and_multi_label_targets_share_their_mass():
    train = goemotions.load("train")
    assert len(train.texts) == 43410 and train.targets.shape == (43410, len(LABELS))
    assert np.allclose(train.targets.sum(axis=1), 1.0)
    assert int((~train.single).sum()) == 3855
    multi = train.targets[~train.single][0]
    assert sorted(set(np.round(multi[multi > 0], 4))) in ([0.5], [0.3333], [0.25])
    assert LABELS[train.labels()[2]] == "angry"  # "WHY THE FUCK IS BAYLESS ISOING": anger


def test_emoevent_english_rows_with_one_of_six_emotions_become_single_label_targets():
    train = emoevent.load("train")
    counts = dict(zip(LABELS, train.targets.sum(axis=0).astype(int).tolist(), strict=True))
    assert counts == {"angry": 274, "disgust": 536, "fear": 106, "happy": 1427, "neutral": 0, "sad": 291,
                      "surprise": 165}  # the 2,313 "others" rows are left out
    assert train.single.all() and len(train.texts) == 2799


def test_emoevent_refuses_an_unknown_emotion_and_names_the_line(tmp_path):
    folder = tmp_path / "emoevent" / "en"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("id\tevent\ttweet\toffensive\temotion\n"
                                      "1\tX\tso gross\tNO\tdisgust\n2\tX\tmeh\tNO\tothers\n3\tX\thm\tNO\tboredom\n")
    with pytest.raises(ValueError, match=r"train.tsv:4: unknown emotion 'boredom'"):
        emoevent.load("train", root=tmp_path)


def test_length_buckets_cover_every_row_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, 1000)
    plan = batches(lengths, 32, rng)
    rows = np.concatenate(plan)
    assert sorted(rows.tolist()) == list(range(1000))
    assert np.median([np.ptp(lengths[b]) for b in plan]) <= 4


def test_class_weights_favour_rare_classes_and_average_one():
    targets = np.eye(7, dtype=np.float32)[np.r_[np.zeros(900, int), np.arange(1, 7).repeat(20)]]
    w = class_weights(targets, 0.5)
    assert w[1] > w[0] and np.isclose((targets @ w).mean(), 1.0)


def neutral_heavy(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the logits of a noisy model that over-predicts neutral."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, rows)
    logits = rng.normal(size=(rows, 7)).astype(np.float32)
    logits[np.arange(rows), y] += 1.0
    logits[:, 4] += 1.5
    return y, logits


def test_offsets_fitted_on_one_split_raise_its_macro_f1():
    from converter.metrics import accuracy_and_macro_f1

    y, logits = neutral_heavy(1, 2000)
    before = accuracy_and_macro_f1(y, logits.argmax(1))[1]
    after = accuracy_and_macro_f1(y, (logits + fit_offsets(y, logits, rounds=1)).argmax(1))[1]
    assert after > before + 0.05


def test_bagged_offsets_average_searches_on_resamples_and_are_reproducible():
    from converter.metrics import accuracy_and_macro_f1

    y, logits = neutral_heavy(2, 600)
    offsets = bagged_offsets(y, logits, bags=4)
    assert np.array_equal(offsets, bagged_offsets(y, logits, bags=4))
    assert offsets[4] == offsets.min()  # the over-predicted class is pulled down
    assert len(set(np.round(offsets, 4))) > 3  # means of grid points, not grid points
    before = accuracy_and_macro_f1(y, logits.argmax(1))[1]
    assert accuracy_and_macro_f1(y, (logits + offsets).argmax(1))[1] > before + 0.05


def test_cross_calibrated_f1_scores_offsets_on_rows_they_were_not_fitted_on():
    from converter.metrics import accuracy_and_macro_f1
    from converter.text_soup import cross_calibrated_f1

    y, logits = neutral_heavy(3, 1200)
    before = accuracy_and_macro_f1(y, logits.argmax(1))[1]
    in_sample = accuracy_and_macro_f1(y, (logits + fit_offsets(y, logits, rounds=1)).argmax(1))[1]
    held_out, spread = cross_calibrated_f1(y, logits, halvings=1, bags=3)
    assert before < held_out < in_sample + 0.01 and spread < 0.05


def test_a_soup_ingredient_is_a_weights_file_or_a_runs_best_epoch(tmp_path):
    import json

    from converter.text_soup import weight_file

    (tmp_path / "history.json").write_text(json.dumps({"best": {"epoch": 2}}))
    assert weight_file(tmp_path) == tmp_path / "epoch2.weights.h5"
    assert weight_file(tmp_path / "x.weights.h5") == tmp_path / "x.weights.h5"


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("tensorflow")
    from converter.pretrained import MINILM, model_folder
    from converter.text_net import build_text_model, load_minilm, read_safetensors

    folder = model_folder(MINILM)
    model = build_text_model()
    load_minilm(model, read_safetensors(folder / "model.safetensors"))
    return model, folder


def test_keras_minilm_reproduces_the_published_sentence_similarities(minilm):
    """sentence-transformers' README: cosine similarities of these three sentences' embeddings are
    0.6660 (1, 2), 0.1046 (1, 3) and 0.1411 (2, 3) with all-MiniLM-L6-v2."""
    import keras

    from device.models.text_tokens import encode, load_tokenizer

    model, folder = minilm
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    ids, mask = encode(tokenizer, ["The weather is lovely today.", "It's so sunny outside!",
                                   "He drove to the stadium."])
    pooled = keras.Model(model.inputs, model.get_layer("mean_pool").output)([ids, mask])
    e = np.asarray(pooled, np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sims = e @ e.T
    assert sims[0, 1] == pytest.approx(0.6660, abs=2e-3)
    assert sims[0, 2] == pytest.approx(0.1046, abs=2e-3)
    assert sims[1, 2] == pytest.approx(0.1411, abs=2e-3)


def test_a_smoke_run_with_extra_tweets_and_a_teacher_trains_saves_and_resumes_as_finished(tmp_path):
    pytest.importorskip("tensorflow")
    from converter.train_text import RECIPE, train

    teacher = tmp_path / "teacher.npz"
    np.savez(teacher, log_probs=np.log(np.full((43410, 7), 1 / 7, np.float32)), sources="[]")
    recipe = dict(RECIPE, batch_size=8, checkpoint_every=1, emoevent=True, teacher=str(teacher), distill=0.5)
    state = train(tmp_path / "run", recipe, threads=1, limit=8, bf16=False)
    assert [r["epoch"] for r in state["history"]] == [1]
    assert state["rows"] == 16  # 8 GoEmotions rows and 8 tweets
    assert (tmp_path / "run" / "epoch1.weights.h5").is_file()
    again = train(tmp_path / "run", recipe, threads=1, limit=8, bf16=False)
    assert again["history"] == state["history"]  # finished: nothing trained twice


def test_distilling_without_a_teacher_file_is_refused(tmp_path):
    pytest.importorskip("tensorflow")
    from converter.train_text import RECIPE, train

    with pytest.raises(ValueError, match="needs a teacher file"):
        train(tmp_path, dict(RECIPE, distill=0.5), limit=8, bf16=False)


def test_a_teacher_for_another_number_of_rows_is_refused(tmp_path):
    from converter.text_teacher import load_teacher

    np.savez(tmp_path / "t.npz", log_probs=np.zeros((5, 7), np.float32), sources="[]")
    with pytest.raises(ValueError, match="a teacher for 5 rows, the training split has 9"):
        load_teacher(tmp_path / "t.npz", 9)


def committed_text_report() -> dict:
    """The committed text model's export report (models_tflite/cards/text_emotion_metrics.json)."""
    from device.model_store import models_dir

    return json.loads((models_dir() / "cards" / "text_emotion_metrics.json").read_text())


def test_the_card_describes_a_soup_a_second_stage_and_a_teacher(tmp_path):
    from converter.text_card import write_text_card

    report = committed_text_report()
    report["training"]["history"] = [{"epoch": 1, "dev_accuracy": 0.7, "dev_macro_f1": 0.63}]  # a soup's record
    report["training"]["recipe"] = {"soup": ["/r/run_a/epoch1.weights.h5", "/r/run_b/epoch1.weights.h5"],
                                    "distill": 0.7, "teacher": "/r/teacher.npz"}
    report["training"]["init_from"] = {"weights": "/r/run_a/epoch1.weights.h5"}
    report["training"]["teacher_sources"] = ["/r/F/text_emotion_int8.tflite", "/r/M/epoch1.weights.h5",
                                             "/r/M/epoch1.weights.h5"]
    report["dev"]["bags"] = 32
    write_text_card(report, tmp_path / "card.md")
    card = (tmp_path / "card.md").read_text()
    assert "| 1 | - | 0.7000 | 0.6300 | - |" in card
    assert "soup, `converter/text_soup.py`) of 2 runs" in card and "`run_b/epoch1.weights.h5`" in card
    assert "started from `/r/run_a/epoch1.weights.h5`" in card
    assert "0.30 x the labels' cross-entropy plus 0.70" in card and "`teacher.npz`" in card
    assert "of `F/text_emotion_int8.tflite`, `M/epoch1.weights.h5` (counted 2 times)." in card
    assert "the mean over 32 bootstrap resamples of dev" in card
    assert "Apache-2.0 (all-MiniLM-L6-v2 and GoEmotions" in card
    report["training"]["recipe"] = {"emoevent": True}
    write_text_card(report, tmp_path / "card.md")
    assert "research and teaching only" in (tmp_path / "card.md").read_text()


def test_the_manifest_says_what_the_committed_text_model_learned_from():
    from converter.export_text import _licence, training_data
    from device.model_store import model_entry

    recipe = committed_text_report()["training"]["recipe"]
    entry = model_entry("text_emotion_int8").meta
    assert entry["training_data"] == training_data(recipe) and entry["licence"] == _licence(recipe)
    assert ("distilled" in entry["training_data"]) == bool(recipe.get("distill"))
    assert "EmoEvent" not in entry["training_data"] + entry["licence"]  # the shipped weights are Apache-2.0


def test_training_data_names_the_extra_tweets_and_their_licence():
    from converter.export_text import _licence, training_data

    recipe = {"emoevent": True, "distill": 0.0}
    assert "EmoEvent" in training_data(recipe) and "non-commercial" in _licence(recipe)
    assert "distilled" not in training_data(recipe)


def test_an_exported_model_teaches_its_logits_without_the_dev_offsets(tmp_path, monkeypatch):
    from converter import text_teacher
    from device.model_store import model_entry
    from device.models.text_emotion import TextEmotionModel

    texts = ["I am so happy for you", "that is disgusting", "Kids are talking by the door", "why?", "oh no"]
    split = goemotions.Split(texts, np.eye(7, dtype=np.float32)[[3, 1, 4, 6, 2]], np.ones(5, bool))
    monkeypatch.setattr(text_teacher.goemotions, "load", lambda name: split)
    model = model_entry("text_emotion_int8").path
    report = text_teacher.teach([model], tmp_path / "t.npz", threads=1)
    offsets = committed_text_report()["dev"]["offsets"]
    raw = TextEmotionModel.load().logits_batch(texts) - np.asarray(offsets, np.float32)
    taught = text_teacher.load_teacher(tmp_path / "t.npz", 5)
    assert report["sources"] == [str(model)]
    np.testing.assert_allclose(taught, text_teacher.log_softmax(raw), atol=1e-4)  # batches pad differently


def test_an_exported_model_without_its_metrics_is_refused(tmp_path):
    from converter.text_teacher import exported_logits

    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(ValueError, match="dev offsets are not readable"):
        exported_logits(tmp_path / "m.tflite", ["hi"])


def test_an_item_listed_twice_weighs_twice_and_is_run_once(tmp_path, monkeypatch):
    from converter import text_teacher

    split = goemotions.Split(["a", "b"], np.eye(7, dtype=np.float32)[[3, 1]], np.ones(2, bool))
    monkeypatch.setattr(text_teacher.goemotions, "load", lambda name: split)
    logits = {"f.tflite": np.zeros((2, 7), np.float32), "m.tflite": np.eye(7, dtype=np.float32)[[0, 1]] * 3}
    calls = []

    def fake(model, texts, threads):
        calls.append(model.name)
        return logits[model.name]

    monkeypatch.setattr(text_teacher, "exported_logits", fake)
    items = [tmp_path / "f.tflite", tmp_path / "m.tflite", tmp_path / "m.tflite"]
    report = text_teacher.teach(items, tmp_path / "t.npz", threads=1)
    assert sorted(calls) == ["f.tflite", "m.tflite"] and len(report["sources"]) == 3
    expected = (text_teacher.log_softmax(logits["f.tflite"]) + 2 * text_teacher.log_softmax(logits["m.tflite"])) / 3
    np.testing.assert_allclose(text_teacher.load_teacher(tmp_path / "t.npz", 2), expected, atol=1e-6)
