#!/usr/bin/env python3
"""Install a Vosk model directory from a .zip or .tar(.gz) archive, a local path or a URL (`make vosk-model`).

    python3 scripts/install_vosk_model.py ARCHIVE_OR_URL [TARGET_DIR]    (default /var/lib/aula/vosk-model)

The archive is unpacked next to the target, and must hold a Kaldi model that Vosk loads (am/final.mdl and
conf/model.conf, at its top or in one folder); anything else is refused and the target is left as it was. The
new model then takes the target's place by rename (the old one is moved aside first and removed after), so
a reader sees the old model or the new one, never half of either. The archive's sha256 is kept in the target
as .archive-sha256: installing the same archive again changes nothing. Standard library only, so it runs
before `make setup`.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

DEFAULT_TARGET = Path("/var/lib/aula/vosk-model")
MARKERS = ("am/final.mdl", "conf/model.conf")
STAMP = ".archive-sha256"


class InstallError(Exception):
    """The archive cannot be fetched or unpacked, or holds no Vosk model."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(source: str, folder: Path) -> Path:
    """Return a local path to the archive, downloading a URL into `folder` first."""
    if "://" not in source:
        path = Path(source)
        if not path.is_file():
            raise InstallError(f"archive {path} does not exist (give a .zip or .tar.gz Vosk model, or its URL)")
        return path
    name = source.rstrip("/").rsplit("/", 1)[-1] or "model.zip"
    path = folder / name
    print(f"downloading {source}", file=sys.stderr)
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise InstallError(f"cannot download {source}: {exc}") from exc
    return path


def unpack(archive: Path, into: Path) -> None:
    """Unpack a zip or tar archive, refusing members that would land outside `into`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (into / member).resolve().is_relative_to(into.resolve()):
                    raise InstallError(f"{archive}: member {member!r} would be written outside the model folder")
            zf.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(into, filter="data")  # refuses absolute paths, .. and links leaving the folder
            except tarfile.FilterError as exc:
                raise InstallError(f"{archive}: unsafe member refused ({exc})") from exc
    else:
        raise InstallError(f"{archive} is neither a zip nor a tar archive")


def model_root(folder: Path) -> Path:
    """The folder (the top, or its only subfolder) that holds the model files; InstallError if none does."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    for candidate in candidates:
        if all((candidate / m).is_file() for m in MARKERS):
            return candidate
    raise InstallError(f"the archive holds no Vosk model: no folder with {' and '.join(MARKERS)} at its top "
                       "or one level down")


def install(source: str, target: Path) -> bool:
    """Install the model into `target`; return False when that very archive was installed there already."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        archive = fetch(source, work)
        digest = sha256_of(archive)
        stamp = target / STAMP
        if stamp.is_file() and stamp.read_text().strip() == digest and all((target / m).is_file() for m in MARKERS):
            return False
        unpacked = work / "unpacked"
        unpacked.mkdir()
        unpack(archive, unpacked)
        root = model_root(unpacked)
        (root / STAMP).write_text(digest + "\n")
        # Same filesystem (the temporary folder is beside the target), so both renames are atomic.
        old = work / "old"
        if target.exists() or target.is_symlink():
            target.rename(old)
        root.rename(target)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a Vosk model archive (.zip, .tar, .tar.gz), as a path or an http(s) URL")
    parser.add_argument("target", nargs="?", type=Path, default=DEFAULT_TARGET,
                        help=f"model directory to create or replace (default {DEFAULT_TARGET})")
    args = parser.parse_args(argv)
    try:
        changed = install(args.source, args.target)
    except (InstallError, OSError) as exc:
        print(f"vosk-model: {exc}", file=sys.stderr)
        return 1
    print(f"vosk-model: {'installed' if changed else 'already installed'} in {args.target}; "
          f"set text.recogniser.vosk_model_dir to it in the device config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
