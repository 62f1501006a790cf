"""The single writer thread: drains the intake queue in batches, one transaction each, then acknowledges.

The queue is one FIFO per device, taken from in turn, so a device that floods waits behind its own messages only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.contract import StatusMessage
from server.devices import DeviceRegistry
from server.health_trend import TREND_SAMPLES
from server.metrics import IngestStats
from server.storage import Storage
from server.storage.ingest import BatchResult, DeviceTouch, IncomingEvent
from server.storage.quarantine import QuarantinedMessage

logger = logging.getLogger(__name__)

AckToken = Any  # opaque to the writer: handed back to the broker client after the commit


@dataclass(slots=True)
class WriteItem:
    """One message for the writer; `kind` is event, status, health, quarantine, or ack (only acknowledge, in order).

    `device` is (site, device_id) when `touch` is absent (ack and quarantine items): the queue it joins.
    """

    kind: str
    touch: DeviceTouch | None = None
    event: IncomingEvent | None = None
    status: StatusMessage | None = None
    payload: bytes = b""
    trend: dict[str, float | None] | None = None  # a health message's trend figures (server/health_trend.py)
    sent_ms: int | None = None  # a health message's own ts_ms: a second delivery adds no second trend row
    ack: AckToken | None = None
    quarantined: QuarantinedMessage | None = None
    device: tuple[str, str] | None = None

    @property
    def key(self) -> tuple[str, str]:
        if self.touch is not None:
            return (self.touch.site, self.touch.device_id)
        return self.device or ("", "")


class BatchWriter:
    """Writes what the ingest path queues, in batches; never drops: a failed batch is retried until it commits."""

    def __init__(
        self,
        storage: Storage,
        stats: IngestStats,
        registry: DeviceRegistry,
        acker: Callable[[list[AckToken]], None],
        batch_max: int = 1000,
        queue_max: int = 50_000,
        refresh_s: float = 10.0,
        unassigned_max: int | None = None,
        quarantine_max: int | None = None,
        forget_new_after_s: float | None = None,
        trend_samples: int = TREND_SAMPLES,
    ):
        self.storage = storage
        self.stats = stats
        self.registry = registry
        self.acker = acker
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.refresh_s = refresh_s
        self.unassigned_max = unassigned_max
        self.quarantine_max = quarantine_max
        self.forget_new_after_s = forget_new_after_s
        self.trend_samples = trend_samples  # fleet.trend_samples: health trend rows kept per device
        # One FIFO per device and a ring of the devices with something queued; the writer takes one item from
        # each in turn, everything that piled up while it was committing (which sizes batches to the load).
        self._queues: dict[tuple[str, str], deque[WriteItem]] = {}
        self._ring: deque[tuple[str, str]] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._last_refresh = 0.0
        self.last_error: str | None = None

    @property
    def backlog(self) -> int:
        return self._size

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aula-writer", daemon=True)
        self._thread.start()

    def submit(self, item: WriteItem) -> bool:
        """Queue an item; False when it was shed: an item of a device over its share of a full queue.

        While the database fails, a full queue makes intake wait, which leaves the backlog with the broker.
        While it keeps up, a full queue is a flood: a device within an even share still gets in (so the queue
        holds at most about twice queue_max), and one holding more has its further items shed (the caller
        counts and acknowledges them).
        """
        key = item.key
        while True:
            with self._lock:
                queue = self._queues.get(key)
                held = len(queue) if queue is not None else 0
                share = self.queue_max // max(1, len(self._queues) + (queue is None))
                healthy = self.last_error is None
                if self._size < self.queue_max or (healthy and held < share) or self._abandon.is_set():
                    if queue is None:
                        queue = self._queues[key] = deque()
                        self._ring.append(key)
                    queue.append(item)
                    self._size += 1
                    break
                if healthy:
                    return False
            self._wake.set()
            time.sleep(0.005)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout`), then end; what is left stays unacknowledged at the broker."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(2.0)
            logger.warning("writer: stopped with %s messages unwritten; the broker will send them again", self.backlog)
        self._thread = None

    def _take(self) -> list[WriteItem]:
        """Up to batch_max items, one per device in turn."""
        batch: list[WriteItem] = []
        with self._lock:
            ring, queues = self._ring, self._queues
            while ring and len(batch) < self.batch_max:
                key = ring[0]
                queue = queues[key]
                batch.append(queue.popleft())
                if queue:
                    ring.rotate(-1)
                else:
                    ring.popleft()
                    del queues[key]
            self._size -= len(batch)
        return batch

    def _run(self) -> None:
        while True:
            self._maybe_refresh()
            if not self._size:
                if self._stopping.is_set():
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if not self._write(self._take()):
                return

    def _write(self, batch: list[WriteItem]) -> bool:
        """Commit a batch, retrying with backoff; False when shutdown abandoned it."""
        delay = 0.2
        touches = [i.touch for i in batch if i.touch is not None]
        events = [i.event for i in batch if i.kind == "event" and i.event is not None]
        statuses = [
            (i.touch.site, i.touch.device_id, i.status, i.payload, i.touch.seen_ms)  # seen_ms: when it was received
            for i in batch
            if i.kind == "status" and i.touch is not None and i.status is not None
        ]
        healths = [
            (i.touch.site, i.touch.device_id, i.payload, i.touch.seen_ms, i.trend, i.sent_ms)  # seen_ms: received
            for i in batch
            if i.kind == "health" and i.touch
        ]
        quarantine = [i.quarantined for i in batch if i.kind == "quarantine" and i.quarantined is not None]
        while True:
            try:
                result = self.storage.ingest.write_batch(
                    touches,
                    events,
                    statuses,
                    healths,
                    quarantine=quarantine,
                    unassigned_max=self.unassigned_max,
                    quarantine_max=self.quarantine_max,
                    trend_samples=self.trend_samples,
                )
                break
            except Exception as exc:
                self.stats.add("write_errors")
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("writer: batch of %s failed (%s); retrying in %.1f s", len(batch), self.last_error, delay)
                self.storage.db.reset_thread_connection()
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
        self.last_error = None
        self._committed(batch, result)
        return True

    def _committed(self, batch: list[WriteItem], result: BatchResult) -> None:
        self.stats.add("batches")
        self.stats.add("events_ingested", len(result.inserted))
        self.stats.add("events_duplicate", result.duplicates)
        self.stats.add("events_quarantined", result.quarantined)
        self.stats.invalid("unassigned_full", result.unassigned_full)
        self.stats.invalid("quarantine_full", result.quarantine_full)
        if result.unassigned_full or result.quarantine_full:
            logger.warning(
                "writer: refused %s events of unassigned devices and %s for quarantine: their caps are reached",
                result.unassigned_full,
                result.quarantine_full,
            )
        self.registry.update_rooms(result.device_rooms)
        tokens = [i.ack for i in batch if i.ack is not None]
        if tokens:
            self.acker(tokens)

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_s:
            return
        self._last_refresh = now
        try:
            if self.forget_new_after_s is not None:
                # The database first, so the reload below does not bring back what the registry evicts.
                before = int(time.time() * 1000) - int(self.forget_new_after_s * 1000)
                forgotten = self.storage.devices.forget_new(before)
                evicted = self.registry.evict_stale(before)
                if forgotten or evicted:
                    logger.info("writer: forgot %s unassigned devices gone silent (%s in memory)", forgotten, evicted)
            self.registry.reload(self.storage.devices.assignments(), self.storage.rooms.index())
        except Exception as exc:
            logger.warning("writer: cannot reload device assignments (%s)", exc)
            self.storage.db.reset_thread_connection()
