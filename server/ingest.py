"""What happens to each MQTT message: validate, de-duplicate, push live, queue for the writer."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from device.contract import faces_of, topic
from device.contract.topics import EVENTS, STATUS
from server.aggregates import MODALITIES, Sums
from server.devices import DeviceRegistry
from server.hub import LiveHub
from server.metrics import IngestStats
from server.storage.ingest import IncomingEvent
from server.summaries import RoomSummaries
from server.validation import Incoming, Rejected, validate_message
from server.writer import BatchWriter, WriteItem

logger = logging.getLogger(__name__)


class RateLimitedLog:
    """Logs one message per key at most every `interval_s`, then says how many were suppressed."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%s more like it suppressed)"
            args = (*args, suppressed)
        logger.warning(msg, *args)


class RecentIds:
    """A bounded set of recently seen event ids: redeliveries are caught before they reach the database."""

    def __init__(self, size: int):
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True when already seen; otherwise remember it."""
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def window_view(incoming: Incoming) -> dict:
    """The stream's `window` event for one emotion event: the fused window, and each modality as in the buckets."""
    e = incoming.event
    assert e is not None
    sums = Sums()
    sums.add_event(e)
    summary = sums.summary()
    return {
        "t_ms": e.window_start_ms,
        "device_id": e.device_id,
        "distribution": e.distribution,
        "dominant": e.dominant,
        "valence": e.valence,
        "arousal": e.arousal,
        "faces": faces_of(e),
        **{m.summary_key: summary[m.summary_key] for m in MODALITIES},
        **{key: summary[key] for key in sums.count_sums},
    }


def _topic_of(incoming: Incoming) -> str:
    return topic(incoming.site, incoming.room, incoming.device_id, incoming.leaf)


class Ingestor:
    """The MQTT message callback's logic; `store` feeds the writer, `live` feeds streams and summaries."""

    def __init__(
        self,
        stats: IngestStats,
        registry: DeviceRegistry,
        writer: BatchWriter | None,
        hub: LiveHub | None,
        summaries: RoomSummaries | None,
        acker: Callable[[list], None] | None = None,
        recent_ids: int = 200_000,
        live_events: bool = True,
        max_age_s: float = 3 * 24 * 3600.0,
        max_ahead_s: float = 300.0,
    ):
        self.stats = stats
        self.registry = registry
        self.writer = writer
        self.hub = hub
        self.summaries = summaries
        self.acker = acker
        self.live_events = live_events  # False when a separate live-feed client follows all events
        self._recent = RecentIds(recent_ids)
        self.max_age_ms = int(max_age_s * 1000)
        self.max_ahead_ms = int(max_ahead_s * 1000)
        self._log = RateLimitedLog()

    def _ack_now(self, token) -> None:
        if token is not None and self.acker is not None:
            self.acker([token])

    def handle(self, topic: str, payload: bytes, retained: bool = False, token=None) -> str:
        """Process one message; return what it was: event, duplicate, status, health or invalid:<reason>."""
        now = int(time.time() * 1000)
        try:
            incoming = validate_message(topic, payload)
        except Rejected as exc:
            return self._reject(topic, exc.reason, exc.detail, token)
        except Exception as exc:  # a validator bug must cost one message, not the intake
            return self._reject(topic, "schema", f"{type(exc).__name__}: {exc}", token)
        if incoming.leaf == EVENTS:
            return self._event(incoming, now, token)
        if incoming.leaf == STATUS:
            return self._status(incoming, now, retained, token)
        return self._health(incoming, now, token)

    def _reject(self, topic: str, reason: str, detail: str, token) -> str:
        if self.writer is not None:
            self.stats.invalid(reason)
        self._log.warning(reason, "ingest: rejected a message on %r: %s: %s", topic[:200], reason, detail[:300])
        self._ack_now(token)  # nothing to store, and a redelivery would be just as invalid
        return f"invalid:{reason}"

    def _event(self, incoming: Incoming, now: int, token) -> str:
        event = incoming.event
        assert event is not None
        if event.window_end_ms > now + self.max_ahead_ms:
            ahead = (event.window_end_ms - now) / 1000
            detail = f"window ends {ahead:.0f} s after the server's clock"
            return self._reject(_topic_of(incoming), "future", detail, token)
        if event.window_start_ms < now - self.max_age_ms:
            age = (now - event.window_start_ms) / 1000
            return self._reject(_topic_of(incoming), "too_old", f"window started {age:.0f} s ago", token)
        if self._recent.seen(event.event_id):
            if self.writer is not None:
                self.stats.add("events_duplicate")
                if token is not None:
                    # Acknowledged in order behind the first copy, which may not be committed yet.
                    self.writer.submit(WriteItem("ack", ack=token))
            return "duplicate"
        touch, live = self.registry.touch(incoming.site, incoming.device_id, incoming.room, now)
        room_id = live.room_id
        if room_id is not None and self.live_events:
            if self.hub is not None and self.hub.watched(room_id):
                self.hub.publish(room_id, "window", window_view(incoming))
            if self.summaries is not None:
                self.summaries.add(room_id, event)
        if self.writer is not None:
            item = IncomingEvent(event, now, incoming.payload)
            self.writer.submit(WriteItem("event", touch=touch, event=item, ack=token))
        return "event"

    def _status(self, incoming: Incoming, now: int, retained: bool, token) -> str:
        status = incoming.status
        assert status is not None
        # A retained status is as old as the device says, not as old as our subscription.
        seen = min(status.ts_ms, now) if retained else now
        touch, live = self.registry.touch(incoming.site, incoming.device_id, incoming.room, seen)
        self.registry.set_state(incoming.site, incoming.device_id, status.state.value, status.reason)
        if live.room_id is not None:
            if self.hub is not None:
                self.hub.publish(live.room_id, "status", self.registry.status_view(incoming.device_id, live))
            if self.summaries is not None:
                self.summaries.touch(live.room_id)
        if self.writer is not None:
            self.stats.add("status_messages")
            self.writer.submit(WriteItem("status", touch=touch, status=status, payload=incoming.payload, ack=token))
        return "status"

    def _health(self, incoming: Incoming, now: int, token) -> str:
        touch, _ = self.registry.touch(incoming.site, incoming.device_id, incoming.room, now)
        if self.writer is not None:
            self.stats.add("health_messages")
            self.writer.submit(WriteItem("health", touch=touch, payload=incoming.payload, ack=token))
        return "health"
