"""The offline queue under disk and file faults (full, read-only, locked, corrupt), clock jumps and schema upgrades."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from device.offline_queue import SCHEMA_VERSION, OfflineQueue, QueueFault
from tests.mqtt_device_script import make_event

NOV_2026 = 1_795_300_000.0  # a set wall clock
YEAR_S = 365 * 24 * 3600.0
BOOT_A, BOOT_B = "boot-a", "boot-b"


def _event(i: int = 0):
    return make_event("school1", "room101", "dev1", i)


class Clocks:
    """Wall and monotonic clocks a test moves by hand."""

    def __init__(self, wall: float = NOV_2026, mono: float = 1000.0):
        self.wall, self.mono = wall, mono

    def queue(self, path: Path, boot_id: str = BOOT_A, **kwargs) -> OfflineQueue:
        return OfflineQueue(path, clock=lambda: self.wall, monotonic=lambda: self.mono, boot_id=boot_id, **kwargs)


class SmallDisk:
    """A tmpfs of a few hundred KiB mounted for one test (needs root): filled, freed, made read-only."""

    def __init__(self, path: Path, size_kb: int = 400):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path)], check=True,
                       capture_output=True)
        self.ballast = path / "ballast"

    def fill(self) -> None:
        """Write a ballast file until the file system has no free block."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class FailingDisk:
    """A small ext4 file system on a loop device, mounted with errors=remount-ro (as a Pi's root usually is).

    `fail()` makes ext4 take an error, as a failing SD card does, so that it turns read-only under the open
    queue (a tmpfs cannot be remounted read-only while a file is open for writing). `repair()` does what a
    technician or a reboot does: unmount, e2fsck, mount again at the same place.
    """

    def __init__(self, path: Path, image: Path, size_mb: int = 8):
        self.path, self.image = path, image
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True, capture_output=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        self.mount()

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path)], check=True,
                       capture_output=True)
        self.path.chmod(0o755)
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)], check=True, capture_output=True,
                                text=True).stdout.strip()
        self.trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"

    def fail(self) -> None:
        self.trigger.write_text("aula test: the SD card failed\n")

    def repair(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True, capture_output=True)
        # The open queue keeps the old file system alive after a lazy unmount, and mounting the same image again
        # would give that same read-only instance back: check and mount a copy, as after a reboot.
        repaired = self.image.with_suffix(".repaired.img")
        subprocess.run(["cp", "--sparse=always", str(self.image), str(repaired)], check=True, capture_output=True)
        subprocess.run(["e2fsck", "-f", "-y", str(repaired)], capture_output=True)  # exit 1: errors corrected
        self.image = repaired
        self.mount()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def can_fail_ext4(tmp_path: Path) -> str | None:
    """Why a FailingDisk cannot be made here (root, loop devices, ext4's trigger_fs_error), or None."""
    if os.geteuid() != 0:
        return "a loop mount needs root"
    try:
        disk = FailingDisk(tmp_path / "probe-ext4", tmp_path / "probe-ext4.img", 4)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot mount an ext4 image on a loop device ({exc})"
    try:
        return None if disk.trigger.exists() else "this kernel's ext4 has no trigger_fs_error"
    finally:
        disk.close()


def can_mount(tmp_path: Path) -> bool:
    """True where this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    probe = tmp_path / "probe"
    try:
        SmallDisk(probe, 64).close()
    except (subprocess.CalledProcessError, OSError):
        return False
    return True


@pytest.fixture
def small_disk(tmp_path):
    """A SmallDisk, or a skip where mounting is not allowed (the max_page_count tests cover that case)."""
    if not can_mount(tmp_path):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.close()


def _seqs(q: OfflineQueue) -> list[int]:
    return [r.seq for r in q.peek(limit=10_000)]


# ---- a full disk ---------------------------------------------------------------------------------------------------


def test_a_full_disk_keeps_events_in_memory_and_writes_them_once_space_returns(small_disk):
    clocks = Clocks()
    path = small_disk.path / "q.sqlite3"
    q = clocks.queue(path, retry_s=1.0)
    for i in range(3):
        q.enqueue(_event(i))
    small_disk.fill()
    stored = [q.enqueue(_event(i)) for i in range(3, 40)]  # the WAL must grow: the disk refuses
    assert q.fault is QueueFault.DISK_FULL and "disk full" in q.fault_detail
    assert len(q) == 40 and q.stats().in_memory > 0 and q.stats().fault == "disk full"
    assert _seqs(q) == list(range(1, 41))  # disk and memory together, in order: the sender publishes them directly
    assert [e.seq for e in stored] == list(range(4, 41))
    assert q.ack(2) and q.ack(40)  # the broker acknowledges while the disk is full
    clocks.mono += 0.5
    q.maintain()  # too early to retry
    assert q.fault is QueueFault.DISK_FULL
    small_disk.free()
    clocks.mono += 1.0
    q.maintain()
    assert q.fault is None and q.stats().in_memory == 0
    q.enqueue(_event(40))
    q.close()
    with clocks.queue(path) as again:  # all on disk: nothing lost, the acknowledged ones gone
        assert _seqs(again) == [1, *list(range(3, 40)), 41]
        assert again.stats().dropped == 0


def test_a_full_database_is_handled_like_a_full_disk(tmp_path):
    """Where no tmpfs can be mounted: SQLite's max_page_count makes the file full (SQLITE_FULL) all the same."""
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    q = clocks.queue(path, retry_s=1.0)
    q.enqueue(_event(0))
    q._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = q._db.execute("PRAGMA page_count").fetchone()[0]
    q._db.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(1, 30):
        q.enqueue(_event(i))
    assert q.fault is QueueFault.DISK_FULL
    assert _seqs(q) == list(range(1, 31))
    clocks.mono += 2
    q.maintain()
    assert q.fault is QueueFault.DISK_FULL and _seqs(q) == list(range(1, 31))  # still full: retried, nothing lost
    q._db.execute("PRAGMA max_page_count = 1000000")  # space returns
    clocks.mono += 2
    q.maintain()
    assert q.fault is None and q.stats().in_memory == 0
    q.close()
    with clocks.queue(path) as again:
        assert _seqs(again) == list(range(1, 31))


# ---- a read-only disk ----------------------------------------------------------------------------------------------


def _read_only(small_disk_or_dir, on: bool) -> None:
    if isinstance(small_disk_or_dir, SmallDisk):
        small_disk_or_dir.remount("ro" if on else "rw")
    else:
        small_disk_or_dir.chmod(0o555 if on else 0o755)


def test_a_read_only_disk_is_degraded_and_recovers_when_writable(tmp_path):
    clocks = Clocks()
    if can_mount(tmp_path):
        place = SmallDisk(tmp_path / "disk")
        folder = place.path
    elif os.geteuid() != 0:
        place = folder = tmp_path / "disk"  # chmod stops a non-root user
        folder.mkdir()
    else:
        pytest.skip("root without CAP_SYS_ADMIN: neither a read-only mount nor chmod can make a folder read-only")
    try:
        path = folder / "q.sqlite3"
        with clocks.queue(path) as q:
            q.enqueue(_event(0))
        _read_only(place, True)
        q = clocks.queue(path, retry_s=1.0)
        assert q.fault is QueueFault.READ_ONLY, q.fault_detail
        stored = [q.enqueue(_event(i)) for i in range(1, 4)]
        assert len(q) == 3 and not list(folder.glob("*.corrupt-*"))
        _read_only(place, False)
        clocks.mono += 2
        q.maintain()
        assert q.fault is None
        # The file was unreadable at start, so the held events' seqs were provisional: they now follow the file's.
        assert _seqs(q) == [1, 2, 3, 4]
        assert [r.event_id for r in q.peek()][1:] == [e.event_id for e in stored]
        assert q.ack(stored[0].seq, stored[0].event_id)  # a PUBACK for the provisional seq still finds it
        assert _seqs(q) == [1, 3, 4]
        q.close()
    finally:
        if isinstance(place, SmallDisk):
            place.close()


# ---- a locked queue ------------------------------------------------------------------------------------------------


def test_a_locked_queue_is_not_taken_for_corrupt_and_is_retried(tmp_path):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    with clocks.queue(path) as q:
        backlog = [q.enqueue(_event(i)) for i in range(5)]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    q = clocks.queue(path, retry_s=1.0, busy_timeout_s=0.05)
    assert q.fault is QueueFault.LOCKED, q.fault_detail
    held = q.enqueue(_event(5))
    assert len(q) == 1 and q.peek()[0].event_id == held.event_id  # published directly meanwhile
    clocks.mono += 2
    q.maintain()
    assert q.fault is QueueFault.LOCKED  # still held: retried, not renamed
    assert not list(tmp_path.glob("*.corrupt-*"))
    holder.execute("ROLLBACK")
    holder.close()
    clocks.mono += 2
    q.maintain()
    assert q.fault is None
    rows = q.peek(limit=100)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]  # the backlog kept, the held event after it
    assert [r.event_id for r in rows] == [e.event_id for e in backlog] + [held.event_id]
    q.close()


def test_a_second_process_on_the_same_queue_is_locked_out(tmp_path):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    first = clocks.queue(path)
    first.enqueue(_event(0))
    second = clocks.queue(path, retry_s=1.0)  # a second `device run` on the same state directory
    assert second.fault is QueueFault.LOCKED and "another process" in second.fault_detail
    second.enqueue(_event(1))
    assert _seqs(first) == [1] and not list(tmp_path.glob("*.corrupt-*"))
    first.close()
    clocks.mono += 2
    second.maintain()
    assert second.fault is None and _seqs(second) == [1, 2]
    second.close()


# ---- corrupt files -------------------------------------------------------------------------------------------------


def test_a_corrupt_header_is_moved_aside_and_kept(tmp_path):
    path = tmp_path / "q.sqlite3"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with Clocks().queue(path) as q:
        assert q.fault is None and q.enqueue(_event()).seq == 1
    aside = list(tmp_path.glob("q.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage


def _fill_and_corrupt_a_data_page(q: OfflineQueue, n: int = 200) -> None:
    for i in range(n):
        q.enqueue(_event(i))
    q._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = q._db.execute("PRAGMA page_size").fetchone()[0]
    pages = q._db.execute("PRAGMA page_count").fetchone()[0]
    with open(q.path, "r+b") as f:
        f.seek(page * (pages // 2))
        f.write(b"\xa5" * page)


def test_corrupt_data_pages_at_open_are_moved_aside_and_readable_rows_kept(tmp_path):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    q = clocks.queue(path)
    _fill_and_corrupt_a_data_page(q)
    q._db.close()
    q._db = None
    q.close()
    with clocks.queue(path) as again:
        assert again.fault is None
        kept = _seqs(again)
        assert 150 <= len(kept) < 200 and kept == sorted(kept)
        assert again.enqueue(_event(200)).seq == 201  # seqs go on from the old file's
    assert len(list(tmp_path.glob("q.sqlite3.corrupt-*"))) == 1
    with clocks.queue(path) as again:  # the salvaged rows are on disk in the fresh file
        assert _seqs(again) == [*kept, 201]


def test_corruption_found_by_a_normal_read_is_handled_there(tmp_path):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    q = clocks.queue(path)
    _fill_and_corrupt_a_data_page(q)
    q._db.execute("PRAGMA shrink_memory")  # drop the page cache, so the next read meets the page on disk
    rows = q.peek(limit=1000)
    assert q.fault is None and 150 <= len(rows) < 200
    assert len(list(tmp_path.glob("q.sqlite3.corrupt-*"))) == 1
    assert q.enqueue(_event(200)).seq == 201
    assert q.ack(rows[0].seq) and len(q) == len(rows)
    q.close()


# ---- ages: monotonic clock and boot id -----------------------------------------------------------------------------


def test_ages_follow_the_monotonic_clock_not_the_wall_clock(tmp_path):
    clocks = Clocks()
    with clocks.queue(tmp_path / "q.sqlite3", max_age_s=60) as q:
        for i in range(3):
            q.enqueue(_event(i))
        clocks.mono += 30
        q.enqueue(_event(3))
        assert q.stats().oldest_age_s == 30.0
        clocks.wall += YEAR_S  # NTP, or a bad RTC: a year ahead
        assert q.expire() == 0 and q.stats().oldest_age_s == 30.0
        q.enqueue(_event(4))
        clocks.wall -= 2 * YEAR_S  # and a year behind
        assert q.expire() == 0 and len(q) == 5
        clocks.mono += 45  # the first three are 75 s old, the others 45 s
        assert q.expire() == 3
        assert _seqs(q) == [4, 5] and q.stats().dropped_expired == 3


def test_a_restart_in_the_same_boot_keeps_ages_whatever_the_wall_clock_does(tmp_path):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    with clocks.queue(path, max_age_s=60) as q:
        q.enqueue(_event(0))
    clocks.mono += 20
    clocks.wall += YEAR_S
    with clocks.queue(path, max_age_s=60) as q:
        assert q.expire() == 0 and q.stats().oldest_age_s == 20.0
        clocks.mono += 41
        assert q.expire() == 1


@pytest.mark.parametrize(
    ("wall_step_s", "age_after_s"),
    [
        (3600.0, 10 + 3600.0),  # off for an hour, as the wall clock says: the hour counts
        (YEAR_S, 10.0),  # a year: beyond the bound, not believed; the age goes on from before
        (-YEAR_S, 10.0),  # the clock went back: the time off counts as 0
        (-NOV_2026 + 100, 10.0),  # no RTC, not set yet (1970): 0
    ],
)
def test_a_new_boot_carries_ages_over_and_trusts_only_a_plausible_wall_clock_gap(tmp_path, wall_step_s, age_after_s):
    clocks = Clocks()
    path = tmp_path / "q.sqlite3"
    with clocks.queue(path, max_age_s=2 * 3600) as q:
        q.enqueue(_event(0))
        clocks.mono += 10
        q.expire()  # the queue's last use: 10 s after the event
    clocks.mono = 5.0  # a new boot: the monotonic clock starts again
    clocks.wall += wall_step_s
    with clocks.queue(path, boot_id=BOOT_B, max_age_s=2 * 3600) as q:
        assert len(q) == 1 and q.stats().oldest_age_s == age_after_s
        clocks.mono += 2 * 3600 - age_after_s - 1
        assert q.expire() == 0
        clocks.mono += 2
        assert q.expire() == 1


def test_a_version_1_queue_is_upgraded_in_place(tmp_path):
    path = tmp_path / "q.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("""
        CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
                             payload BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta (key, value) VALUES ('schema', 1), ('next_seq', 4), ('dropped_full', 7),
                                             ('dropped_expired', 0);
    """)
    clocks = Clocks()
    wall_ms = int(NOV_2026 * 1000)
    stamps = [wall_ms - 600_000, 100_000, wall_ms - 5 * 24 * 3600_000]  # 10 min ago; clock unset; implausible
    for seq, stamp in zip((1, 2, 3), stamps, strict=True):
        e = _event(seq)
        e.seq = seq
        old.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (seq, e.event_id, stamp, e.to_payload()))
    old.close()
    with clocks.queue(path, max_age_s=3600) as q:
        assert q._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == SCHEMA_VERSION
        assert _seqs(q) == [1, 2, 3] and q.stats().dropped_full == 7
        assert q.stats().oldest_age_s == 600.0  # the plausible wall-clock age of the oldest
        assert q.enqueue(_event(4)).seq == 4
        clocks.mono += 3001
        assert q.expire() == 1  # the 10-minute-old one; the others' ages started at 0
        assert _seqs(q) == [2, 3, 4]
