"""Rooms: the (site, room) topic levels and a display name."""

from __future__ import annotations

from typing import Any

from server.storage.base import Conflict, Repository, now_ms


def _room(row: tuple) -> dict[str, Any]:
    return {"id": int(row[0]), "site": row[1], "room": row[2], "name": row[3]}


class RoomRepository(Repository):
    def create(self, site: str, room: str, name: str) -> dict[str, Any]:
        with self.c.transaction() as c:
            if c.fetchone("SELECT id FROM rooms WHERE site = ? AND room = ?", (site, room)):
                raise Conflict(f"room {site}/{room} exists")
            row = c.fetchone(
                "INSERT INTO rooms (site, room, name, created_ms) VALUES (?, ?, ?, ?) RETURNING id, site, room, name",
                (site, room, name, now_ms()),
            )
        return _room(row)

    def get(self, room_id: int) -> dict[str, Any] | None:
        row = self.c.fetchone("SELECT id, site, room, name FROM rooms WHERE id = ?", (room_id,))
        return _room(row) if row else None

    def index(self) -> dict[tuple[str, str], int]:
        """(site, room) -> room id, for auto-assignment."""
        return {(r[0], r[1]): int(r[2]) for r in self.c.fetchall("SELECT site, room, id FROM rooms")}

    def list(self, room_ids: set[int] | None = None) -> list[dict[str, Any]]:
        """All rooms, or only those in `room_ids`."""
        rows = self.c.fetchall("SELECT id, site, room, name FROM rooms ORDER BY site, room")
        return [_room(r) for r in rows if room_ids is None or int(r[0]) in room_ids]
