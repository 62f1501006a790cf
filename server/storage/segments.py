"""Lesson segments of a room and the per-segment report."""

from __future__ import annotations

from typing import Any

from server.db import Database
from server.storage.aggregates import AggregateRepository
from server.storage.base import NotFound, Repository, now_ms


class SegmentRepository(Repository):
    def __init__(self, db: Database, aggregates: AggregateRepository):
        super().__init__(db)
        self.aggregates = aggregates

    def start(self, room_id: int, name: str, by: str | None, at_ms: int | None = None) -> dict[str, Any]:
        """Start a segment; a segment still open in the room ends where the new one starts."""
        start = now_ms() if at_ms is None else at_ms
        with self.c.transaction() as c:
            c.execute("UPDATE segments SET end_ms = ? WHERE room_id = ? AND end_ms IS NULL", (start, room_id))
            row = c.fetchone(
                "INSERT INTO segments (room_id, name, start_ms, created_by) VALUES (?, ?, ?, ?) RETURNING id",
                (room_id, name, start, by),
            )
        return {"id": int(row[0]), "name": name, "start_ms": start}

    def stop(self, room_id: int, segment_id: int, at_ms: int | None = None) -> dict[str, Any]:
        """End a segment (a second stop keeps the first end)."""
        end = now_ms() if at_ms is None else at_ms
        with self.c.transaction() as c:
            row = c.fetchone("SELECT end_ms FROM segments WHERE id = ? AND room_id = ?", (segment_id, room_id))
            if row is None:
                raise NotFound(f"segment {segment_id} is not in room {room_id}")
            if row[0] is not None:
                return {"id": segment_id, "end_ms": int(row[0])}
            c.execute("UPDATE segments SET end_ms = ? WHERE id = ?", (end, segment_id))
        return {"id": segment_id, "end_ms": end}

    def list(self, room_id: int) -> list[dict[str, Any]]:
        """The room's segments, oldest first, each with its merged emotion summary."""
        rows = self.c.fetchall(
            "SELECT id, name, start_ms, end_ms FROM segments WHERE room_id = ? ORDER BY start_ms, id", (room_id,)
        )
        out = []
        for seg_id, name, start, end in rows:
            summary = self.aggregates.merged(room_id, int(start), None if end is None else int(end)).summary()
            out.append(
                {
                    "id": int(seg_id),
                    "name": name,
                    "start_ms": int(start),
                    "end_ms": None if end is None else int(end),
                    "windows": summary["windows"],
                    "distribution": summary["distribution"],
                    "dominant": summary["dominant"],
                    "valence": summary["valence"],
                    "arousal": summary["arousal"],
                    "faces_mean": summary["faces"],
                    "face": summary["face"],
                    "voices": summary["voices"],
                    "words": summary["words"],
                }
            )
        return out
