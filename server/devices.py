"""In-memory view of devices and rooms for the hot path: which room a device feeds, and its live state."""

from __future__ import annotations

import threading
import time
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
    last_seen_ms: int = 0


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


class DeviceRegistry:
    """Thread-safe cache of device -> room and room id -> (site, room); the database stays the authority."""

    def __init__(self, auto_assign: bool = False, stale_after_s: float = 120.0):
        self.auto_assign = auto_assign
        self.stale_ms = int(stale_after_s * 1000)
        self._lock = threading.Lock()
        self._devices: dict[tuple[str, str], DeviceLive] = {}
        self._rooms: dict[tuple[str, str], int] = {}
        self._room_names: dict[int, tuple[str, str]] = {}

    def touch(self, site: str, device_id: str, reported_room: str, seen_ms: int) -> tuple[DeviceTouch, DeviceLive]:
        """Note that a device was heard from; a device seen for the first time may be auto-assigned."""
        key = (site, device_id)
        with self._lock:
            live = self._devices.get(key)
            if live is None:
                room_id = self._rooms.get((site, reported_room)) if self.auto_assign else None
                live = self._devices[key] = DeviceLive(room_id=room_id, reported_room=reported_room)
            live.last_seen_ms = max(live.last_seen_ms, seen_ms)
            # The cached room counts only when the database inserts the device; a stored device keeps its own.
            return DeviceTouch(site, device_id, reported_room, seen_ms, live.room_id), live

    def set_state(self, site: str, device_id: str, state: str, reason: str | None) -> DeviceLive | None:
        with self._lock:
            live = self._devices.get((site, device_id))
            if live is not None:
                live.state, live.reason = state, reason
            return live

    def update_rooms(self, device_rooms: dict[tuple[str, str], tuple[int | None, str]]) -> None:
        """Take the rooms the database returned (another instance or an admin may have changed them)."""
        with self._lock:
            for key, (room_id, reported) in device_rooms.items():
                live = self._devices.get(key)
                if live is None:
                    self._devices[key] = DeviceLive(room_id=room_id, reported_room=reported)
                else:
                    live.room_id = room_id

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
        return {"device_id": device_id, "state": state, "reason": reason, "last_seen_ms": live.last_seen_ms}
