"""scripts/install_vosk_model.py (`make vosk-model`): archives in, a Vosk model directory out, atomically."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install_vosk_model.py"
spec = importlib.util.spec_from_file_location("install_vosk_model", SCRIPT)
installer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(installer)

MODEL = {"am/final.mdl": b"acoustic", "conf/model.conf": b"--min-active=200\n", "graph/HCLr.fst": b"graph"}


def make_zip(path: Path, files: dict[str, bytes], top: str = "vosk-model-small-xx-0.1") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return path


def make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["zip", "zip-flat", "tgz"])
def test_installs_a_model_and_again_changes_nothing(tmp_path, kind):
    if kind == "tgz":
        archive = make_tgz(tmp_path / "m.tar.gz", MODEL)
    else:
        archive = make_zip(tmp_path / "m.zip", MODEL, top="" if kind == "zip-flat" else "vosk-model-small-xx-0.1")
    target = tmp_path / "lib" / "vosk-model"
    assert installer.install(str(archive), target) is True
    assert (target / "am" / "final.mdl").read_bytes() == b"acoustic"
    assert (target / "graph" / "HCLr.fst").is_file()
    mtime = (target / "am" / "final.mdl").stat().st_mtime_ns
    assert installer.install(str(archive), target) is False
    assert (target / "am" / "final.mdl").stat().st_mtime_ns == mtime
    assert [p.name for p in target.parent.iterdir()] == ["vosk-model"]  # no temporary folder left behind


def test_a_new_archive_replaces_the_old_model_whole(tmp_path):
    target = tmp_path / "vosk-model"
    installer.install(str(make_zip(tmp_path / "a.zip", {**MODEL, "old-only.txt": b"x"})), target)
    installer.install(str(make_zip(tmp_path / "b.zip", {**MODEL, "am/final.mdl": b"new"})), target)
    assert (target / "am" / "final.mdl").read_bytes() == b"new"
    assert not (target / "old-only.txt").exists()


def test_refuses_an_archive_without_a_model_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "vosk-model"
    installer.install(str(make_zip(tmp_path / "good.zip", MODEL)), target)
    bad = make_zip(tmp_path / "bad.zip", {"README": b"not a model", "conf/model.conf": b""})
    with pytest.raises(installer.InstallError, match="holds no Vosk model"):
        installer.install(str(bad), target)
    assert (target / "am" / "final.mdl").read_bytes() == b"acoustic"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "good.zip", "vosk-model"]


def test_refuses_members_outside_the_folder(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", b"x")
    with pytest.raises(installer.InstallError, match="outside"):
        installer.install(str(evil), tmp_path / "lib" / "vosk-model")
    assert not (tmp_path / "escaped.txt").exists()


def test_command_line_errors_are_clear(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)

    missing = run(str(tmp_path / "nope.zip"), str(tmp_path / "m"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    (tmp_path / "junk.bin").write_bytes(b"junk")
    junk = run(str(tmp_path / "junk.bin"), str(tmp_path / "m"))
    assert junk.returncode == 1 and "neither a zip nor a tar" in junk.stderr
    url = run("file://" + str(make_zip(tmp_path / "u.zip", MODEL)), str(tmp_path / "m"))
    assert url.returncode == 0 and "installed in" in url.stdout, url.stderr
    assert (tmp_path / "m" / "am" / "final.mdl").is_file()
    dead = run("http://127.0.0.1:9/none.zip", str(tmp_path / "m2"))
    assert dead.returncode == 1 and "cannot download" in dead.stderr
