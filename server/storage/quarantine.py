"""Messages this release cannot read yet (a newer schema): kept, bounded, until a replay after an upgrade."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.db import Connection
from server.storage.base import Repository, placeholders


@dataclass(slots=True)
class QuarantinedMessage:
    """One message as it arrived, with why it could not be read and when the server received it."""

    topic: str
    payload: bytes
    reason: str
    received_ms: int
    id: int | None = None  # set once stored


def add_quarantined(c: Connection, messages: Sequence[QuarantinedMessage], cap: int | None) -> int:
    """Store messages inside the caller's transaction, up to `cap` rows in all; return how many were refused."""
    if not messages:
        return 0
    room = len(messages)
    if cap is not None:
        stored = int(c.fetchone("SELECT COUNT(*) FROM quarantine")[0])
        room = max(0, min(room, cap - stored))
    c.executemany(
        f"INSERT INTO quarantine (topic, payload, reason, received_ms) VALUES {placeholders(4)}",
        [(m.topic, m.payload.decode(errors="replace"), m.reason, m.received_ms) for m in messages[:room]],
    )
    return len(messages) - room


class QuarantineRepository(Repository):
    def count(self) -> int:
        return int(self.c.fetchone("SELECT COUNT(*) FROM quarantine")[0])

    def page(self, after_id: int = 0, limit: int = 500) -> list[QuarantinedMessage]:
        """The next rows in arrival order, after `after_id`."""
        rows = self.c.fetchall(
            "SELECT id, topic, payload, reason, received_ms FROM quarantine WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [QuarantinedMessage(r[1], r[2].encode(), r[3], int(r[4]), id=int(r[0])) for r in rows]

    @staticmethod
    def delete(c: Connection, ids: Sequence[int]) -> None:
        """Remove rows inside the caller's transaction."""
        c.executemany("DELETE FROM quarantine WHERE id = ?", [(i,) for i in ids])
