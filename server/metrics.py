"""Counters of the ingest path, and their Prometheus text rendering."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from server.validation import REASONS


class IngestStats:
    """Thread-safe counters shared by the MQTT callback, the writer and the HTTP layer."""

    COUNTERS = (
        "events_ingested",  # stored for the first time
        "events_duplicate",  # already seen (by event_id), not stored again
        "events_quarantined",  # kept unread (a newer schema) for a replay after an upgrade
        "events_invalid",
        "status_messages",
        "health_messages",
        "commands_sent",
        "command_acks",
        "batches",
        "write_errors",
        "summaries_published",
        "sse_dropped",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter({r: 0 for r in REASONS})

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def invalid(self, reason: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts["events_invalid"] += n
                self._invalid[reason] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = {name: self._counts[name] for name in self.COUNTERS}
            data["invalid_by_reason"] = dict(self._invalid)
        return data


_HELP = {
    "events_ingested": ("counter", "Events stored for the first time."),
    "events_duplicate": ("counter", "Events received again (same event_id) and not stored twice."),
    "events_quarantined": ("counter", "Events of a newer schema kept in quarantine for a replay after an upgrade."),
    "status_messages": ("counter", "Valid status messages."),
    "health_messages": ("counter", "Valid health messages."),
    "commands_sent": ("counter", "Commands sent to devices (privacy pause and resume from the dashboard)."),
    "command_acks": ("counter", "Command acknowledgements received from devices of a room."),
    "batches": ("counter", "Write transactions committed."),
    "write_errors": ("counter", "Write transactions that failed and were retried."),
    "summaries_published": ("counter", "Room summaries published."),
    "sse_dropped": ("counter", "Stream events dropped because a client read too slowly."),
    "writer_queue": ("gauge", "Messages waiting for the writer."),
    "sse_clients": ("gauge", "Open live streams."),
    "devices": ("gauge", "Known devices."),
}


def prometheus_text(health: dict[str, Any]) -> str:
    """Render the /healthz document in the Prometheus text exposition format."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP aula_{name} {help_text}")
        lines.append(f"# TYPE aula_{name} {kind}")
        lines.extend(f"aula_{name}{labels} {value}" for labels, value in samples)

    for name, (kind, help_text) in _HELP.items():
        if name in health:
            suffix = "_total" if kind == "counter" else ""
            metric(name + suffix, kind, help_text, [("", health[name])])
    reasons = health.get("invalid_by_reason", {})
    metric(
        "events_invalid_total",
        "counter",
        "Messages rejected, by reason.",
        [(f'{{reason="{reason}"}}', count) for reason, count in sorted(reasons.items())],
    )
    connected = int(health["broker_connected"])
    metric("broker_connected", "gauge", "1 while connected to the MQTT broker.", [("", connected)])
    metric("database_up", "gauge", "1 while the database answers.", [("", int(health["database"] == "ok"))])
    return "\n".join(lines) + "\n"
