"""In-process fan-out of live room events to Server-Sent-Event streams; published from any thread."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from server.metrics import IngestStats

logger = logging.getLogger(__name__)

CLOSED = ""  # queued to a subscriber when the hub shuts down


class Subscription:
    """One stream client's bounded queue of pre-rendered SSE frames."""

    def __init__(self, room_id: int, size: int):
        self.room_id = room_id
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)


class LiveHub:
    """Rooms -> subscribers; `publish` renders a frame once and hands it to the event loop."""

    def __init__(self, stats: IngestStats, queue_size: int = 2000):
        self.stats = stats
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rooms: dict[int, set[Subscription]] = {}
        self._lock = threading.Lock()
        self.closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the HTTP server's event loop (called at its start-up)."""
        self._loop = loop
        self.closed = False

    @property
    def clients(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._rooms.values())

    def subscribe(self, room_id: int) -> Subscription:
        """Called on the event loop."""
        sub = Subscription(room_id, self.queue_size)
        with self._lock:
            self._rooms.setdefault(room_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._rooms.get(sub.room_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._rooms[sub.room_id]

    def watched(self, room_id: int) -> bool:
        """Whether a stream follows the room now (so a frame for it is worth building)."""
        return self._loop is not None and room_id in self._rooms

    def publish(self, room_id: int, event: str, data: dict[str, Any]) -> None:
        """Send `event` to the room's streams; cheap when nobody watches the room."""
        loop = self._loop
        if loop is None or room_id not in self._rooms:
            return
        frame = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        try:
            loop.call_soon_threadsafe(self._deliver, room_id, frame)
        except RuntimeError:  # the loop has closed during shutdown
            pass

    def _deliver(self, room_id: int, frame: str) -> None:
        with self._lock:
            subs = list(self._rooms.get(room_id, ()))
        for sub in subs:
            self._put(sub, frame)

    def _put(self, sub: Subscription, frame: str) -> None:
        if sub.queue.full():
            # A slow reader loses its oldest frame rather than holding up everyone else.
            try:
                sub.queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            self.stats.add("sse_dropped")
        sub.queue.put_nowait(frame)

    def close(self) -> None:
        """End every stream (thread-safe), so the HTTP server can stop without waiting for clients."""
        self.closed = True
        loop = self._loop
        if loop is None:
            return

        def _close_all() -> None:
            with self._lock:
                subs = [s for room in self._rooms.values() for s in room]
            for sub in subs:
                self._put(sub, CLOSED)

        try:
            loop.call_soon_threadsafe(_close_all)
        except RuntimeError:
            pass
