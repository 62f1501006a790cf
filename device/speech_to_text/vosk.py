"""Vosk (Kaldi): the streaming recogniser, with partial results while audio arrives and a final at each pause.

The model is a Vosk model directory (am/final.mdl, conf/, graph/ ...) named in config; `make vosk-model`
installs one from a local archive or a URL (scripts/install_vosk_model.py). `accept` feeds a stream chunk by
chunk and yields partials and finals as they come; `transcribe` decodes one whole segment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.speech_to_text.base import SAMPLE_RATE, Transcriber, TranscriberError, check_samples, to_pcm16

# Files every Kaldi model that Vosk loads has; a folder without them is not a model.
MODEL_MARKERS = ("am/final.mdl", "conf/model.conf")
INSTALL_HINT = "install one with `make vosk-model VOSK_MODEL=<archive or URL>`"
CHUNK_SAMPLES = 4000  # 0.25 s: how `transcribe` feeds a whole segment, so partials arrive as they would live


@dataclass(frozen=True)
class Hypothesis:
    """One streaming result: the words so far (partial) or of a finished utterance (final)."""

    text: str
    final: bool

    def __repr__(self) -> str:  # never shows the words
        return f"Hypothesis(words={len(self.text.split())}, final={self.final})"


def check_model_dir(path: Path | str | None) -> Path:
    """Return the directory if it holds a Vosk model; else raise TranscriberError saying how to install one."""
    if path is None:
        raise TranscriberError(f"no Vosk model directory configured (vosk_model_dir); {INSTALL_HINT}")
    folder = Path(path)
    if not folder.is_dir():
        raise TranscriberError(f"Vosk model directory {folder} does not exist; {INSTALL_HINT}")
    missing = [m for m in MODEL_MARKERS if not (folder / m).is_file()]
    if missing:
        raise TranscriberError(f"{folder} holds no Vosk model (missing {', '.join(missing)}); {INSTALL_HINT}")
    return folder


class VoskTranscriber(Transcriber):
    """Kaldi's online decoder through Vosk; the model is loaded once and shared by every recogniser."""

    name = "vosk"

    def __init__(self, model_dir: Path | str | None, threads: int = 1):
        try:
            import vosk
        except ImportError as exc:
            raise TranscriberError(f"vosk is not installed (pip install vosk): {exc}") from exc
        folder = check_model_dir(model_dir)
        vosk.SetLogLevel(-1)  # Kaldi's own log lines go to stderr otherwise
        try:
            self._model = vosk.Model(str(folder))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise TranscriberError(f"Vosk cannot load the model in {folder} (corrupt or incomplete?): {exc}") from exc
        self._vosk = vosk
        self.model_dir = folder
        self._recognizer = self._new_recognizer()

    def _new_recognizer(self):
        rec = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
        rec.SetWords(False)
        return rec

    def accept(self, samples: np.ndarray) -> Iterator[Hypothesis]:
        """Feed the next chunk of a stream; yield a final when an utterance ended in it, else the partial."""
        check_samples(samples)
        if self._recognizer.AcceptWaveform(to_pcm16(samples)):
            yield Hypothesis(json.loads(self._recognizer.Result()).get("text", ""), True)
        else:
            partial = json.loads(self._recognizer.PartialResult()).get("partial", "")
            if partial:
                yield Hypothesis(partial, False)

    def finish(self) -> Hypothesis:
        """End the stream: the final result of what is left, and a fresh recogniser for the next stream."""
        text = json.loads(self._recognizer.FinalResult()).get("text", "")
        self._recognizer = self._new_recognizer()
        return Hypothesis(text, True)

    def _decode(self, samples: np.ndarray) -> tuple[str, list[str]]:
        self._recognizer = self._new_recognizer()  # a segment never continues an earlier stream
        finals: list[str] = []
        partials: list[str] = []
        for i in range(0, len(samples), CHUNK_SAMPLES):
            for hyp in self.accept(samples[i : i + CHUNK_SAMPLES]):
                (finals if hyp.final else partials).append(hyp.text)
        finals.append(self.finish().text)
        return " ".join(t for t in finals if t), partials
