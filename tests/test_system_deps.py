"""A missing Mosquitto, PostgreSQL or Chromium skips a test on a newcomer's machine and fails it in CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.system_deps import REQUIRE_ENV, missing_system_dep, require_system_dep

ROOT = Path(__file__).resolve().parent.parent
REASON = "aula-no-such-tool is not installed (apt-get install aula-no-such-tool)"


@pytest.mark.parametrize(("value", "outcome"), [(None, pytest.skip.Exception), ("0", pytest.skip.Exception),
                                                ("1", pytest.fail.Exception)])  # fmt: skip
def test_missing_dep_skips_unless_required(monkeypatch, value, outcome):
    if value is None:
        monkeypatch.delenv(REQUIRE_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(outcome, match=re.escape(REASON)) as info:
        missing_system_dep(REASON)
    assert (REQUIRE_ENV in str(info.value)) == (value == "1")


def test_present_dep_is_returned(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    assert require_system_dep("/usr/bin/tool", REASON) == "/usr/bin/tool"
    with pytest.raises(pytest.fail.Exception, match=re.escape("scripts/install-system-deps.sh")):
        require_system_dep(None, REASON)


SAMPLE = """
import shutil

import tests.mosquitto as mosquitto
import tests.postgres as postgres
from tests.postgres import postgres_server_fixture  # noqa: F401
from tests.system_deps import require_system_dep


def test_tool():
    require_system_dep(shutil.which("aula-no-such-tool"), "REASON")


def test_mosquitto(monkeypatch):
    monkeypatch.setattr(mosquitto, "find_mosquitto", lambda: None)
    mosquitto.require_mosquitto()


def test_postgres(monkeypatch, request):
    monkeypatch.setattr(postgres, "find_pg_bin", lambda: None)
    request.getfixturevalue("postgres_server")
"""


def _run_sample(tmp_path: Path, required: bool) -> subprocess.CompletedProcess:
    sample = tmp_path / "test_sample.py"
    sample.write_text(textwrap.dedent(SAMPLE).replace('"REASON"', repr(REASON)))
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if required:
        env[REQUIRE_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(sample)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_pytest_run_skips_without_the_variable(tmp_path):
    out = _run_sample(tmp_path, required=False)
    assert out.returncode == 0 and "3 skipped" in out.stdout, out.stdout + out.stderr
    assert REASON in out.stdout and "mosquitto is not installed" in out.stdout and "PostgreSQL is not" in out.stdout


def test_pytest_run_fails_under_the_variable(tmp_path):
    out = _run_sample(tmp_path, required=True)
    assert out.returncode == 1 and "skipped" not in out.stdout, out.stdout + out.stderr
    assert "3 failed" in out.stdout, out.stdout
    assert out.stdout.count(f"CI requires it ({REQUIRE_ENV}=1)") >= 3, out.stdout


def test_ci_entry_point_exports_the_variable_to_make_test():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    export, make_test = lines.index(f"export {REQUIRE_ENV}=1"), lines.index("make test")
    assert export < make_test
