"""The batch writer's side: events, device touches, statuses, health and its trend rows in one transaction, and
aggregate upserts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device.contract import EmotionEvent, StatusMessage
from server.aggregates import SUM_COLUMNS, Sums, accumulate
from server.db import Connection
from server.health_trend import TREND_SAMPLES
from server.storage.aggregates import AGG_COLUMNS
from server.storage.base import Repository, placeholders
from server.storage.health_trend import HealthRow, add_trend_rows
from server.storage.quarantine import QuarantinedMessage, add_quarantined

_EVENT_ROWS_PER_INSERT = 400  # 9 parameters each: well under SQLite's 32,766 and PostgreSQL's 65,535

_AGG_UPSERT = (
    f"INSERT INTO aggregates (room_id, bucket_ms, {AGG_COLUMNS}) VALUES {placeholders(len(SUM_COLUMNS) + 2)} "
    "ON CONFLICT (room_id, bucket_ms) DO UPDATE SET "
    + ", ".join(f"{c} = aggregates.{c} + excluded.{c}" for c in SUM_COLUMNS)
)


@dataclass
class IncomingEvent:
    """An event for the writer, with its arrival time and raw payload."""

    event: EmotionEvent
    received_ms: int
    payload: bytes


@dataclass
class DeviceTouch:
    """A device seen in a batch: its topic room and the latest time it was heard from."""

    site: str
    device_id: str
    reported_room: str
    seen_ms: int
    room_id: int | None = None  # auto-assignment for a device seen for the first time


@dataclass
class BatchResult:
    """What one write transaction did."""

    inserted: set[str] = field(default_factory=set)
    duplicates: int = 0
    unassigned_full: int = 0  # events of unassigned devices refused: intake.unassigned_events_max was reached
    quarantined: int = 0
    quarantine_full: int = 0  # quarantined messages refused: intake.quarantine_max was reached
    device_rooms: dict[tuple[str, str], tuple[int | None, str]] = field(default_factory=dict)


def add_aggregates(c: Connection, sums: dict[tuple[int, int], Sums]) -> None:
    """Add sums into their (room, bucket) rows, inside the caller's transaction."""
    # Sorted keys: concurrent instances take row locks in one order, so they cannot deadlock.
    c.executemany(_AGG_UPSERT, [(room, bucket, *sums[(room, bucket)].values()) for room, bucket in sorted(sums)])


class IngestRepository(Repository):
    def write_batch(
        self,
        devices: list[DeviceTouch],
        events: list[IncomingEvent],
        statuses: list[tuple[str, str, StatusMessage, bytes, int]],
        healths: list[HealthRow],
        quarantine: list[QuarantinedMessage] | None = None,
        unassigned_max: int | None = None,
        quarantine_max: int | None = None,
        trend_samples: int = TREND_SAMPLES,
    ) -> BatchResult:
        """Store one batch in one transaction; an event_id already stored is counted as a duplicate.

        `statuses` are (site, device_id, message, payload, received_ms); a state other than the stored one sets
        the device's state_since_ms. `healths` are (site, device_id, payload, received_ms, trend figures, the
        message's own ts_ms): each sets the device's last_health and adds a row to its health trend, of which
        the newest `trend_samples` (fleet.trend_samples) are kept.
        `unassigned_max` bounds the stored events of devices without a room, `quarantine_max` the quarantine;
        what is over a bound is left out and counted in the result.
        """
        result = BatchResult()
        with self.c.transaction() as c:
            result.device_rooms = self._touch_devices(c, devices)
            unique: dict[str, IncomingEvent] = {}
            for item in events:
                if item.event.event_id in unique:
                    result.duplicates += 1
                else:
                    unique[item.event.event_id] = item
            batch = self._within_unassigned_cap(c, list(unique.values()), result, unassigned_max)
            for start in range(0, len(batch), _EVENT_ROWS_PER_INSERT):
                chunk = batch[start : start + _EVENT_ROWS_PER_INSERT]
                params: list[Any] = []
                for item in chunk:
                    e = item.event
                    room_id = result.device_rooms.get((e.site, e.device_id), (None, ""))[0]
                    params += [
                        e.event_id,
                        e.site,
                        e.device_id,
                        room_id,
                        e.seq,
                        e.window_start_ms,
                        e.window_end_ms,
                        item.received_ms,
                        item.payload.decode(),
                    ]
                rows = c.fetchall(
                    "INSERT INTO events (event_id, site, device_id, room_id, seq, window_start_ms, window_end_ms, "
                    "received_ms, payload) VALUES "
                    + ", ".join([placeholders(9)] * len(chunk))
                    + " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    params,
                )
                result.inserted.update(r[0] for r in rows)
            result.duplicates += len(batch) - len(result.inserted)
            stored = []
            for item in batch:
                e = item.event
                room_id = result.device_rooms.get((e.site, e.device_id), (None, ""))[0]
                if room_id is not None and e.event_id in result.inserted:
                    stored.append((room_id, e))
            add_aggregates(c, accumulate(stored))
            # state_since_ms: when a status first reported this state (the right-hand sides read the old row).
            c.executemany(
                "UPDATE devices SET state_since_ms = CASE WHEN state = ? AND state_since_ms IS NOT NULL "
                "THEN state_since_ms ELSE ? END, state = ?, state_reason = ?, paused = ?, last_status = ? "
                "WHERE site = ? AND device_id = ?",
                [(s.state.value, received_ms, s.state.value, s.reason, int(s.paused), p.decode(), site, dev)
                 for site, dev, s, p, received_ms in statuses],
            )
            c.executemany(
                "UPDATE devices SET last_health = ? WHERE site = ? AND device_id = ?",
                [(p.decode(), site, dev) for site, dev, p, *_ in healths],
            )
            add_trend_rows(c, healths, trend_samples)
            if quarantine:
                result.quarantine_full = add_quarantined(c, quarantine, quarantine_max)
                result.quarantined = len(quarantine) - result.quarantine_full
        return result

    @staticmethod
    def _within_unassigned_cap(
        c: Connection, batch: list[IncomingEvent], result: BatchResult, cap: int | None
    ) -> list[IncomingEvent]:
        """Leave out the events of unassigned devices beyond the cap on their stored events."""
        if cap is None:
            return batch
        rooms = result.device_rooms
        unassigned = [i for i in batch if rooms.get((i.event.site, i.event.device_id), (None, ""))[0] is None]
        if not unassigned:
            return batch
        stored = int(c.fetchone("SELECT COUNT(*) FROM events WHERE room_id IS NULL")[0])
        refused = {id(i) for i in unassigned[max(0, cap - stored) :]}
        result.unassigned_full = len(refused)
        return [i for i in batch if id(i) not in refused] if refused else batch

    @staticmethod
    def _touch_devices(c: Connection, devices: list[DeviceTouch]) -> dict[tuple[str, str], tuple[int | None, str]]:
        """Insert devices seen for the first time, move last_seen on, and return every device's room."""
        latest: dict[tuple[str, str], DeviceTouch] = {}
        for d in devices:
            key = (d.site, d.device_id)
            prev = latest.get(key)
            if prev is None or d.seen_ms >= prev.seen_ms:
                room_id = d.room_id if d.room_id is not None else (prev.room_id if prev else None)
                latest[key] = DeviceTouch(d.site, d.device_id, d.reported_room, d.seen_ms, room_id)
            elif d.room_id is not None:
                prev.room_id = d.room_id
        out: dict[tuple[str, str], tuple[int | None, str]] = {}
        touches = sorted(latest.values(), key=lambda d: (d.site, d.device_id))  # one lock order: no deadlocks
        for start in range(0, len(touches), 500):
            chunk = touches[start : start + 500]
            params: list[Any] = []
            for d in chunk:
                status = "new" if d.room_id is None else "assigned"
                params += [d.site, d.device_id, d.reported_room, d.room_id, status, d.seen_ms, d.seen_ms]
            rows = c.fetchall(
                "INSERT INTO devices (site, device_id, reported_room, room_id, status, first_seen_ms, last_seen_ms) "
                "VALUES "
                + ", ".join([placeholders(7)] * len(chunk))
                + " ON CONFLICT (site, device_id) DO UPDATE SET reported_room = excluded.reported_room, "
                "last_seen_ms = CASE WHEN excluded.last_seen_ms > devices.last_seen_ms "
                "THEN excluded.last_seen_ms ELSE devices.last_seen_ms END "
                "RETURNING site, device_id, room_id, reported_room",
                params,
            )
            for site, device_id, room_id, reported in rows:
                out[(site, device_id)] = (None if room_id is None else int(room_id), reported)
        return out

    def count_events(self) -> int:
        """How many raw events are stored."""
        return int(self.c.fetchone("SELECT COUNT(*) FROM events")[0])
