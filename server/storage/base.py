"""What every repository shares: the calling thread's connection, the clock, the errors, placeholder lists."""

from __future__ import annotations

import time

from server.db import Connection, Database


def now_ms() -> int:
    return int(time.time() * 1000)


class Conflict(ValueError):
    """The thing to create exists already."""


class NotFound(LookupError):
    """A referenced room, user, device or segment does not exist."""


def placeholders(n: int) -> str:
    return "(" + ", ".join("?" * n) + ")"


class Repository:
    """One concern's reads and writes; each method runs on the calling thread's connection."""

    def __init__(self, db: Database):
        self.db = db

    @property
    def c(self) -> Connection:
        return self.db.conn()
