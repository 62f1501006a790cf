"""The fleet page's health trends in the database: written with each batch, read back when the server starts.

Each device keeps its newest `fleet.trend_samples` rows; older ones are deleted in the batch that adds new
ones, so the table stays bounded. A deleted device's rows go with it (a foreign key, ON DELETE CASCADE). A
health message delivered twice (the same device and the same ts_ms of its own) adds one row.
"""

from __future__ import annotations

import json
from typing import Any

from server.db import Connection
from server.health_trend import trend_row
from server.storage.base import Repository

# (site, device_id, payload, received_ms, trend figures or None, the message's own ts_ms): one health message.
HealthRow = tuple[str, str, bytes, int, dict[str, float | None] | None, int | None]

# Only for a device that exists: as the UPDATE of devices.last_health, a health without its device adds nothing.
# A message already stored (its device and sent_ms, a unique index) is left out.
_INSERT = (
    "INSERT INTO device_health_trend (site, device_id, ts_ms, sent_ms, figures) "
    "SELECT site, device_id, ?, ?, ? FROM devices WHERE site = ? AND device_id = ? ON CONFLICT DO NOTHING"
)
_TRIM = (
    "DELETE FROM device_health_trend WHERE site = ? AND device_id = ? AND id NOT IN "
    "(SELECT id FROM device_health_trend WHERE site = ? AND device_id = ? ORDER BY ts_ms DESC, id DESC LIMIT ?)"
)


def add_trend_rows(c: Connection, healths: list[HealthRow], samples: int) -> None:
    """Add one row per health message with trend figures and keep each device's newest `samples` rows.

    Inside the caller's transaction. The figures are those the intake took from the validated message
    (server/health_trend.py: trend_figures), so the payload is not decoded again here.
    """
    rows = [(received_ms, sent_ms, json.dumps(figures, separators=(",", ":")), site, device_id)
            for site, device_id, _, received_ms, figures, sent_ms in healths if figures is not None]
    c.executemany(_INSERT, rows)
    devices = sorted({(site, device_id) for site, device_id, *_ in healths})  # one lock order
    c.executemany(_TRIM, [(site, device_id, site, device_id, samples) for site, device_id in devices])


class HealthTrendRepository(Repository):
    def recent(self, samples: int) -> dict[tuple[str, str], list[tuple[dict[str, Any], int | None]]]:
        """Each device's newest `samples` trend rows, oldest first: (the row as the fleet view shows it, the
        health message's own ts_ms or None for a row stored before it was kept)."""
        rows = self.c.fetchall(
            "SELECT site, device_id, ts_ms, sent_ms, figures FROM (SELECT site, device_id, ts_ms, sent_ms, id, "
            "figures, ROW_NUMBER() OVER (PARTITION BY site, device_id ORDER BY ts_ms DESC, id DESC) AS newer "
            "FROM device_health_trend) ranked WHERE newer <= ? ORDER BY site, device_id, ts_ms, id",
            (samples,),
        )
        out: dict[tuple[str, str], list[tuple[dict[str, Any], int | None]]] = {}
        for site, device_id, ts_ms, sent_ms, figures in rows:
            row = trend_row(int(ts_ms), json.loads(figures))
            out.setdefault((site, device_id), []).append((row, None if sent_ms is None else int(sent_ms)))
        return out

    def count(self, site: str, device_id: str) -> int:
        """How many trend rows a device has stored."""
        row = self.c.fetchone(
            "SELECT COUNT(*) FROM device_health_trend WHERE site = ? AND device_id = ?", (site, device_id)
        )
        return int(row[0]) if row else 0
