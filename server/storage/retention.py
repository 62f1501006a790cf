"""Deleting what is older than the retention limits, in short transactions."""

from __future__ import annotations

from server.aggregates import BUCKET_MS, bucket_of
from server.storage.base import Repository, now_ms

_RETENTION_CHUNK = 5000  # short deletes, so ingest is not held up behind one long transaction


class RetentionRepository(Repository):
    def _delete_chunks(self, table: str, column: str, key: str, cutoff: int) -> int:
        total = 0
        while True:
            with self.c.transaction() as c:
                cur = c.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {column} < ? LIMIT ?)",
                    (cutoff, _RETENTION_CHUNK),
                )
                n = max(cur.rowcount, 0)
            total += n
            if n < _RETENTION_CHUNK:
                return total

    def apply(self, raw_days: float, aggregate_days: float | None, at_ms: int | None = None) -> dict[str, int]:
        """Delete raw and quarantined events received before the limit, old aggregates if asked, expired sessions.

        Raw events go by received_ms, the server's clock: a window dated ahead by its sender cannot outlive
        retention. Aggregates go by bucket, which the intake window bounds to intake.max_ahead_s ahead.
        """
        now = now_ms() if at_ms is None else at_ms
        raw_cutoff = now - int(raw_days * 86_400_000)
        done = {
            "events": self._delete_chunks("events", "received_ms", "id", raw_cutoff),
            "quarantine": self._delete_chunks("quarantine", "received_ms", "id", raw_cutoff),
        }
        if aggregate_days is not None:
            cutoff = bucket_of(now - int(aggregate_days * 86_400_000)) - BUCKET_MS
            with self.c.transaction() as c:
                done["aggregates"] = max(c.execute("DELETE FROM aggregates WHERE bucket_ms < ?", (cutoff,)).rowcount, 0)
        with self.c.transaction() as c:
            done["sessions"] = max(c.execute("DELETE FROM sessions WHERE expires_ms < ?", (now,)).rowcount, 0)
        return done
