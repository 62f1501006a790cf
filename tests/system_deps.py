"""One rule for tests that need a system service or tool (Mosquitto, PostgreSQL, Chromium, ...).

Without it a test skips, saying what to install. CI sets AULA_REQUIRE_SYSTEM_DEPS=1 (.ci/run), and there the same
test fails instead, so a missing package cannot turn into a quietly green run.
"""

from __future__ import annotations

import os
from typing import NoReturn, TypeVar

import pytest

REQUIRE_ENV = "AULA_REQUIRE_SYSTEM_DEPS"

T = TypeVar("T")


def system_deps_required() -> bool:
    """True under CI: AULA_REQUIRE_SYSTEM_DEPS=1, as scripts/install-system-deps.sh reads it."""
    return os.environ.get(REQUIRE_ENV, "0") == "1"


def missing_system_dep(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it when AULA_REQUIRE_SYSTEM_DEPS=1."""
    if system_deps_required():
        pytest.fail(
            f"{reason}; CI requires it ({REQUIRE_ENV}=1): run scripts/install-system-deps.sh and `make setup`",
            pytrace=False,
        )
    pytest.skip(reason)


def require_system_dep(found: T | None, reason: str) -> T:
    """Return `found` (a path, a module, True); when it is None or false, skip or fail as `missing_system_dep`."""
    if not found:
        missing_system_dep(reason)
    return found
