"""Store-and-forward queue of events on SQLite: written durably before publishing, deleted only on PUBACK.

Durability: the database runs in WAL mode. Enqueues commit with `synchronous=FULL` by default, which fsyncs
the WAL on every commit, so an event survives a power cut (a classroom Pi gets unplugged) as well as
`kill -9`. At one event per window (0.5 Hz) one fsync per event is cheap even on an SD card. Deletes on
PUBACK commit with `synchronous=NORMAL`: losing one to a power cut only re-sends an event the server
already has (it dedupes by event_id), and the next FULL commit fsyncs the WAL up to and including it,
so a drain of thousands of events does not pay one fsync per acknowledgement.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from device.contract import EmotionEvent
from device.errors import AulaError

logger = logging.getLogger(__name__)

# A wall clock before 2026-01-01 UTC has not been set yet: a Pi has no RTC, and one that boots offline
# starts from 1970 or from a date baked into the OS image until NTP answers. Events queued then have no
# meaningful age; once the clock is set, their age counts from that moment, so none is dropped as decades old.
CLOCK_FLOOR_MS = 1_767_225_600_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,        -- per-device, monotonic across restarts; the send order
    event_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,    -- wall clock when queued (or when it was set, see CLOCK_FLOOR_MS)
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('schema', 1), ('next_seq', 1), ('dropped_full', 0), ('dropped_expired', 0);
"""


class QueueError(AulaError):
    """The queue database cannot be opened or written."""


class Synchronous(str, Enum):
    """SQLite synchronous modes offered for enqueues."""

    FULL = "full"  # fsync per commit: survives power loss
    NORMAL = "normal"  # survives a process crash; a power cut may lose the last commits


@dataclass(frozen=True)
class QueuedEvent:
    """One stored event, ready to publish."""

    seq: int
    event_id: str
    created_ms: int
    payload: bytes


@dataclass
class QueueStats:
    """Numbers for the health message."""

    backlog: int
    bytes: int
    oldest_age_s: float | None
    dropped_full: int  # dropped because max_rows or max_bytes was reached (oldest first)
    dropped_expired: int  # dropped because older than max_age_s
    next_seq: int

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_expired


class OfflineQueue:
    """Durable FIFO of serialised events keyed by seq; bounded by rows, bytes and age (oldest dropped, counted)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 3 * 24 * 3600.0,
        synchronous: Synchronous | str = Synchronous.FULL,
        clock: Callable[[], float] = time.time,
    ):
        if max_rows < 1 or max_bytes < 1 or max_age_s <= 0:
            raise ValueError("max_rows, max_bytes and max_age_s must be positive")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self.synchronous = Synchronous(synchronous)
        self._clock = clock
        # One connection shared by the caller, the sender and paho's network thread, serialised by this lock.
        self._lock = threading.RLock()
        self._db = self._open()
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events").fetchone()
        self._rows, self._bytes = row
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self._next_seq = meta["next_seq"]
        self._dropped_full = meta["dropped_full"]
        self._dropped_expired = meta["dropped_expired"]
        # events stamped while the wall clock was not set yet (see CLOCK_FLOOR_MS), to re-stamp once it is
        unset = self._db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE created_ms < ?)", (CLOCK_FLOOR_MS,))
        self._unset_stamps = bool(unset.fetchone()[0])
        logger.info("offline queue %s: %s events waiting, next seq %s", self.path, self._rows, self._next_seq)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"cannot create the queue directory {self.path.parent} ({exc.strerror})") from None
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise QueueError(f"cannot open the queue database {self.path} ({exc})") from None
            # A corrupt file must not stop the device: move it aside for a post-mortem and start a new queue.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.error("queue database %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("queue %s: no WAL here (journal_mode=%s); still durable, slower", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous.value.upper()}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _meta_add(self, key: str, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    def _drop_oldest(self, reason: str, keep: Callable[[int, int], bool]) -> int:
        """Delete rows oldest first while `keep(created_ms, size)` is False; return how many. Inside a transaction."""
        dropped = 0
        while self._rows:
            batch = self._db.execute(
                "SELECT seq, created_ms, LENGTH(payload) FROM events ORDER BY seq LIMIT 64"
            ).fetchall()
            victims = []
            for seq, created_ms, size in batch:
                if keep(created_ms, size):
                    break
                victims.append(seq)
                self._rows -= 1
                self._bytes -= size
            if victims:
                self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in victims])
                dropped += len(victims)
            if len(victims) < len(batch) or not batch:
                break
        if dropped:
            key = "dropped_full" if reason == "full" else "dropped_expired"
            self._meta_add(key, dropped)
            logger.warning("offline queue: dropped %s oldest events (%s)", dropped, reason)
        return dropped

    def _within_limits(self, created_ms: int = 0, size: int = 0) -> bool:
        return self._rows <= self.max_rows and self._bytes <= self.max_bytes

    def _oldest_created_ms(self) -> int | None:
        row = self._db.execute("SELECT created_ms FROM events ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else row[0]

    def _expire_locked(self, now_ms: int) -> int:
        if now_ms < CLOCK_FLOOR_MS:  # the clock is not set: ages are unknown, so nothing expires
            return 0
        if self._unset_stamps:
            n = self._db.execute(
                "UPDATE events SET created_ms = ? WHERE created_ms < ?", (now_ms, CLOCK_FLOOR_MS)
            ).rowcount
            self._unset_stamps = False
            logger.warning("offline queue: the wall clock is set now; the age of %s events queued before "
                           "counts from here", n)
        cutoff = now_ms - self.max_age_ms
        oldest = self._oldest_created_ms()
        if oldest is None or oldest >= cutoff:  # the common case costs one indexed lookup
            return 0
        return self._drop_oldest("expired", lambda created, size: created >= cutoff)

    def enqueue(self, event: EmotionEvent) -> EmotionEvent:
        """Give the event the next seq and store it; returns the stored copy once it is on disk."""
        with self._lock:
            seq = self._next_seq
            stored = dataclasses.replace(event, seq=seq)
            payload = stored.to_payload()
            if len(payload) > self.max_bytes:
                raise ValueError(f"event of {len(payload)} bytes is larger than the queue's max_bytes")
            now_ms = int(self._clock() * 1000)
            rows, size, unset = self._rows, self._bytes, self._unset_stamps
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                self._db.execute(
                    "INSERT INTO events (seq, event_id, created_ms, payload) VALUES (?, ?, ?, ?)",
                    (seq, stored.event_id, now_ms, payload),
                )
                self._rows += 1
                self._bytes += len(payload)
                dropped_full = 0 if self._within_limits() else self._drop_oldest("full", self._within_limits)
                dropped_expired = self._expire_locked(now_ms)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rows, self._bytes, self._unset_stamps = rows, size, unset
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise QueueError(f"cannot write to the queue {self.path} ({exc})") from exc
            self._next_seq = seq + 1
            self._unset_stamps |= now_ms < CLOCK_FLOOR_MS
            self._dropped_full += dropped_full
            self._dropped_expired += dropped_expired
            return stored

    def peek(self, after_seq: int = 0, limit: int = 20) -> list[QueuedEvent]:
        """Return up to `limit` stored events with seq > after_seq, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, created_ms, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [QueuedEvent(seq, event_id, created, bytes(payload)) for seq, event_id, created, payload in rows]

    def ack(self, seq: int) -> bool:
        """Delete an event the broker acknowledged; False when it was already gone (dropped or acked)."""
        with self._lock:
            row = self._db.execute("SELECT LENGTH(payload) FROM events WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            relax = self.synchronous is Synchronous.FULL
            if relax:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
            finally:
                if relax:
                    self._db.execute("PRAGMA synchronous=FULL")
            self._rows -= 1
            self._bytes -= row[0]
            return True

    def expire(self) -> int:
        """Drop events older than max_age_s (oldest first, counted); return how many."""
        with self._lock:
            rows, size, unset = self._rows, self._bytes, self._unset_stamps
            try:
                self._db.execute("BEGIN IMMEDIATE")
                dropped = self._expire_locked(int(self._clock() * 1000))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rows, self._bytes, self._unset_stamps = rows, size, unset
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise QueueError(f"cannot write to the queue {self.path} ({exc})") from exc
            self._dropped_expired += dropped
            return dropped

    def __len__(self) -> int:
        return self._rows

    def stats(self) -> QueueStats:
        """Backlog, size, age of the oldest event (None when empty or unknown) and the persisted drop counters."""
        with self._lock:
            oldest, now = self._oldest_created_ms(), self._clock()
            unknown = oldest is None or oldest < CLOCK_FLOOR_MS or now * 1000 < CLOCK_FLOOR_MS
            age = None if unknown else max(0.0, now - oldest / 1000)
            return QueueStats(
                backlog=self._rows,
                bytes=self._bytes,
                oldest_age_s=None if age is None else round(age, 3),
                dropped_full=self._dropped_full,
                dropped_expired=self._dropped_expired,
                next_seq=self._next_seq,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> OfflineQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
