"""The fleet page's health trends in the database: written with each batch, read back when the server starts.

Each device keeps its newest `fleet.trend_samples` rows; older ones are deleted in the batch that adds new
ones, so the table stays bounded. A deleted device's rows go with it (a foreign key, ON DELETE CASCADE).
"""

from __future__ import annotations

import json
from typing import Any

from server.db import Connection
from server.health_trend import trend_row
from server.storage.base import Repository

# (site, device_id, payload, received_ms, trend figures or None): one health message of a batch.
HealthRow = tuple[str, str, bytes, int, dict[str, float | None] | None]

# Only for a device that exists: as the UPDATE of devices.last_health, a health without its device adds nothing.
_INSERT = (
    "INSERT INTO device_health_trend (site, device_id, ts_ms, figures) "
    "SELECT site, device_id, ?, ? FROM devices WHERE site = ? AND device_id = ?"
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
    rows = [(received_ms, json.dumps(figures, separators=(",", ":")), site, device_id)
            for site, device_id, _, received_ms, figures in healths if figures is not None]
    c.executemany(_INSERT, rows)
    devices = sorted({(site, device_id) for site, device_id, *_ in healths})  # one lock order
    c.executemany(_TRIM, [(site, device_id, site, device_id, samples) for site, device_id in devices])


class HealthTrendRepository(Repository):
    def recent(self, samples: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Each device's newest `samples` trend rows, oldest first, as the fleet view shows them."""
        rows = self.c.fetchall(
            "SELECT site, device_id, ts_ms, figures FROM (SELECT site, device_id, ts_ms, id, figures, "
            "ROW_NUMBER() OVER (PARTITION BY site, device_id ORDER BY ts_ms DESC, id DESC) AS newer "
            "FROM device_health_trend) ranked WHERE newer <= ? ORDER BY site, device_id, ts_ms, id",
            (samples,),
        )
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for site, device_id, ts_ms, figures in rows:
            out.setdefault((site, device_id), []).append(trend_row(int(ts_ms), json.loads(figures)))
        return out

    def count(self, site: str, device_id: str) -> int:
        """How many trend rows a device has stored."""
        row = self.c.fetchone(
            "SELECT COUNT(*) FROM device_health_trend WHERE site = ? AND device_id = ?", (site, device_id)
        )
        return int(row[0]) if row else 0
