"""pocketsphinx 5.x with its bundled US English model: the smallest fallback, no model files of ours."""

from __future__ import annotations

import numpy as np

from device.speech_to_text.base import SAMPLE_RATE, Transcriber, TranscriberError, to_pcm16


class PocketsphinxTranscriber(Transcriber):
    """CMU pocketsphinx's decoder with the en-us acoustic model, dictionary and language model in its wheel."""

    name = "pocketsphinx"

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise TranscriberError(f"pocketsphinx is not installed (pip install pocketsphinx): {exc}") from exc
        try:
            # loglevel FATAL: it otherwise writes hundreds of set-up lines to stderr.
            self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        except Exception as exc:  # RuntimeError when the bundled model is missing or unreadable
            raise TranscriberError(f"pocketsphinx cannot load its bundled en-us model: {exc}") from exc

    def _decode(self, samples: np.ndarray) -> tuple[str, list[str]]:
        self._decoder.start_utt()
        self._decoder.process_raw(to_pcm16(samples), full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return (hyp.hypstr if hyp is not None else ""), []
