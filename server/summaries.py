"""Retained per-room summaries on aula/v1/<site>/<room>/summary, at most one per room every interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from device.contract import EmotionEvent, RoomSummary, faces_of, summary_topic
from server.aggregates import Sums
from server.config import SummaryConfig
from server.devices import DeviceRegistry
from server.metrics import IngestStats

logger = logging.getLogger(__name__)

Publisher = Callable[[str, bytes], bool]
_Entry = tuple[int, dict | None, float | None, float | None, int | None]


class RoomSummaries:
    """Keeps the recent windows of each room in memory and publishes their means, rate-limited per room."""

    def __init__(self, config: SummaryConfig, registry: DeviceRegistry, stats: IngestStats, publish: Publisher):
        self.config = config
        self.registry = registry
        self.stats = stats
        self.publish = publish
        self.window_ms = int(config.window_s * 1000)
        self._recent: dict[int, list[_Entry]] = {}
        self._dirty: set[int] = set()
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, room_id: int, event: EmotionEvent) -> None:
        """Called by the ingest path for each new window of an assigned device."""
        if event.window_start_ms < time.time() * 1000 - self.window_ms:
            return  # a backlog from an outage is history, not the room's present
        entry = (event.window_start_ms, event.distribution, event.valence, event.arousal, faces_of(event))
        with self._lock:
            self._recent.setdefault(room_id, []).append(entry)
            self._dirty.add(room_id)

    def touch(self, room_id: int) -> None:
        """A device of the room changed state: the device count in the summary changes."""
        with self._lock:
            self._dirty.add(room_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aula-summaries", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def build(self, room_id: int, now_ms: int | None = None) -> RoomSummary | None:
        """The summary of one room, or None when the room is unknown."""
        name = self.registry.room_name(room_id)
        if name is None:
            return None
        now = int(time.time() * 1000) if now_ms is None else now_ms
        start = now - self.window_ms
        with self._lock:
            entries = [e for e in self._recent.get(room_id, []) if e[0] >= start]
            self._recent[room_id] = entries
        sums = Sums()
        for _, dist, valence, arousal, faces in entries:
            sums.add_values(dist, valence, arousal, faces)
        summary = sums.summary()
        return RoomSummary(
            site=name[0],
            room=name[1],
            room_id=room_id,
            ts_ms=now,
            window_start_ms=start,
            window_end_ms=now,
            windows=summary["windows"],
            distribution=summary["distribution"],
            dominant=summary["dominant"],
            valence=summary["valence"],
            arousal=summary["arousal"],
            faces=summary["faces"],
            devices_online=self.registry.online_in_room(room_id),
        )

    def _run(self) -> None:
        interval = self.config.interval_s
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                due = [r for r in self._dirty if now - self._last.get(r, -1e9) >= interval]
            for room_id in due:
                try:
                    doc = self.build(room_id)
                except Exception:
                    logger.exception("summaries: building room %s failed", room_id)
                    continue
                with self._lock:
                    # Stay dirty while windows remain: the summary must also show them ageing out.
                    if not self._recent.get(room_id):
                        self._dirty.discard(room_id)
                    self._last[room_id] = now
                if doc is None:
                    continue
                if self.publish(summary_topic(doc.site, doc.room), doc.to_payload()):
                    self.stats.add("summaries_published")
                else:
                    with self._lock:
                        self._dirty.add(room_id)  # not connected: try again later
