"""The running server's parts, handed to the HTTP layer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.auth import LoginLimiter
from server.config import ServerConfig
from server.db import Database
from server.devices import DeviceRegistry, effective_state
from server.hub import LiveHub
from server.metrics import IngestStats
from server.storage import Storage


@dataclass
class AppContext:
    """What request handlers read and change; broker and writer are absent when only the HTTP side runs."""

    config: ServerConfig
    db: Database
    storage: Storage
    stats: IngestStats
    hub: LiveHub
    registry: DeviceRegistry
    limiter: LoginLimiter
    fleet: Any = None  # server.fleet.FleetMonitor
    broker: Any = None
    writer: Any = None
    started: float = field(default_factory=time.monotonic)

    def device_view(self, device: dict[str, Any], now_ms: int | None = None) -> dict[str, Any]:
        """A device as the room's live view and the admin list show it."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        state, reason = effective_state(
            device["status"],
            device["state"],
            device["reason"],
            device["last_seen_ms"],
            now,
            int(self.config.devices.stale_after_s * 1000),
        )
        return {
            "device_id": device["device_id"],
            "state": state,
            "reason": reason,
            "last_seen_ms": device["last_seen_ms"],
            "paused": bool(device.get("paused")),
            "health": device["health"],
        }

    def fleet_view(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Every device with its state since when, release, models, latest figures and trend (the fleet page)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        stale_ms = int(self.config.devices.stale_after_s * 1000)
        rooms = {r["id"]: r for r in self.storage.rooms.list()}
        out = []
        for d in self.storage.devices.list():
            # The state the device reports (or offline when silent), also for one not yet in a room: a technician
            # needs to see a new device that is degraded. `status` says whether it is assigned.
            view = self.device_view({**d, "status": "assigned"}, now)
            silent = view["state"] == "offline" and d["state"] != "offline"
            # Since when: for a silent device, from when it went quiet; for a reported state, from the status
            # that first reported it (stored, so it outlives a restart of the server).
            hint = d["last_seen_ms"] + stale_ms if silent else (
                d["state_since_ms"] if view["state"] == d["state"] else None)
            health = d["health"] or {}
            room = rooms.get(d["room_id"])
            view.update({
                "site": d["site"], "reported_room": d["reported_room"], "status": d["status"],
                "room_id": d["room_id"], "room": room["name"] if room else None,
                "since_ms": self.fleet.since(d["site"], d["device_id"], view["state"], now, hint)
                if self.fleet is not None else None,
                "release": (health.get("host") or {}).get("release"),
                "models": health.get("models") or {},
                "trend": self.fleet.trend(d["site"], d["device_id"]) if self.fleet is not None else [],
            })
            out.append(view)
        return out

    def health(self) -> dict[str, Any]:
        """The /healthz document."""
        data = self.stats.snapshot()
        db_ok = self.db.ping()
        data.update(
            {
                "broker_connected": bool(self.broker is not None and self.broker.connected),
                "database": "ok" if db_ok else "unavailable",
                "database_kind": self.db.kind,
                "writer_queue": self.writer.backlog if self.writer is not None else 0,
                "writer_error": self.writer.last_error if self.writer is not None else None,
                "sse_clients": self.hub.clients,
                "uptime_s": round(time.monotonic() - self.started, 1),
            }
        )
        data["status"] = "ok" if db_ok and data["broker_connected"] else "degraded"
        return data
