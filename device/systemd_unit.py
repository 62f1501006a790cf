"""The Environment= settings of the device's systemd unit, for tools that run the device outside systemd (the
whole-device bench, `make demo`) and should run it as the unit does (malloc arenas, BLAS threads)."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "aula-device.service"


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """KEY -> value of each `Environment=KEY=value` line of the unit (an absent unit gives none)."""
    if not unit.exists():
        return {}
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env
