"""Settings of the speech recogniser; the device config embeds them in its `text:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from device.common.config_loader import StrictModel

Backend = Literal["whisper", "vosk", "pocketsphinx"]


class TranscriberSettings(StrictModel):
    """Which recognisers to try, in order, and how each is set up."""

    transcribers: list[Backend] = Field(
        default_factory=lambda: ["whisper", "pocketsphinx"],
        min_length=1,
        description="Recognisers tried in this order; the first that loads is used, and each one that cannot be "
        "built (library or model missing) is reported once and skipped. whisper: faster-whisper with Whisper "
        "tiny.en from models_tflite/ (the most accurate, docs/speech_to_text.md); vosk: Kaldi's streaming "
        "recogniser, needs vosk_model_dir; pocketsphinx: CMU pocketsphinx with its bundled en-us model (the "
        "smallest, the least accurate).",
    )
    whisper_model: str = Field(
        "whisper_tiny_en", min_length=1, description="whisper: the model's name in models_tflite/manifest.json."
    )
    whisper_beam_size: int = Field(
        1, ge=1, le=10, description="whisper: 1 decodes greedily (the default, the cheapest); more runs beam search."
    )
    vosk_model_dir: Path | None = Field(
        None,
        description="vosk: the Vosk model directory (am/final.mdl, conf/, graph/); `make vosk-model` installs one "
        "into /var/lib/aula/vosk-model by default. None leaves vosk out.",
    )
    threads: int = Field(1, ge=1, le=8, description="CPU threads each recogniser may use.")

    @field_validator("transcribers")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name each recogniser at most once")
        return value
