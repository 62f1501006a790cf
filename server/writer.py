"""The single writer thread: drains the intake queue in batches, one transaction each, then acknowledges."""

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
from server.metrics import IngestStats
from server.storage import Storage
from server.storage.ingest import BatchResult, DeviceTouch, IncomingEvent

logger = logging.getLogger(__name__)

AckToken = Any  # opaque to the writer: handed back to the broker client after the commit


@dataclass(slots=True)
class WriteItem:
    """One message for the writer; `kind` is event, status, health, or ack (only acknowledge, in order)."""

    kind: str
    touch: DeviceTouch | None = None
    event: IncomingEvent | None = None
    status: StatusMessage | None = None
    payload: bytes = b""
    ack: AckToken | None = None


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
    ):
        self.storage = storage
        self.stats = stats
        self.registry = registry
        self.acker = acker
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.refresh_s = refresh_s
        # A deque and an event instead of queue.Queue: an append is one atomic call with no lock or notify,
        # and the writer takes everything that piled up while it was committing, which sizes batches to the load.
        self._items: deque[WriteItem] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._last_refresh = 0.0
        self.last_error: str | None = None

    @property
    def backlog(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aula-writer", daemon=True)
        self._thread.start()

    def submit(self, item: WriteItem) -> None:
        """Queue an item; waits while the queue is full, which slows intake down to what the database takes."""
        while len(self._items) >= self.queue_max and not self._abandon.is_set():
            self._wake.set()
            time.sleep(0.005)
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()

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
        batch: list[WriteItem] = []
        items = self._items
        while items and len(batch) < self.batch_max:
            batch.append(items.popleft())
        return batch

    def _run(self) -> None:
        while True:
            self._maybe_refresh()
            if not self._items:
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
            (i.touch.site, i.touch.device_id, i.status, i.payload)
            for i in batch
            if i.kind == "status" and i.touch is not None and i.status is not None
        ]
        healths = [(i.touch.site, i.touch.device_id, i.payload) for i in batch if i.kind == "health" and i.touch]
        while True:
            try:
                result = self.storage.ingest.write_batch(touches, events, statuses, healths)
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
            self.registry.reload(self.storage.devices.assignments(), self.storage.rooms.index())
        except Exception as exc:
            logger.warning("writer: cannot reload device assignments (%s)", exc)
            self.storage.db.reset_thread_connection()
