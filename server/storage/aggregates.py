"""Reads of the per-room 10 s buckets of sums."""

from __future__ import annotations

from typing import Any

from server.aggregates import SUM_COLUMNS, Sums, bucket_of
from server.storage.base import Repository

AGG_COLUMNS = ", ".join(SUM_COLUMNS)
_AGG_SUMS = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)


class AggregateRepository(Repository):
    def buckets(self, room_id: int, since_ms: int) -> list[dict[str, Any]]:
        """The room's 10 s buckets from `since_ms` on, oldest first, as means."""
        rows = self.c.fetchall(
            f"SELECT bucket_ms, {AGG_COLUMNS} FROM aggregates WHERE room_id = ? AND bucket_ms >= ? ORDER BY bucket_ms",
            (room_id, bucket_of(since_ms)),
        )
        return [{"t_ms": int(r[0]), **Sums.from_row(r[1:]).summary()} for r in rows]

    def merged(self, room_id: int, since_ms: int, until_ms: int | None = None) -> Sums:
        """Sums over the buckets that start in [since_ms rounded down to a bucket, until_ms)."""
        sql = f"SELECT {_AGG_SUMS} FROM aggregates WHERE room_id = ? AND bucket_ms >= ?"
        params: list[Any] = [room_id, bucket_of(since_ms)]
        if until_ms is not None:
            sql += " AND bucket_ms < ?"
            params.append(until_ms)
        return Sums.from_row(self.c.fetchone(sql, params))

    def latest_bucket(self, room_id: int, since_ms: int) -> int | None:
        row = self.c.fetchone(
            "SELECT MAX(bucket_ms) FROM aggregates WHERE room_id = ? AND bucket_ms >= ?", (room_id, bucket_of(since_ms))
        )
        return None if row is None or row[0] is None else int(row[0])
