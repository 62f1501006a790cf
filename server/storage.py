"""Every read and write of the server's data: devices, events, aggregates, users, sessions, tokens, segments."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from device.contract import EmotionEvent, StatusMessage
from server.aggregates import BUCKET_MS, SUM_COLUMNS, Sums, accumulate, bucket_of
from server.db import Connection, Database
from server.passwords import check_new_password, hash_password, new_token, token_hash, verify_password

logger = logging.getLogger(__name__)

ROLES = ("teacher", "admin")
_EVENT_ROWS_PER_INSERT = 400  # 9 parameters each: well under SQLite's 32,766 and PostgreSQL's 65,535
_RETENTION_CHUNK = 5000  # short deletes, so ingest is not held up behind one long transaction


def now_ms() -> int:
    return int(time.time() * 1000)


class Conflict(ValueError):
    """The thing to create exists already."""


class NotFound(LookupError):
    """A referenced room, user, device or segment does not exist."""


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
    device_rooms: dict[tuple[str, str], tuple[int | None, str]] = field(default_factory=dict)


def _placeholders(n: int) -> str:
    return "(" + ", ".join("?" * n) + ")"


_AGG_COLUMNS = ", ".join(SUM_COLUMNS)
_AGG_UPSERT = (
    f"INSERT INTO aggregates (room_id, bucket_ms, {_AGG_COLUMNS}) VALUES {_placeholders(len(SUM_COLUMNS) + 2)} "
    "ON CONFLICT (room_id, bucket_ms) DO UPDATE SET "
    + ", ".join(f"{c} = aggregates.{c} + excluded.{c}" for c in SUM_COLUMNS)
)
_AGG_SUMS = ", ".join(f"SUM({c})" for c in SUM_COLUMNS)


def _room(row: tuple) -> dict[str, Any]:
    return {"id": int(row[0]), "site": row[1], "room": row[2], "name": row[3]}


class Storage:
    """The server's data access; each method runs on the calling thread's connection."""

    def __init__(self, db: Database):
        self.db = db

    @property
    def c(self) -> Connection:
        return self.db.conn()

    # ---- rooms ----------------------------------------------------------------------------------------------

    def create_room(self, site: str, room: str, name: str) -> dict[str, Any]:
        with self.c.transaction() as c:
            if c.fetchone("SELECT id FROM rooms WHERE site = ? AND room = ?", (site, room)):
                raise Conflict(f"room {site}/{room} exists")
            row = c.fetchone(
                "INSERT INTO rooms (site, room, name, created_ms) VALUES (?, ?, ?, ?) RETURNING id, site, room, name",
                (site, room, name, now_ms()),
            )
        return _room(row)

    def get_room(self, room_id: int) -> dict[str, Any] | None:
        row = self.c.fetchone("SELECT id, site, room, name FROM rooms WHERE id = ?", (room_id,))
        return _room(row) if row else None

    def list_rooms(self, room_ids: set[int] | None = None) -> list[dict[str, Any]]:
        """All rooms, or only those in `room_ids`."""
        rows = self.c.fetchall("SELECT id, site, room, name FROM rooms ORDER BY site, room")
        return [_room(r) for r in rows if room_ids is None or int(r[0]) in room_ids]

    def room_index(self) -> dict[tuple[str, str], int]:
        """(site, room) -> room id, for auto-assignment."""
        return {(r[0], r[1]): int(r[2]) for r in self.c.fetchall("SELECT site, room, id FROM rooms")}

    # ---- devices --------------------------------------------------------------------------------------------

    _DEVICE_COLUMNS = (
        "site, device_id, reported_room, room_id, status, first_seen_ms, last_seen_ms, state, state_reason, "
        "paused, last_health"
    )

    @staticmethod
    def _device(row: tuple) -> dict[str, Any]:
        return {
            "site": row[0],
            "device_id": row[1],
            "reported_room": row[2],
            "room_id": None if row[3] is None else int(row[3]),
            "status": row[4],
            "first_seen_ms": int(row[5]),
            "last_seen_ms": int(row[6]),
            "state": row[7],
            "reason": row[8],
            "paused": bool(row[9]),
            "health": json.loads(row[10]) if row[10] else None,
        }

    def list_devices(self, room_id: int | None = None) -> list[dict[str, Any]]:
        """All devices, or those assigned to one room."""
        sql = f"SELECT {self._DEVICE_COLUMNS} FROM devices"
        params: tuple = ()
        if room_id is not None:
            sql += " WHERE room_id = ?"
            params = (room_id,)
        return [self._device(r) for r in self.c.fetchall(sql + " ORDER BY site, device_id", params)]

    def get_device(self, site: str, device_id: str) -> dict[str, Any] | None:
        row = self.c.fetchone(
            f"SELECT {self._DEVICE_COLUMNS} FROM devices WHERE site = ? AND device_id = ?", (site, device_id)
        )
        return self._device(row) if row else None

    def device_rooms(self) -> dict[tuple[str, str], tuple[int | None, str]]:
        """(site, device_id) -> (room id or None, reported room)."""
        rows = self.c.fetchall("SELECT site, device_id, room_id, reported_room FROM devices")
        return {(r[0], r[1]): (None if r[2] is None else int(r[2]), r[3]) for r in rows}

    def assign_device(self, site: str, device_id: str, room_id: int) -> tuple[dict[str, Any], int]:
        """Assign a device to a room; its stored events that had no room yet are counted into that room.

        Returns the device and how many events were back-filled.
        """
        with self.c.transaction() as c:
            if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                raise NotFound(f"room {room_id} does not exist")
            # Locks the device row, so a concurrent batch of this device commits before or after, never between.
            row = c.fetchone(
                "UPDATE devices SET room_id = ?, status = 'assigned' WHERE site = ? AND device_id = ? RETURNING id",
                (room_id, site, device_id),
            )
            if row is None:
                raise NotFound(f"device {site}/{device_id} is unknown")
            backfilled = self._backfill(c, site, device_id, room_id)
        device = self.get_device(site, device_id)
        assert device is not None
        return device, backfilled

    def _backfill(self, c: Connection, site: str, device_id: str, room_id: int) -> int:
        rows = c.fetchall(
            "UPDATE events SET room_id = ? WHERE site = ? AND device_id = ? AND room_id IS NULL RETURNING payload",
            (room_id, site, device_id),
        )
        items = []
        for (payload,) in rows:
            try:
                items.append((room_id, EmotionEvent.from_payload(payload)))
            except Exception:  # stored payloads were validated; a bad one must not block the assignment
                logger.warning("stored event of %s/%s cannot be read; left out of the aggregates", site, device_id)
        self._add_aggregates(c, accumulate(items))
        if rows:
            logger.info("assigned %s/%s to room %s with %s earlier events", site, device_id, room_id, len(rows))
        return len(rows)

    def assign_matching_new_devices(self, site: str, room: str, room_id: int) -> int:
        """Auto-assignment: give a new room the `new` devices whose topic names it."""
        rows = self.c.fetchall(
            "SELECT device_id FROM devices WHERE site = ? AND reported_room = ? AND room_id IS NULL", (site, room)
        )
        for (device_id,) in rows:
            self.assign_device(site, device_id, room_id)
        return len(rows)

    # ---- ingest ---------------------------------------------------------------------------------------------

    def write_batch(
        self,
        devices: list[DeviceTouch],
        events: list[IncomingEvent],
        statuses: list[tuple[str, str, StatusMessage, bytes]],
        healths: list[tuple[str, str, bytes]],
    ) -> BatchResult:
        """Store one batch in one transaction; an event_id already stored is counted as a duplicate."""
        result = BatchResult()
        with self.c.transaction() as c:
            result.device_rooms = self._touch_devices(c, devices)
            unique: dict[str, IncomingEvent] = {}
            for item in events:
                if item.event.event_id in unique:
                    result.duplicates += 1
                else:
                    unique[item.event.event_id] = item
            batch = list(unique.values())
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
                    + ", ".join([_placeholders(9)] * len(chunk))
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
            self._add_aggregates(c, accumulate(stored))
            c.executemany(
                "UPDATE devices SET state = ?, state_reason = ?, paused = ?, last_status = ? "
                "WHERE site = ? AND device_id = ?",
                [(s.state.value, s.reason, int(s.paused), p.decode(), site, dev) for site, dev, s, p in statuses],
            )
            c.executemany(
                "UPDATE devices SET last_health = ? WHERE site = ? AND device_id = ?",
                [(p.decode(), site, dev) for site, dev, p in healths],
            )
        return result

    def _touch_devices(
        self, c: Connection, devices: list[DeviceTouch]
    ) -> dict[tuple[str, str], tuple[int | None, str]]:
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
                + ", ".join([_placeholders(7)] * len(chunk))
                + " ON CONFLICT (site, device_id) DO UPDATE SET reported_room = excluded.reported_room, "
                "last_seen_ms = CASE WHEN excluded.last_seen_ms > devices.last_seen_ms "
                "THEN excluded.last_seen_ms ELSE devices.last_seen_ms END "
                "RETURNING site, device_id, room_id, reported_room",
                params,
            )
            for site, device_id, room_id, reported in rows:
                out[(site, device_id)] = (None if room_id is None else int(room_id), reported)
        return out

    @staticmethod
    def _add_aggregates(c: Connection, sums: dict[tuple[int, int], Sums]) -> None:
        # Sorted keys: concurrent instances take row locks in one order, so they cannot deadlock.
        c.executemany(_AGG_UPSERT, [(room, bucket, *sums[(room, bucket)].values()) for room, bucket in sorted(sums)])

    # ---- aggregates -----------------------------------------------------------------------------------------

    def buckets(self, room_id: int, since_ms: int) -> list[dict[str, Any]]:
        """The room's 10 s buckets from `since_ms` on, oldest first, as means."""
        rows = self.c.fetchall(
            f"SELECT bucket_ms, {_AGG_COLUMNS} FROM aggregates WHERE room_id = ? AND bucket_ms >= ? ORDER BY bucket_ms",
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

    # ---- users ----------------------------------------------------------------------------------------------

    def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        check_new_password(password)
        password_hash = hash_password(password)
        with self.c.transaction() as c:
            if c.fetchone("SELECT id FROM users WHERE username = ?", (username,)):
                raise Conflict(f"user {username} exists")
            c.execute(
                "INSERT INTO users (username, password_hash, role, created_ms) VALUES (?, ?, ?, ?)",
                (username, password_hash, role, now_ms()),
            )
        return {"username": username, "role": role, "rooms": []}

    def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user when the password matches, else None (in about the same time either way)."""
        from server.passwords import burn_time

        row = self.c.fetchone("SELECT id, username, role, password_hash FROM users WHERE username = ?", (username,))
        if row is None:
            burn_time(password)
            return None
        if not verify_password(password, row[3]):
            return None
        return {"id": int(row[0]), "username": row[1], "role": row[2]}

    def list_users(self) -> list[dict[str, Any]]:
        users = self.c.fetchall("SELECT id, username, role FROM users ORDER BY username")
        links = self.c.fetchall("SELECT user_id, room_id FROM user_rooms ORDER BY room_id")
        rooms: dict[int, list[int]] = {}
        for user_id, room_id in links:
            rooms.setdefault(int(user_id), []).append(int(room_id))
        return [{"username": u[1], "role": u[2], "rooms": rooms.get(int(u[0]), [])} for u in users]

    def add_user_room(self, username: str, room_id: int) -> dict[str, Any]:
        with self.c.transaction() as c:
            user = c.fetchone("SELECT id, role FROM users WHERE username = ?", (username,))
            if user is None:
                raise NotFound(f"user {username} does not exist")
            if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                raise NotFound(f"room {room_id} does not exist")
            c.execute(
                "INSERT INTO user_rooms (user_id, room_id) VALUES (?, ?) ON CONFLICT (user_id, room_id) DO NOTHING",
                (user[0], room_id),
            )
        return {"username": username, "role": user[1], "rooms": sorted(self.user_room_ids(int(user[0])))}

    def user_room_ids(self, user_id: int) -> set[int]:
        return {int(r[0]) for r in self.c.fetchall("SELECT room_id FROM user_rooms WHERE user_id = ?", (user_id,))}

    # ---- sessions and API tokens ----------------------------------------------------------------------------

    def create_session(self, user_id: int, ttl_ms: int) -> tuple[str, str]:
        """Return (cookie token, CSRF token); only the cookie's hash is stored."""
        token = new_token()
        csrf = secrets.token_urlsafe(24)
        created = now_ms()
        with self.c.transaction() as c:
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)",
                (token_hash(token), user_id, csrf, created, created + ttl_ms),
            )
        return token, csrf

    def session(self, token: str) -> dict[str, Any] | None:
        row = self.c.fetchone(
            "SELECT u.id, u.username, u.role, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = ? AND s.expires_ms > ?",
            (token_hash(token), now_ms()),
        )
        if row is None:
            return None
        return {"user_id": int(row[0]), "username": row[1], "role": row[2], "csrf": row[3]}

    def delete_session(self, token: str) -> None:
        with self.c.transaction() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

    def create_token(self, name: str, room_ids: list[int], created_by: str | None) -> dict[str, Any]:
        """Create an API token for some rooms; the secret is returned once and stored only as a hash."""
        token = new_token("aula_")
        with self.c.transaction() as c:
            for room_id in room_ids:
                if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                    raise NotFound(f"room {room_id} does not exist")
            row = c.fetchone(
                "INSERT INTO api_tokens (name, token_hash, created_by, created_ms) VALUES (?, ?, ?, ?) RETURNING id",
                (name, token_hash(token), created_by, now_ms()),
            )
            c.executemany(
                "INSERT INTO api_token_rooms (token_id, room_id) VALUES (?, ?)", [(row[0], r) for r in set(room_ids)]
            )
        return {"id": int(row[0]), "name": name, "token": token, "room_ids": sorted(set(room_ids))}

    def token(self, token: str) -> dict[str, Any] | None:
        row = self.c.fetchone(
            "SELECT id, name FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash(token),)
        )
        if row is None:
            return None
        links = self.c.fetchall("SELECT room_id FROM api_token_rooms WHERE token_id = ?", (row[0],))
        rooms = {int(r[0]) for r in links}
        return {"id": int(row[0]), "name": row[1], "rooms": rooms}

    # ---- segments -------------------------------------------------------------------------------------------

    def start_segment(self, room_id: int, name: str, by: str | None, at_ms: int | None = None) -> dict[str, Any]:
        """Start a segment; a segment still open in the room ends where the new one starts."""
        start = now_ms() if at_ms is None else at_ms
        with self.c.transaction() as c:
            c.execute("UPDATE segments SET end_ms = ? WHERE room_id = ? AND end_ms IS NULL", (start, room_id))
            row = c.fetchone(
                "INSERT INTO segments (room_id, name, start_ms, created_by) VALUES (?, ?, ?, ?) RETURNING id",
                (room_id, name, start, by),
            )
        return {"id": int(row[0]), "name": name, "start_ms": start}

    def stop_segment(self, room_id: int, segment_id: int, at_ms: int | None = None) -> dict[str, Any]:
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

    def segments(self, room_id: int) -> list[dict[str, Any]]:
        """The room's segments, oldest first, each with its merged emotion summary."""
        rows = self.c.fetchall(
            "SELECT id, name, start_ms, end_ms FROM segments WHERE room_id = ? ORDER BY start_ms, id", (room_id,)
        )
        out = []
        for seg_id, name, start, end in rows:
            summary = self.merged(room_id, int(start), None if end is None else int(end)).summary()
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
                }
            )
        return out

    # ---- retention ------------------------------------------------------------------------------------------

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

    def apply_retention(
        self, raw_days: float, aggregate_days: float | None, at_ms: int | None = None
    ) -> dict[str, int]:
        """Delete raw events (and optionally aggregates) older than their limits, and expired sessions."""
        now = now_ms() if at_ms is None else at_ms
        done = {"events": self._delete_chunks("events", "window_start_ms", "id", now - int(raw_days * 86_400_000))}
        if aggregate_days is not None:
            cutoff = bucket_of(now - int(aggregate_days * 86_400_000)) - BUCKET_MS
            with self.c.transaction() as c:
                done["aggregates"] = max(c.execute("DELETE FROM aggregates WHERE bucket_ms < ?", (cutoff,)).rowcount, 0)
        with self.c.transaction() as c:
            done["sessions"] = max(c.execute("DELETE FROM sessions WHERE expires_ms < ?", (now,)).rowcount, 0)
        return done

    def count_events(self) -> int:
        return int(self.c.fetchone("SELECT COUNT(*) FROM events")[0])
