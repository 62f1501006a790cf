"""Devices: listing, assignment to a room (with the back-fill of their earlier events), auto-assignment."""

from __future__ import annotations

import json
import logging
from typing import Any

from device.contract import EmotionEvent
from server.aggregates import accumulate
from server.db import Connection
from server.storage.base import NotFound, Repository
from server.storage.ingest import add_aggregates

logger = logging.getLogger(__name__)

_DEVICE_COLUMNS = (
    "site, device_id, reported_room, room_id, status, first_seen_ms, last_seen_ms, state, state_reason, "
    "paused, last_health, state_since_ms"
)


def _device(row: tuple) -> dict[str, Any]:
    return {
        "site": row[0],
        "device_id": row[1],
        "reported_room": row[2],
        "room_id": None if row[3] is None else int(row[3]),
        "status": row[4],
        "first_seen_ms": int(row[5]),
        "last_seen_ms": int(row[6]),
        "state": row[7],
        "reason": row[8],
        "paused": bool(row[9]),
        "health": json.loads(row[10]) if row[10] else None,
        "state_since_ms": None if row[11] is None else int(row[11]),  # when a status first reported `state`
    }


class DeviceRepository(Repository):
    def get(self, site: str, device_id: str) -> dict[str, Any] | None:
        row = self.c.fetchone(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE site = ? AND device_id = ?", (site, device_id)
        )
        return _device(row) if row else None

    def assignments(self) -> dict[tuple[str, str], tuple[int | None, str]]:
        """(site, device_id) -> (room id or None, reported room)."""
        rows = self.c.fetchall("SELECT site, device_id, room_id, reported_room FROM devices")
        return {(r[0], r[1]): (None if r[2] is None else int(r[2]), r[3]) for r in rows}

    def assign(self, site: str, device_id: str, room_id: int) -> tuple[dict[str, Any], int]:
        """Assign a device to a room; its stored events that had no room yet are counted into that room.

        Returns the device and how many events were back-filled.
        """
        with self.c.transaction() as c:
            if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                raise NotFound(f"room {room_id} does not exist")
            # Locks the device row, so a concurrent batch of this device commits before or after, never between.
            row = c.fetchone(
                "UPDATE devices SET room_id = ?, status = 'assigned' WHERE site = ? AND device_id = ? RETURNING id",
                (room_id, site, device_id),
            )
            if row is None:
                raise NotFound(f"device {site}/{device_id} is unknown")
            backfilled = self._backfill(c, site, device_id, room_id)
        device = self.get(site, device_id)
        assert device is not None
        return device, backfilled

    @staticmethod
    def _backfill(c: Connection, site: str, device_id: str, room_id: int) -> int:
        rows = c.fetchall(
            "UPDATE events SET room_id = ? WHERE site = ? AND device_id = ? AND room_id IS NULL RETURNING payload",
            (room_id, site, device_id),
        )
        items = []
        for (payload,) in rows:
            try:
                items.append((room_id, EmotionEvent.from_payload(payload)))
            except Exception:  # stored payloads were validated; a bad one must not block the assignment
                logger.warning("stored event of %s/%s cannot be read; left out of the aggregates", site, device_id)
        add_aggregates(c, accumulate(items))
        if rows:
            logger.info("assigned %s/%s to room %s with %s earlier events", site, device_id, room_id, len(rows))
        return len(rows)

    def assign_matching_new(self, site: str, room: str, room_id: int) -> int:
        """Auto-assignment: give a new room the `new` devices whose topic names it."""
        rows = self.c.fetchall(
            "SELECT device_id FROM devices WHERE site = ? AND reported_room = ? AND room_id IS NULL", (site, room)
        )
        for (device_id,) in rows:
            self.assign(site, device_id, room_id)
        return len(rows)

    def list(self, room_id: int | None = None) -> list[dict[str, Any]]:
        """All devices, or those assigned to one room."""
        sql = f"SELECT {_DEVICE_COLUMNS} FROM devices"
        params: tuple = ()
        if room_id is not None:
            sql += " WHERE room_id = ?"
            params = (room_id,)
        return [_device(r) for r in self.c.fetchall(sql + " ORDER BY site, device_id", params)]

    def forget_new(self, not_seen_since_ms: int) -> int:
        """Delete never-assigned devices not heard from since the given time; their stored events stay."""
        with self.c.transaction() as c:
            cur = c.execute(
                "DELETE FROM devices WHERE room_id IS NULL AND status = 'new' AND last_seen_ms < ?",
                (not_seen_since_ms,),
            )
            return max(cur.rowcount, 0)
