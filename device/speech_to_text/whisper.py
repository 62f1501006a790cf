"""faster-whisper (CTranslate2) with Whisper tiny.en from models_tflite/, int8 on one thread.

Each call decodes one voiced segment that the device's voice detector already cut, so faster-whisper's own
VAD filter stays off; Whisper pads every call to 30 s of audio, which is why the caller sends segments, not a
fixed stream. Decoding is greedy at temperature 0 by default (no temperature fallback, so the cost of a segment
is bounded); a beam size above 1 turns on beam search.
"""

from __future__ import annotations

import logging

import numpy as np

from device.errors import ModelError
from device.heap_trim import trim
from device.speech_to_text.base import Transcriber, TranscriberError

# faster-whisper logs "Processing audio with duration ..." at INFO for every call; it never logs the words.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class WhisperTranscriber(Transcriber):
    """Whisper through faster-whisper; the model named in the manifest is verified and loaded once."""

    name = "whisper"

    def __init__(self, model: str = "whisper_tiny_en", beam_size: int = 1, threads: int = 1,
                 language: str = "en", folder=None, workers: int = 1):
        from device.lazy_av import defer_av

        defer_av()
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise TranscriberError(f"faster-whisper is not installed (pip install faster-whisper): {exc}") from exc
        from device.model_store import model_entry

        if beam_size < 1:
            raise TranscriberError(f"beam size must be 1 or more, got {beam_size}")
        if workers not in (1, 2):
            raise TranscriberError(f"workers must be 1 or 2, got {workers}")
        try:
            entry = model_entry(model, folder)
            entry.verify()
        except ModelError as exc:
            raise TranscriberError(str(exc)) from exc
        try:
            self._model = WhisperModel(str(entry.path.parent), device="cpu", compute_type="int8",
                                       cpu_threads=threads, num_workers=workers, local_files_only=True)
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for a folder it cannot read
            raise TranscriberError(f"faster-whisper cannot load {entry.path.parent}: {exc}") from exc
        from device.models.whisper_encoder import share_loaded

        # A speech-emotion head on the encoder's output uses this model too, from the audio thread (`workers=2`,
        # which the service asks for then). Two CTranslate2 workers share the weights and let its 2 s windows run
        # while a segment is being decoded; with one, each window waited for the decoding in progress (about 470 ms
        # per window instead of 40). A second worker's buffers cost about 35 MiB of RSS, so it is made only for
        # such a head: the default head takes the encoder's layers from its own numpy copy
        # (device/models/whisper_layers.py) and never calls this model.
        share_loaded(entry.path.parent, self._model.model)
        self.model_name = model
        self.beam_size = beam_size
        self.language = language

    def _decode(self, samples: np.ndarray) -> tuple[str, list[str]]:
        segments, _ = self._model.transcribe(
            samples, language=self.language, beam_size=self.beam_size, temperature=0.0, vad_filter=False,
            without_timestamps=True, condition_on_previous_text=False,
        )
        text = " ".join(s.text.strip() for s in segments)
        trim()  # the 30 s window's buffers, freed by now, back to the kernel (device/heap_trim.py)
        return text, []
