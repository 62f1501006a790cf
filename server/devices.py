"""In-memory view of devices and rooms for the hot path: which room a device feeds, and its live state."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from server.storage.ingest import DeviceTouch


@dataclass
class DeviceLive:
    """What the ingest path knows about one device."""

    room_id: int | None
    reported_room: str
    state: str | None = None
    reason: str | None = None
    paused: bool = False  # the privacy pause, from the last status or command ack
    last_seen_ms: int = 0
    tokens: float = 0.0  # the rate limit's bucket, refilled lazily on each message
    refilled: float = 0.0  # time.monotonic() of the last refill


def effective_state(
    status: str, state: str | None, reason: str | None, last_seen_ms: int, now_ms: int, stale_ms: int
) -> tuple[str, str | None]:
    """The state shown on the dashboard: new, or the last status, turned offline when the device went silent."""
    if status == "new":
        return "new", reason
    if state in (None, "online", "degraded") and now_ms - last_seen_ms > stale_ms:
        return "offline", f"no messages for {(now_ms - last_seen_ms) // 1000} s"
    if state is None:
        return "online", None  # events arrive but the retained status was never seen
    return state, reason


@dataclass(frozen=True)
class DeviceLimits:
    """Bounds on what unknown or flooding senders can make the registry hold (server/config.py: intake)."""

    new_per_site: int = 200
    new_total: int = 5000
    rate_per_s: float = 100.0
    burst: int = 2000


class DeviceRegistry:
    """Thread-safe cache of device -> room and room id -> (site, room); the database stays the authority.

    Devices without a room are bounded per site and in all (their ids are the sender's choice), each device's
    messages pass a token bucket, and unassigned devices not heard from for a while are evicted.
    """

    def __init__(self, auto_assign: bool = False, stale_after_s: float = 120.0, limits: DeviceLimits | None = None):
        self.auto_assign = auto_assign
        self.stale_ms = int(stale_after_s * 1000)
        self.limits = limits or DeviceLimits()
        self._lock = threading.Lock()
        self._devices: dict[tuple[str, str], DeviceLive] = {}
        self._rooms: dict[tuple[str, str], int] = {}
        self._room_names: dict[int, tuple[str, str]] = {}
        self._unassigned: Counter[str] = Counter()  # site -> devices without a room held here
        self._unassigned_total = 0  # their sum, kept apart: summing per unknown device would cost O(sites)

    def _add(self, key: tuple[str, str], live: DeviceLive) -> DeviceLive:
        live.tokens, live.refilled = float(self.limits.burst), time.monotonic()
        self._devices[key] = live
        if live.room_id is None:
            self._count(key[0], 1)
        return live

    def _set_room(self, key: tuple[str, str], live: DeviceLive, room_id: int | None) -> None:
        if (live.room_id is None) != (room_id is None):
            self._count(key[0], 1 if room_id is None else -1)
        live.room_id = room_id

    def _count(self, site: str, n: int) -> None:
        self._unassigned[site] += n
        self._unassigned_total += n
        if not self._unassigned[site]:
            del self._unassigned[site]

    def _full(self, site: str) -> bool:
        return (
            self._unassigned[site] >= self.limits.new_per_site
            or self._unassigned_total >= self.limits.new_total
        )

    def touch(
        self, site: str, device_id: str, reported_room: str, seen_ms: int
    ) -> tuple[DeviceTouch, DeviceLive] | None:
        """Note that a device was heard from; a device seen for the first time may be auto-assigned.

        None: an unknown device that would not get a room while the caps on unassigned devices are reached.
        """
        key = (site, device_id)
        with self._lock:
            live = self._devices.get(key)
            if live is None:
                room_id = self._rooms.get((site, reported_room)) if self.auto_assign else None
                if room_id is None and self._full(site):
                    return None
                live = self._add(key, DeviceLive(room_id=room_id, reported_room=reported_room))
            live.last_seen_ms = max(live.last_seen_ms, seen_ms)
            # The cached room counts only when the database inserts the device; a stored device keeps its own.
            return DeviceTouch(site, device_id, reported_room, seen_ms, live.room_id), live

    def allow(self, site: str, device_id: str, consume: bool = True) -> bool | None:
        """The rate limit: True when the device may send this message, None for a device not held here."""
        with self._lock:
            live = self._devices.get((site, device_id))
            if live is None:
                return None
            now = time.monotonic()
            limits = self.limits
            live.tokens = min(float(limits.burst), live.tokens + (now - live.refilled) * limits.rate_per_s)
            live.refilled = now
            if live.tokens < 1.0:
                return False
            if consume:
                live.tokens -= 1.0
            return True

    def evict_stale(self, not_seen_since_ms: int) -> int:
        """Forget unassigned devices not heard from since the given time; return how many."""
        with self._lock:
            stale = [k for k, d in self._devices.items() if d.room_id is None and d.last_seen_ms < not_seen_since_ms]
            for key in stale:
                del self._devices[key]
                self._count(key[0], -1)
            return len(stale)

    def unassigned(self) -> int:
        """Devices without a room held here."""
        with self._lock:
            return self._unassigned_total

    def set_state(self, site: str, device_id: str, state: str, reason: str | None,
                  paused: bool | None = None) -> DeviceLive | None:
        with self._lock:
            live = self._devices.get((site, device_id))
            if live is not None:
                live.state, live.reason = state, reason
                if paused is not None:
                    live.paused = paused
            return live

    def set_paused(self, site: str, device_id: str, paused: bool) -> DeviceLive | None:
        with self._lock:
            live = self._devices.get((site, device_id))
            if live is not None:
                live.paused = paused
            return live

    def live(self, site: str, device_id: str) -> DeviceLive | None:
        with self._lock:
            return self._devices.get((site, device_id))

    def update_rooms(self, device_rooms: dict[tuple[str, str], tuple[int | None, str]]) -> None:
        """Take the rooms the database returned (another instance or an admin may have changed them)."""
        now = int(time.time() * 1000)
        with self._lock:
            for key, (room_id, reported) in device_rooms.items():
                live = self._devices.get(key)
                if live is None:
                    # An unassigned one counts as heard from now, so the database forgets it first
                    # (intake.new_device_ttl_s); an assigned one stays offline until it speaks.
                    seen = now if room_id is None else 0
                    self._add(key, DeviceLive(room_id=room_id, reported_room=reported, last_seen_ms=seen))
                else:
                    self._set_room(key, live, room_id)

    def reload(self, device_rooms: dict[tuple[str, str], tuple[int | None, str]], rooms: dict[tuple[str, str], int]):
        self.update_rooms(device_rooms)
        with self._lock:
            self._rooms = dict(rooms)
            self._room_names = {room_id: key for key, room_id in rooms.items()}

    def add_room(self, site: str, room: str, room_id: int) -> None:
        with self._lock:
            self._rooms[(site, room)] = room_id
            self._room_names[room_id] = (site, room)

    @property
    def count(self) -> int:
        return len(self._devices)

    def room_name(self, room_id: int) -> tuple[str, str] | None:
        return self._room_names.get(room_id)

    def online_in_room(self, room_id: int) -> int:
        """Devices of a room whose effective state is online or degraded."""
        now = int(time.time() * 1000)
        with self._lock:
            devices = [d for d in self._devices.values() if d.room_id == room_id]
        return sum(
            1
            for d in devices
            if effective_state("assigned", d.state, d.reason, d.last_seen_ms, now, self.stale_ms)[0]
            in ("online", "degraded")
        )

    def status_view(self, device_id: str, live: DeviceLive) -> dict[str, Any]:
        """The stream's `status` event for a device."""
        now = int(time.time() * 1000)
        state, reason = effective_state("assigned", live.state, live.reason, live.last_seen_ms, now, self.stale_ms)
        return {"device_id": device_id, "state": state, "reason": reason, "last_seen_ms": live.last_seen_ms,
                "paused": live.paused}
