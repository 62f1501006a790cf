"""`device switch-release` on a scratch install folder: the sha256 check before the switch, the switch, and the
device going back on its own when the self-check fails, also when the session that started it hangs up.

The self-check here is a stand-in script in each release's venv (pass or fail, slow or quick); the real one runs
over ssh in tests/test_flash.py's rollout, which fails a real camera check on one device."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _release(root: Path, version: str, selftest: str, model: bytes = b"weights") -> None:
    """releases/<version> with one model and its manifest; venvs/<version>/bin/python runs `selftest` (sh)."""
    folder = root / "releases" / version / "models_tflite"
    folder.mkdir(parents=True)
    (folder / "m.tflite").write_bytes(b"weights")
    digest = hashlib.sha256(model).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"models": {"m": {"file": "m.tflite", "sha256": digest}}}))
    python = root / "venvs" / version / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{selftest}\n")
    python.chmod(0o755)
    os.symlink(f"../../venvs/{version}", root / "releases" / version / ".venv")


def _lab(tmp_path: Path, second: str, model: bytes = b"weights") -> tuple[Path, Path]:
    root = tmp_path / "opt-aula"
    _release(root, "r1", 'echo "camera  ok  30 frames"')
    _release(root, "r2", second, model)
    os.symlink("releases/r1", root / "current")
    os.symlink("current/.venv", root / ".venv")
    config = tmp_path / "device.yaml"
    config.write_text("camera: {type: video}\n")
    (tmp_path / "device.yaml.aula-new").write_text("camera: {type: opencv, device: 97}\n")
    return root, config


def _switch(root: Path, config: Path, **kw) -> subprocess.Popen:
    command = [sys.executable, "-m", "device", "switch-release", str(root), "r2", "--venv", "r2", "--link", ".venv",
               "--config", str(config), "--new-config", str(config) + ".aula-new"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _outcome(root: Path) -> dict:
    return json.loads((root / "switch.json").read_text())


def test_a_release_that_passes_its_self_check_becomes_current(tmp_path):
    root, config = _lab(tmp_path, 'echo "camera  ok  30 frames"')
    out, err = _switch(root, config).communicate(timeout=60)
    assert "sha256: every model of release r2 matches its manifest" in out, out + err
    assert os.readlink(root / "current") == "releases/r2" and os.readlink(root / ".venv") == "current/.venv"
    assert "opencv" in config.read_text() and (tmp_path / "device.yaml.previous").exists()
    assert _outcome(root)["result"] == "switched" and _outcome(root)["from"] == "r1"
    assert "current -> releases/r2 (was r1)" in (root / "switch.log").read_text()


def test_a_mismatched_model_stops_the_switch_before_anything_changes(tmp_path):
    root, config = _lab(tmp_path, "exit 0", model=b"other weights")
    proc = _switch(root, config)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "FAIL  m.tflite" in out
    assert "does not match its manifest on the device (nothing was switched; current stays r1)" in out
    assert os.readlink(root / "current") == "releases/r1" and "type: video" in config.read_text()


def test_a_failed_self_check_after_the_switch_goes_back_on_the_device(tmp_path):
    root, config = _lab(tmp_path, 'echo "camera  FAIL  no frames from /dev/video97"; exit 1')
    proc = _switch(root, config)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    assert "rolled back on the device: current -> releases/r1; previous device.yaml restored" in out
    assert os.readlink(root / "current") == "releases/r1" and "type: video" in config.read_text()
    outcome = _outcome(root)
    assert outcome["result"] == "rolled-back" and "no frames from /dev/video97" in outcome["reason"]


def test_the_device_finishes_going_back_when_the_session_that_started_it_hangs_up(tmp_path):
    """ssh gone mid-check: SIGHUP, and a stdout nobody reads. The device still goes back, and says so in its log."""
    root, config = _lab(tmp_path, 'sleep 2; echo "camera  FAIL  no frames"; exit 1')
    proc = _switch(root, config, start_new_session=True)
    deadline = time.monotonic() + 30
    while os.readlink(root / "current") != "releases/r2" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.readlink(root / "current") == "releases/r2"  # switched; the self-check is running
    proc.send_signal(signal.SIGHUP)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 4
    assert os.readlink(root / "current") == "releases/r1" and "type: video" in config.read_text()
    assert "rolled back on the device" in (root / "switch.log").read_text()
    assert _outcome(root)["result"] == "rolled-back"
