"""Put the repository root on sys.path so tests import `device` however pytest is started."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.system_deps import REQUIRE_ENV, system_deps_required


def pytest_report_header(config):
    """Say up front whether a missing Mosquitto, PostgreSQL or Chromium skips its tests or fails them."""
    if system_deps_required():
        return f"system dependencies: required ({REQUIRE_ENV}=1), a missing one fails its tests"
    return f"system dependencies: optional, a missing one skips its tests (set {REQUIRE_ENV}=1 to fail instead)"
