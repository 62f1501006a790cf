"""`make lint`'s import contracts hold on the tree, and each one fails when a module breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the three packages' Python files and the contracts, to break on purpose."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: `make setup` installs import-linter with the dev extra")
    dest = tmp_path_factory.mktemp("contracts")
    for package in ("device", "server", "converter"):
        for path in (ROOT / package).rglob("*.py"):
            target = dest / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copyfile(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_every_contract(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("server/api.py", "import device.mqtt.publisher", "The server imports nothing of the device"),
        ("server/ingest.py", "from device.config import DeviceConfig", "The server imports nothing of the device"),
        ("device/service.py", "import server.storage", "The device imports nothing from the server"),
        ("device/vision.py", "import converter.face_net", "The device imports nothing from the server"),
        ("device/contract/events.py", "import pydantic", "The contract imports nothing"),
        ("device/contract/topics.py", "import device.config", "The contract imports nothing"),
        ("device/common/credentials.py", "import device.mqtt.config", "The shared layer imports nothing else"),
        ("device/models/face_emotion.py", "import tensorflow", "Nothing on the device imports TensorFlow"),
    ],
)
def test_a_violation_breaks_its_contract(tree, module, line, contract):
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # a deliberate violation\n")
    try:
        result = _lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0, f"lint-imports passed with `{line}` in {module}"
    assert contract in result.stdout.split("Broken contracts")[-1], result.stdout
