"""Store-and-forward queue of events on SQLite: written durably before publishing, deleted only on PUBACK.

Durability: the database runs in WAL mode. Enqueues commit with `synchronous=FULL` by default, which fsyncs
the WAL on every commit, so an event survives a power cut (a classroom Pi gets unplugged) as well as
`kill -9`. At one event per window (0.5 Hz) one fsync per event is cheap even on an SD card. Deletes on
PUBACK commit with `synchronous=NORMAL`: losing one to a power cut only re-sends an event the server
already has (it dedupes by event_id), and the next FULL commit fsyncs the WAL up to and including it,
so a drain of thousands of events does not pay one fsync per acknowledgement.

Faults: a full or read-only disk, a queue another process holds, or a corrupt file never raise out of the
queue. It records the fault (`fault`, `fault_detail`), keeps new events in memory (bounded, oldest dropped
and counted) so the sender can publish them directly, and `maintain()` retries the disk every `retry_s`; once
a write succeeds the events held in memory go to disk and the fault clears. A corrupt file (found at open or
by any later read or write) is moved aside as `<name>.corrupt-<time>` with its -wal and -shm, never deleted;
the rows still readable from it are carried into a fresh queue. A queue another process holds (a second
`device run` on the same state directory, or a connection in `BEGIN EXCLUSIVE`) is reported as locked and
retried, never taken for corrupt: an advisory lock (`<name>.lock`) keeps one process per queue.

Ages: each row records the boot id (/proc/sys/kernel/random/boot_id) and the monotonic clock when it was queued.
Within one boot an event's age is the monotonic difference, which no wall-clock step (NTP setting a Pi that has
no RTC, or a clock jumped a year) can change. The queue also remembers the last moment it was used (boot id,
monotonic and wall clock). Rows from an earlier boot are re-based when the queue opens: their age then is the
age they had reached at that last moment, plus the time the device was off as the wall clock tells it, but only
when both wall readings are set (after CLOCK_FLOOR_MS) and the gap lies between 0 and max_age_s; any other gap
(a clock that went back, was not set yet, or jumped further than the bound) counts as 0, so a clock jump never
drops an event, at the cost of keeping one for up to max_age_s beyond a long power-off.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from device.contract import EmotionEvent
from device.errors import StorageError

logger = logging.getLogger(__name__)

# A wall clock before 2026-01-01 UTC has not been set yet: a Pi has no RTC, and one that boots offline
# starts from 1970 or from a date baked into the OS image until NTP answers.
CLOCK_FLOOR_MS = 1_767_225_600_000
SCHEMA_VERSION = 2
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

# Version 1, as the first devices created it; upgrades below bring any file to SCHEMA_VERSION in place.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,        -- per-device, monotonic across restarts; the send order
    event_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,    -- wall clock when queued (information; ages use boot_id and mono_ms)
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('schema', 1), ('next_seq', 1), ('dropped_full', 0), ('dropped_expired', 0);
"""
_UPGRADES = {
    2: """
ALTER TABLE events ADD COLUMN boot_id TEXT;     -- the boot the row's mono_ms belongs to; NULL in version 1 rows
ALTER TABLE events ADD COLUMN mono_ms INTEGER;  -- monotonic clock when queued (re-based at open across boots)
CREATE TABLE IF NOT EXISTS seen (               -- the last moment the queue was used, to carry ages across boots
    id INTEGER PRIMARY KEY CHECK (id = 1),
    boot_id TEXT NOT NULL,
    mono_ms INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL
);
UPDATE meta SET value = 2 WHERE key = 'schema';
""",
}

MEMORY_MAX_ROWS = 10_000  # events held in memory while the disk cannot be written (5.5 h at one per 2 s)
MEMORY_MAX_BYTES = 16 * 1024 * 1024


class QueueFault(str, Enum):
    """Why the queue cannot use its file right now; the text is the service's degraded reason."""

    DISK_FULL = "disk full"
    READ_ONLY = "disk read-only"
    LOCKED = "queue locked"
    CORRUPT = "queue corrupt"
    UNAVAILABLE = "queue unavailable"


class QueueError(StorageError):
    """The queue database cannot be opened or written right now; `fault` says why."""

    def __init__(self, fault: QueueFault, message: str):
        super().__init__(message)
        self.fault = fault


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
    fault: str | None = None  # QueueFault text while the file cannot be used
    in_memory: int = 0  # events held in memory because the file cannot be written

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_expired


@dataclass
class _Held:
    """An event held in memory while the disk cannot take it."""

    event: QueuedEvent
    mono_ms: int


_SQLITE_FAULTS = {
    5: QueueFault.LOCKED,  # SQLITE_BUSY
    6: QueueFault.LOCKED,  # SQLITE_LOCKED
    8: QueueFault.READ_ONLY,  # SQLITE_READONLY
    11: QueueFault.CORRUPT,  # SQLITE_CORRUPT
    13: QueueFault.DISK_FULL,  # SQLITE_FULL
    26: QueueFault.CORRUPT,  # SQLITE_NOTADB
}
_ERRNO_FAULTS = {errno.ENOSPC: QueueFault.DISK_FULL, errno.EDQUOT: QueueFault.DISK_FULL,
                 errno.EROFS: QueueFault.READ_ONLY, errno.EACCES: QueueFault.READ_ONLY,
                 errno.EPERM: QueueFault.READ_ONLY}


def classify(exc: BaseException, directory: Path) -> QueueFault:
    """Name the fault behind an SQLite or OS error; I/O and open errors say little, so ask the file system."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_FAULTS:
            return _SQLITE_FAULTS[code & 0xFF]
    elif isinstance(exc, OSError) and exc.errno in _ERRNO_FAULTS:
        return _ERRNO_FAULTS[exc.errno]
    try:
        st = os.statvfs(directory)
    except OSError:
        return QueueFault.UNAVAILABLE
    if st.f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
        return QueueFault.READ_ONLY
    if st.f_bavail == 0 or st.f_bfree == 0:
        return QueueFault.DISK_FULL
    return _probe_write(directory)


def _probe_write(directory: Path) -> QueueFault:
    """Create and remove a file: a file system that turned read-only after an error (ext4's errors=remount-ro,
    a failing SD card) refuses with EROFS although its mount flags and statvfs still say read-write."""
    probe = directory / f".aula-write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        return _ERRNO_FAULTS.get(exc.errno, QueueFault.UNAVAILABLE)
    return QueueFault.UNAVAILABLE


def read_boot_id() -> str:
    """This boot's id; where the kernel does not say, one per process (every start then counts as a boot)."""
    try:
        return BOOT_ID_PATH.read_text().strip() or uuid.uuid4().hex
    except OSError:
        return uuid.uuid4().hex


class OfflineQueue:
    """Durable FIFO of serialised events keyed by seq; bounded by rows, bytes and age (oldest dropped, counted).

    Never raises for a storage fault (see the module docstring): `fault` is set and events wait in memory.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 3 * 24 * 3600.0,
        synchronous: Synchronous | str = Synchronous.FULL,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot_id: str | None = None,
        retry_s: float = 5.0,
        busy_timeout_s: float = 0.5,
    ):
        if max_rows < 1 or max_bytes < 1 or max_age_s <= 0 or retry_s <= 0:
            raise ValueError("max_rows, max_bytes, max_age_s and retry_s must be positive")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self.synchronous = Synchronous(synchronous)
        self.retry_s = retry_s
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._monotonic = monotonic
        self.boot_id = boot_id or read_boot_id()
        # One connection shared by the caller, the sender and paho's network thread, serialised by this lock.
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._rows = 0  # on disk
        self._bytes = 0
        self._next_seq = 1
        self._seq_known = False  # False until the file has been read once: seqs given before are provisional
        self._dropped_full = 0  # totals, persisted and not
        self._dropped_expired = 0
        self._unsaved = {"dropped_full": 0, "dropped_expired": 0}  # counted while the disk could not be written
        self._memory: dict[int, _Held] = {}  # seq -> event, in seq order
        self._memory_bytes = 0
        self._acked: dict[int, str] = {}  # disk rows acknowledged while the disk could not be written: seq -> id
        self._renumbered: dict[str, int] = {}  # event_id -> seq given when a provisional seq was replaced
        self.fault: QueueFault | None = None
        self.fault_detail: str | None = None
        self.generation = 0  # bumped each time the file is (re)opened: the sender then starts its cursor afresh
        self.corrupt_files: list[Path] = []  # where corrupt files were moved, newest last
        self._retry_at = 0.0
        self._closed = False
        with self._lock:
            self._recover()
        logger.info("offline queue %s: %s events waiting, next seq %s%s", self.path, len(self), self._next_seq,
                    f" ({self.fault_detail})" if self.fault else "")

    # ---- clocks ----------------------------------------------------------------------------------------------

    def _mono_ms(self) -> int:
        return int(self._monotonic() * 1000)

    def _wall_ms(self) -> int:
        return int(self._clock() * 1000)

    def _gap_credit_ms(self, then_wall: int, now_wall: int) -> int:
        """Time off between two wall readings, trusted only when both are set and the gap is plausible."""
        gap = now_wall - then_wall
        if then_wall < CLOCK_FLOOR_MS or now_wall < CLOCK_FLOOR_MS or not 0 <= gap <= self.max_age_ms:
            return 0
        return gap

    # ---- opening, faults and recovery ------------------------------------------------------------------------

    def _set_fault(self, exc: QueueError) -> None:
        if self.fault is not exc.fault or self.fault_detail != str(exc):
            logger.error("offline queue %s: %s; events wait in memory and are published directly, retrying every "
                         "%.0f s", self.path, exc, self.retry_s)
        self.fault, self.fault_detail = exc.fault, str(exc)
        self._retry_at = self._monotonic() + self.retry_s

    def _error(self, exc: BaseException, doing: str) -> QueueError:
        fault = classify(exc, self.path.parent)
        return QueueError(fault, f"{fault.value}: cannot {doing} {self.path} ({exc})")

    def _take_lock(self) -> None:
        """One process per queue file: a second one would hand out the same seqs."""
        if self._lock_fd is not None:
            return
        lock_path = f"{self.path}.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
            except OSError:
                fd = os.open(lock_path, os.O_RDONLY)  # a read-only disk that has the lock file already
        except OSError as exc:
            raise self._error(exc, "create the queue's lock file for") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                message = f"{QueueFault.LOCKED.value}: another process uses {self.path}"
                raise QueueError(QueueFault.LOCKED, message) from None
            raise self._error(exc, "lock") from None
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout_s)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("queue %s: no WAL here (journal_mode=%s); still durable, slower", self.path, mode)
            db.execute(f"PRAGMA synchronous={self.synchronous.value.upper()}")
            db.executescript(_SCHEMA_V1)
            self._upgrade(db)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION in place, one version per transaction, keeping every row."""
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(QueueFault.UNAVAILABLE, f"{QueueFault.UNAVAILABLE.value}: {self.path} has schema "
                                                     f"{version}, newer than this software's {SCHEMA_VERSION}")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                db.executescript(f"BEGIN IMMEDIATE;\n{_UPGRADES[target]}\nCOMMIT;")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            logger.info("offline queue %s: schema upgraded to version %s in place", self.path, target)

    def _open(self) -> None:
        """Open the file (moving a corrupt one aside), read its counters and re-base ages from earlier boots."""
        self._take_lock()
        try:
            db = self._connect()
        except QueueError:
            raise
        except sqlite3.Error as exc:
            err = self._error(exc, "open")
            if err.fault is not QueueFault.CORRUPT:
                raise err from None
            self._move_aside(err)
            try:
                db = self._connect()
            except sqlite3.Error as exc2:
                raise self._error(exc2, "create") from None
        self._db = db
        try:
            self._load()
            self._rebase()
        except sqlite3.Error as exc:
            err = self._error(exc, "read")
            if err.fault is not QueueFault.CORRUPT:
                self._close_db()
                raise err from None
            self._handle_corrupt(err)
        self.generation += 1

    def _load(self) -> None:
        db = self._db
        self._rows, self._bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events").fetchone()
        meta = dict(db.execute("SELECT key, value FROM meta"))
        disk_next = meta["next_seq"]
        if not self._seq_known:
            self._renumber_memory(disk_next)
            self._seq_known = True
        self._next_seq = max(self._next_seq, disk_next)
        self._dropped_full = meta["dropped_full"] + self._unsaved["dropped_full"]
        self._dropped_expired = meta["dropped_expired"] + self._unsaved["dropped_expired"]

    def _renumber_memory(self, first: int) -> None:
        """Events numbered before the file could be read get the next seqs from the file, in their order."""
        held, self._memory = list(self._memory.values()), {}
        seq = first
        for h in held:
            old = h.event
            payload = dataclasses.replace(EmotionEvent.from_payload(old.payload), seq=seq).to_payload()
            self._memory_bytes += len(payload) - len(old.payload)
            self._memory[seq] = _Held(QueuedEvent(seq, old.event_id, old.created_ms, payload), h.mono_ms)
            self._renumbered[old.event_id] = seq
            seq += 1
        self._next_seq = seq
        if held:
            logger.warning("offline queue: %s events given provisional seqs while %s was unreadable are now %s-%s",
                           len(held), self.path, first, seq - 1)

    def _rebase(self) -> None:
        """Carry the ages of rows from earlier boots into this boot's monotonic clock (module docstring)."""
        db = self._db
        foreign = db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE boot_id IS NOT ? OR mono_ms IS NULL)",
                             (self.boot_id,)).fetchone()[0]
        if not foreign:
            return
        now_mono, now_wall = self._mono_ms(), self._wall_ms()
        seen = db.execute("SELECT boot_id, mono_ms, wall_ms FROM seen WHERE id = 1").fetchone()
        db.execute("BEGIN IMMEDIATE")
        try:
            if seen is not None and seen[0] != self.boot_id:
                credit = self._gap_credit_ms(seen[2], now_wall)
                # age = (seen.mono - row.mono) + credit, so row.mono becomes now - age
                db.execute("UPDATE events SET mono_ms = ? - ? + mono_ms - ?, boot_id = ? "
                           "WHERE boot_id = ? AND mono_ms IS NOT NULL",
                           (now_mono, seen[1], credit, self.boot_id, seen[0]))
            # Version 1 rows and any from an unknown boot: the wall-clock age when plausible, else they start at 0.
            db.execute(
                "UPDATE events SET boot_id = ?, mono_ms = ? - (CASE WHEN created_ms >= ? AND ? >= ? "
                "AND ? - created_ms BETWEEN 0 AND ? THEN ? - created_ms ELSE 0 END) "
                "WHERE boot_id IS NOT ? OR mono_ms IS NULL",
                (self.boot_id, now_mono, CLOCK_FLOOR_MS, now_wall, CLOCK_FLOOR_MS, now_wall, self.max_age_ms,
                 now_wall, self.boot_id),
            )
            self._mark_seen(now_mono, now_wall)
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _mark_seen(self, now_mono: int, now_wall: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO seen (id, boot_id, mono_ms, wall_ms) VALUES (1, ?, ?, ?)",
                         (self.boot_id, now_mono, now_wall))

    def _drop_stale_lock(self) -> None:
        """Let go of a lock file that is no longer the one at its path (its file system was unmounted)."""
        if self._lock_fd is None:
            return
        try:
            held, now = os.fstat(self._lock_fd), os.stat(f"{self.path}.lock")
            stale = (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino)
        except OSError:
            stale = True
        if stale:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close_db(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as exc:  # closing checkpoints the WAL, which a full disk may refuse
                logger.warning("offline queue %s: close failed (%s)", self.path, exc)
            self._db = None

    def _salvage(self) -> tuple[list[_Held], int | None]:
        """Read the rows a corrupt file still gives, in seq order, skipping past unreadable pages; and its next_seq."""
        rows: list[_Held] = []
        if self._db is None:
            return rows, None
        try:
            meta_next = int(dict(self._db.execute("SELECT key, value FROM meta"))["next_seq"])
        except (sqlite3.Error, KeyError, TypeError, ValueError):
            meta_next = None
        now_mono, now_wall = self._mono_ms(), self._wall_ms()
        after, step, bound = 0, 1, meta_next or 2**53
        while after < bound:
            try:
                cursor = self._db.execute("SELECT seq, event_id, created_ms, payload, boot_id, mono_ms FROM events "
                                          "WHERE seq > ? ORDER BY seq", (after,))
                for seq, event_id, created_ms, payload, boot, mono in cursor:
                    if boot != self.boot_id or mono is None:
                        mono = now_mono - self._gap_credit_ms(created_ms, now_wall)
                    rows.append(_Held(QueuedEvent(seq, event_id, created_ms, bytes(payload)), mono))
                    after, step = seq, 1
                break
            except sqlite3.Error:
                after, step = after + step, step * 2  # past the bad page, by growing steps
        logger.error("offline queue: %s rows read back from the corrupt file", len(rows))
        return rows, meta_next

    def _move_aside(self, err: QueueError) -> None:
        self._close_db()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        logger.error("offline queue %s is corrupt (%s); moved to %s, starting a fresh one", self.path, err, aside)
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
        except OSError as exc:
            raise self._error(exc, "move aside the corrupt") from None
        self.corrupt_files.append(aside)

    def _handle_corrupt(self, err: QueueError) -> None:
        """Keep what can be read, move the corrupt file aside (kept for a post-mortem) and start a fresh one."""
        salvaged, meta_next = self._salvage()
        disk_next = max([meta_next or 1] + [h.event.seq + 1 for h in salvaged])
        if self._seq_known:
            self._next_seq = max(self._next_seq, disk_next)
        else:
            self._renumber_memory(disk_next)  # provisional seqs go after the salvaged ones
            self._seq_known = True
        for h in salvaged:
            if h.event.seq not in self._memory:
                self._memory[h.event.seq] = h
                self._memory_bytes += len(h.event.payload)
        self._memory = dict(sorted(self._memory.items()))
        self._rows = self._bytes = 0
        self._acked.clear()  # they were in the old file
        # The fresh file starts its counters at 0: carry the totals over.
        self._unsaved = {"dropped_full": self._dropped_full, "dropped_expired": self._dropped_expired}
        self._move_aside(err)
        try:
            self._db = self._connect()
            self._load()
        except sqlite3.Error as exc:
            self._close_db()
            raise self._error(exc, "create") from None
        except QueueError:
            self._close_db()
            raise
        self.generation += 1
        self._write([])

    def _recover(self) -> None:
        """Open the file if needed and write what waits in memory; clears the fault on success."""
        try:
            if self.fault in (QueueFault.DISK_FULL, QueueFault.LOCKED) and self._db is not None:
                # These clear without a new connection, and keeping this one keeps the backlog readable (a full
                # disk may not even let a new connection create its -shm file).
                try:
                    self._write([], probe=True)
                except sqlite3.Error as exc:
                    err = self._error(exc, "write to")
                    if err.fault in (QueueFault.DISK_FULL, QueueFault.LOCKED):
                        raise err from None
                    self._close_db()
            if self._db is not None and self.fault not in (QueueFault.DISK_FULL, QueueFault.LOCKED):
                # A file system that turned read-only or went away: the old connection (and lock) still point at
                # it, and only a new one finds the file as it is now, for example on the same disk mounted again.
                self._close_db()
                self._drop_stale_lock()
            if self._db is None:
                self._open()
            self._write([], probe=True)
        except QueueError as exc:
            self._set_fault(exc)
            return
        except sqlite3.Error as exc:
            self._set_fault(self._error(exc, "write"))
            return
        if self.fault is not None:
            logger.warning("offline queue %s: usable again (%s cleared); %s events on disk", self.path,
                           self.fault.value, self._rows)
        self.fault = self.fault_detail = None

    def _guarded(self, doing: str, op: Callable[[], object], fallback: Callable[[], object]):
        """Run `op` on the file; on a storage fault record it (moving a corrupt file aside) and run `fallback`."""
        if self._db is None:
            return fallback()
        try:
            return op()
        except sqlite3.Error as exc:
            err = self._error(exc, doing)
        if err.fault is QueueFault.CORRUPT:
            try:
                self._handle_corrupt(err)
                self.fault = self.fault_detail = None
                return op()
            except QueueError as exc:
                err = exc
            except sqlite3.Error as exc:
                err = self._error(exc, doing)
        self._set_fault(err)
        return fallback()

    def maintain(self) -> None:
        """Retry the file when it has a fault and the retry time has come, then expire old events."""
        with self._lock:
            if self._closed:
                return
            if self.fault is not None and self._monotonic() >= self._retry_at:
                self._recover()
            self.expire()

    # ---- writing ---------------------------------------------------------------------------------------------

    def _meta_add(self, key: str, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    def _drop_oldest(self, reason: str, keep: Callable[[int, int], bool]) -> int:
        """Delete rows oldest first while `keep(mono_ms, size)` is False; return how many. Inside a transaction."""
        dropped = 0
        while self._rows:
            batch = self._db.execute(
                "SELECT seq, mono_ms, LENGTH(payload) FROM events ORDER BY seq LIMIT 64"
            ).fetchall()
            victims = []
            for seq, mono_ms, size in batch:
                if keep(mono_ms, size):
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
            self._meta_add("dropped_full" if reason == "full" else "dropped_expired", dropped)
            logger.warning("offline queue: dropped %s oldest events (%s)", dropped, reason)
        return dropped

    def _within_limits(self, mono_ms: int = 0, size: int = 0) -> bool:
        return self._rows <= self.max_rows and self._bytes <= self.max_bytes

    def _expire_disk(self, now_mono: int) -> int:
        cutoff = now_mono - self.max_age_ms
        row = self._db.execute("SELECT mono_ms FROM events ORDER BY seq LIMIT 1").fetchone()
        if row is None or row[0] >= cutoff:  # the common case costs one indexed lookup
            return 0
        return self._drop_oldest("expired", lambda mono, size: mono >= cutoff)

    def _write(self, new: list[_Held], probe: bool = False) -> tuple[int, int]:
        """Write what waits in memory plus `new` in one transaction; returns (dropped_full, dropped_expired).

        Raises sqlite3.Error with nothing changed in memory when the file refuses it. With `probe` it commits even
        when nothing waits, so a retry learns whether the file takes writes.
        """
        db = self._db
        rows = list(self._memory.values()) + new
        if not probe and not rows and not self._acked and not any(self._unsaved.values()):
            return 0, 0
        now_mono, now_wall = self._mono_ms(), self._wall_ms()
        saved = (self._rows, self._bytes)
        try:
            db.execute("BEGIN IMMEDIATE")
            if self._acked:
                db.executemany("DELETE FROM events WHERE seq = ? AND event_id = ?", list(self._acked.items()))
                self._rows, self._bytes = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events").fetchone()
            for h in rows:
                e = h.event
                db.execute("INSERT OR REPLACE INTO events (seq, event_id, created_ms, payload, boot_id, mono_ms) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (e.seq, e.event_id, e.created_ms, e.payload, self.boot_id,
                                                         h.mono_ms))
                self._rows += 1
                self._bytes += len(e.payload)
            db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'next_seq'", (self._next_seq,))
            for key, n in self._unsaved.items():
                if n:
                    self._meta_add(key, n)
            dropped_full = 0 if self._within_limits() else self._drop_oldest("full", self._within_limits)
            dropped_expired = self._expire_disk(now_mono)
            self._mark_seen(now_mono, now_wall)
            db.execute("COMMIT")
        except sqlite3.Error:
            self._rows, self._bytes = saved
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if self._memory:
            logger.info("offline queue: %s events held in memory are on disk now", len(self._memory))
        self._memory.clear()
        self._memory_bytes = 0
        self._acked.clear()
        self._unsaved = {key: 0 for key in self._unsaved}
        self._dropped_full += dropped_full
        self._dropped_expired += dropped_expired
        return dropped_full, dropped_expired

    def _hold(self, held: _Held) -> None:
        """Keep an event in memory, bounded: the oldest held are dropped and counted as full."""
        self._memory[held.event.seq] = held
        self._memory_bytes += len(held.event.payload)
        limit_rows, limit_bytes = min(self.max_rows, MEMORY_MAX_ROWS), min(self.max_bytes, MEMORY_MAX_BYTES)
        while len(self._memory) > limit_rows or self._memory_bytes > limit_bytes:
            seq = next(iter(self._memory))
            self._memory_bytes -= len(self._memory.pop(seq).event.payload)
            self._dropped_full += 1
            self._unsaved["dropped_full"] += 1
            logger.warning("offline queue: memory bound reached while %s; dropped event seq %s", self.fault, seq)

    def enqueue(self, event: EmotionEvent) -> EmotionEvent:
        """Give the event the next seq and store it (on disk, or in memory while the disk has a fault)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the offline queue is closed")
            seq = self._next_seq
            stored = dataclasses.replace(event, seq=seq)
            payload = stored.to_payload()
            if len(payload) > self.max_bytes:
                raise ValueError(f"event of {len(payload)} bytes is larger than the queue's max_bytes")
            held = _Held(QueuedEvent(seq, stored.event_id, self._wall_ms(), payload), self._mono_ms())
            self._next_seq = seq + 1

            def to_disk() -> None:
                self._write([held])

            def to_memory() -> None:
                self._hold(held)

            if self.fault is not None:
                to_memory()
            else:
                self._guarded("write to", to_disk, to_memory)
            return stored

    # ---- reading and acknowledging ---------------------------------------------------------------------------

    def peek(self, after_seq: int = 0, limit: int = 20) -> list[QueuedEvent]:
        """Return up to `limit` stored events with seq > after_seq, oldest first (disk and memory together)."""
        with self._lock:
            if self._closed:
                return []

            def from_disk() -> list[QueuedEvent]:
                rows = self._db.execute(
                    "SELECT seq, event_id, created_ms, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit + len(self._acked)),
                ).fetchall()
                return [QueuedEvent(s, i, c, bytes(p)) for s, i, c, p in rows if s not in self._acked]

            disk = self._guarded("read", from_disk, list)
            held = [h.event for s, h in self._memory.items() if s > after_seq]
            return sorted(disk + held, key=lambda e: e.seq)[:limit]

    def ack(self, seq: int, event_id: str | None = None) -> bool:
        """Delete an event the broker acknowledged; False when it was already gone (dropped or acked).

        With `event_id`, a seq that was renumbered (a provisional one, see `_renumber_memory`) is still found.
        """
        with self._lock:
            if self._closed:
                return False
            if event_id is not None and event_id in self._renumbered:
                seq = self._renumbered.pop(event_id)
            held = self._memory.get(seq)
            if held is not None and (event_id is None or held.event.event_id == event_id):
                del self._memory[seq]
                self._memory_bytes -= len(held.event.payload)
                return True
            if seq in self._acked:
                return False

            def on_disk() -> bool:
                row = self._db.execute("SELECT event_id, LENGTH(payload) FROM events WHERE seq = ?",
                                       (seq,)).fetchone()
                if row is None or (event_id is not None and row[0] != event_id):
                    return False
                if self.fault is not None:
                    self._acked[seq] = row[0]  # deleted when the disk takes writes again
                    return True
                relax = self.synchronous is Synchronous.FULL
                try:
                    if relax:
                        self._db.execute("PRAGMA synchronous=NORMAL")
                    try:
                        self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
                    finally:
                        if relax:
                            self._db.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error as exc:
                    err = self._error(exc, "delete from")
                    if err.fault is QueueFault.CORRUPT:
                        raise
                    self._set_fault(err)
                    self._acked[seq] = row[0]
                    return True
                self._rows -= 1
                self._bytes -= row[1]
                return True

            return bool(self._guarded("read", on_disk, lambda: False))

    def expire(self) -> int:
        """Drop events older than max_age_s (oldest first, counted); return how many."""
        with self._lock:
            if self._closed:
                return 0
            now_mono = self._mono_ms()
            cutoff = now_mono - self.max_age_ms
            dropped = 0
            for seq in [s for s, h in self._memory.items() if h.mono_ms < cutoff]:
                self._memory_bytes -= len(self._memory.pop(seq).event.payload)
                dropped += 1
            if dropped:
                self._dropped_expired += dropped
                self._unsaved["dropped_expired"] += dropped
                logger.warning("offline queue: dropped %s events held in memory (expired)", dropped)
            if self.fault is not None or self._db is None:
                return dropped

            def on_disk() -> int:
                saved = (self._rows, self._bytes)
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    n = self._expire_disk(now_mono)
                    self._mark_seen(now_mono, self._wall_ms())
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._rows, self._bytes = saved
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._dropped_expired += n
                return n

            return dropped + self._guarded("write to", on_disk, lambda: 0)

    def __len__(self) -> int:
        return self._rows - len(self._acked) + len(self._memory)

    def stats(self) -> QueueStats:
        """Backlog (disk and memory), size, age of the oldest event (None when empty) and the drop counters."""
        with self._lock:
            monos = [h.mono_ms for h in self._memory.values()]
            if self._db is not None and self._rows and not self._closed:
                row = self._guarded(
                    "read",
                    lambda: self._db.execute("SELECT mono_ms FROM events ORDER BY seq LIMIT 1").fetchone(),
                    lambda: None,
                )
                if row is not None and row[0] is not None:
                    monos.append(row[0])
            age = None if not monos else max(0.0, (self._mono_ms() - min(monos)) / 1000)
            return QueueStats(
                backlog=len(self),
                bytes=self._bytes + self._memory_bytes,
                oldest_age_s=None if age is None else round(age, 3),
                dropped_full=self._dropped_full,
                dropped_expired=self._dropped_expired,
                next_seq=self._next_seq,
                fault=self.fault.value if self.fault else None,
                in_memory=len(self._memory),
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._memory and self._db is not None:
                try:  # one last try, so that a disk freed meanwhile keeps them
                    self._write([])
                except sqlite3.Error:
                    pass
            if self._memory:
                logger.error("offline queue %s: %s events held in memory are lost at close (%s)", self.path,
                             len(self._memory), self.fault_detail)
            self._closed = True
            self._close_db()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> OfflineQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
