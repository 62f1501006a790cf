"""Speech to text on the device: Whisper, Vosk or pocketsphinx behind one `Transcriber` interface.

`open_transcriber(settings)` tries the configured recognisers in order and returns the first that loads; each
that cannot be built is logged once, with the reason. Transcripts stay in memory: nothing here logs or writes
the words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from device.speech_to_text.base import SAMPLE_RATE, Transcriber, TranscriberError, Transcript
from device.speech_to_text.settings import TranscriberSettings

__all__ = [
    "SAMPLE_RATE",
    "Opened",
    "Transcriber",
    "TranscriberError",
    "TranscriberSettings",
    "Transcript",
    "build_transcriber",
    "open_transcriber",
]

logger = logging.getLogger(__name__)
_reported: set[tuple[str, str]] = set()


def build_transcriber(name: str, settings: TranscriberSettings, shared: bool = False) -> Transcriber:
    """Build one recogniser by name; TranscriberError when its library or model is missing.

    `shared`: a speech-emotion head will run Whisper's encoder through the recogniser's model too (whisper only).
    """
    if name == "whisper":
        from device.speech_to_text.whisper import WhisperTranscriber

        return WhisperTranscriber(settings.whisper_model, settings.whisper_beam_size, settings.threads,
                                  workers=2 if shared else 1)
    if name == "vosk":
        from device.speech_to_text.vosk import VoskTranscriber

        return VoskTranscriber(settings.vosk_model_dir, settings.threads)
    if name == "pocketsphinx":
        from device.speech_to_text.pocketsphinx import PocketsphinxTranscriber

        return PocketsphinxTranscriber()
    raise TranscriberError(f"unknown recogniser '{name}' (known: whisper, vosk, pocketsphinx)")


@dataclass
class Opened:
    """The recogniser that loaded (None if none did) and why each one before it could not be built."""

    transcriber: Transcriber | None
    skipped: dict[str, str] = field(default_factory=dict)


def open_transcriber(settings: TranscriberSettings | None = None, shared: bool = False) -> Opened:
    """Try `settings.transcribers` in order; return the first that loads and the reasons of those skipped.

    `shared` as for `build_transcriber`."""
    settings = settings or TranscriberSettings()
    skipped: dict[str, str] = {}
    for name in settings.transcribers:
        try:
            transcriber = build_transcriber(name, settings, shared)
        except TranscriberError as exc:
            skipped[name] = str(exc)
            if (name, str(exc)) not in _reported:  # once per process, however often the device retries
                _reported.add((name, str(exc)))
                logger.warning("speech recogniser %s is unavailable, trying the next: %s", name, exc)
            continue
        logger.info("speech recogniser: %s", transcriber.name)
        return Opened(transcriber, skipped)
    if skipped and ("*", ",".join(skipped)) not in _reported:
        _reported.add(("*", ",".join(skipped)))
        logger.warning("no speech recogniser could be loaded (%s); speech is not transcribed", ", ".join(skipped))
    return Opened(None, skipped)
