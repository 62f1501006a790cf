"""The figures of a health message that the fleet page draws as trends, one row per message.

Shared by the fleet monitor (server/fleet.py), which keeps the rows in memory, and the batch writer's storage
(server/storage/health_trend.py), which keeps them in the database so that they outlive a restart.
"""

from __future__ import annotations

from typing import Any

TREND_SAMPLES = 120  # health messages kept per device: the default of fleet.trend_samples

# Trend name -> (health section, figure).
TREND_FIELDS: dict[str, tuple[str, str]] = {
    "frames_per_s": ("vision", "frames_analysed_per_s"),
    "frames_dropped": ("vision", "frames_dropped"),
    "detect_ms_p95": ("vision", "detect_ms_p95"),
    "cpu_temp_c": ("host", "cpu_temp_c"),
    "backlog": ("mqtt", "backlog"),
}


def figure(health: dict[str, Any], section: str, name: str) -> float | None:
    """One number of a health message's section; None when absent or not a number."""
    value = (health.get(section) or {}).get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def trend_figures(health: dict[str, Any]) -> dict[str, float | None]:
    """The trend's figures of one health message (its sections as a dict: vision, host, mqtt, ...)."""
    return {k: figure(health, *where) for k, where in TREND_FIELDS.items()}


def trend_row(t_ms: int, figures: dict[str, Any]) -> dict[str, Any]:
    """One point of a trend as the fleet view shows it; a figure missing from `figures` reads as None."""
    return {"t_ms": t_ms, **{k: figures.get(k) for k in TREND_FIELDS}}
