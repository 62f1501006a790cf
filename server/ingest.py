"""What happens to each MQTT message: validate, de-duplicate, push live, queue for the writer."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from device.contract import CommandAck, SchemaError, faces_of, parse_device_topic, topic
from device.contract.topics import CMD_ACK, EVENTS, STATUS, parse_ack_topic
from server.aggregates import MODALITIES, Sums
from server.devices import DeviceRegistry
from server.health_trend import trend_figures
from server.hub import LiveHub
from server.metrics import IngestStats
from server.storage.ingest import IncomingEvent
from server.storage.quarantine import QuarantinedMessage
from server.summaries import RoomSummaries
from server.validation import Incoming, Rejected, check_times, validate_message
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


class AckBatcher:
    """Acknowledges refused messages a few milliseconds later, together: under a flood, one write per batch."""

    def __init__(self, acker: Callable[[list], None], delay_s: float = 0.005, batch_max: int = 256):
        self.acker = acker
        self.delay_s = delay_s
        self.batch_max = batch_max
        self._pending: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, token) -> None:
        with self._lock:
            self._pending.append(token)
            first = len(self._pending) == 1
            full = len(self._pending) >= self.batch_max
            if full:
                tokens, self._pending = self._pending, []
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aula-refused-acks", daemon=True)
                self._thread.start()
        if full:
            self.acker(tokens)
        elif first:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.delay_s)
            with self._lock:
                tokens, self._pending = self._pending, []
            if tokens:
                try:
                    self.acker(tokens)
                except Exception:  # a lost connection: the broker sends them again, and they are refused again
                    logger.debug("ingest: acknowledging refused messages failed", exc_info=True)


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
        self.fleet = None  # server.fleet.FleetMonitor: health trends for the fleet page
        self.acker = acker
        self.live_events = live_events  # False when a separate live-feed client follows all events
        self._recent = RecentIds(recent_ids)
        self.max_age_ms = int(max_age_s * 1000)
        self.max_ahead_ms = int(max_ahead_s * 1000)
        self._log = RateLimitedLog()
        self._acks: AckBatcher | None = None

    def _ack_now(self, token) -> None:
        if token is not None and self.acker is not None:
            if self._acks is None:
                self._acks = AckBatcher(self.acker)
            self._acks.add(token)

    def handle(self, topic: str, payload: bytes, retained: bool = False, token=None) -> str:
        """Process one message; return what it was: event, duplicate, status, health, quarantine or invalid:<reason>."""
        now = int(time.time() * 1000)
        if topic.endswith("/" + CMD_ACK):
            return self._command_ack(topic, payload, token)
        parts = parse_device_topic(topic)
        # The rate limit comes before decoding, so a flood costs little; the live feed only looks, the
        # storing path spends the device's tokens.
        if parts is not None and self.registry.allow(parts[0], parts[2], consume=self.writer is not None) is False:
            return self._reject(topic, "rate_limited", "more messages than intake.device_rate_per_s allows", token)
        try:
            incoming = validate_message(topic, payload)
        except Rejected as exc:
            if exc.reason == "newer_schema" and parts is not None and parts[3] == EVENTS:
                return self._quarantine(topic, payload, exc, now, token)
            return self._reject(topic, exc.reason, exc.detail, token)
        except Exception as exc:  # a validator bug must cost one message, not the intake
            return self._reject(topic, "schema", f"{type(exc).__name__}: {exc}", token)
        if incoming.leaf == EVENTS:
            return self._event(incoming, now, token)
        if incoming.leaf == STATUS:
            return self._status(incoming, now, retained, token)
        return self._health(incoming, now, token)

    def _command_ack(self, topic: str, payload: bytes, token) -> str:
        """A device's answer to a command: shown on its room's live page, never stored."""
        where = parse_ack_topic(topic)
        try:
            if where is None:
                raise SchemaError("not a device's cmd/ack topic")
            ack = CommandAck.from_payload(payload)
        except SchemaError as exc:
            return self._reject(topic, "schema", str(exc), token)
        self._ack_now(token)
        site, _, device_id = where
        if ack.device_id != device_id:
            return self._reject(topic, "schema", "the ack's device_id is not its topic's", None)
        live = self.registry.set_paused(site, device_id, ack.paused)
        if live is None or live.room_id is None:
            return "ack"
        if self.writer is not None:
            self.stats.add("command_acks")
        if self.hub is not None:
            self.hub.publish(live.room_id, "ack", {"device_id": device_id, "id": ack.id, "command": ack.command,
                                                   "ok": ack.ok, "reason": ack.reason, "paused": ack.paused})
        return "ack"

    def _reject(self, topic: str, reason: str, detail: str, token) -> str:
        if self.writer is not None:
            self.stats.invalid(reason)
        self._log.warning(reason, "ingest: rejected a message on %r: %s: %s", topic[:200], reason, detail[:300])
        self._ack_now(token)  # nothing to store, and a redelivery would be just as invalid
        return f"invalid:{reason}"

    def _unknown_device(self, incoming: Incoming, token) -> str:
        detail = "the caps on unassigned devices (intake.new_devices_per_site, new_devices_total) are reached"
        return self._reject(_topic_of(incoming), "unknown_device", detail, token)

    def _submit(self, item: WriteItem, topic: str) -> None:
        assert self.writer is not None
        if not self.writer.submit(item):
            self._reject(topic, "shed", "the device holds more than its share of a full writer queue", item.ack)

    def _quarantine(self, topic: str, payload: bytes, exc: Rejected, now: int, token) -> str:
        """Keep an event this release cannot read, acknowledged once stored, for a replay after an upgrade."""
        if self.writer is None:
            return "quarantine"
        self._log.warning("quarantine", "ingest: quarantined an event on %r: %s", topic[:200], exc.detail[:300])
        site, _, device_id, _ = parse_device_topic(topic) or ("", "", "", "")
        item = QuarantinedMessage(topic, payload, exc.reason, now)
        self._submit(WriteItem("quarantine", quarantined=item, ack=token, device=(site, device_id)), topic)
        return "quarantine"

    def _event(self, incoming: Incoming, now: int, token) -> str:
        event = incoming.event
        assert event is not None
        try:
            check_times(event, now, self.max_age_ms, self.max_ahead_ms)
        except Rejected as exc:
            return self._reject(_topic_of(incoming), exc.reason, exc.detail, token)
        if self._recent.seen(event.event_id):
            if self.writer is not None:
                self.stats.add("events_duplicate")
                if token is not None:
                    # Acknowledged in order behind the first copy, which may not be committed yet.
                    device = (incoming.site, incoming.device_id)
                    self._submit(WriteItem("ack", ack=token, device=device), _topic_of(incoming))
            return "duplicate"
        touched = self.registry.touch(incoming.site, incoming.device_id, incoming.room, now)
        if touched is None:
            return self._unknown_device(incoming, token)
        touch, live = touched
        room_id = live.room_id
        if room_id is not None and self.live_events:
            if self.hub is not None and self.hub.watched(room_id):
                self.hub.publish(room_id, "window", window_view(incoming))
            if self.summaries is not None:
                self.summaries.add(room_id, event)
        if self.writer is not None:
            item = IncomingEvent(event, now, incoming.payload)
            self._submit(WriteItem("event", touch=touch, event=item, ack=token), _topic_of(incoming))
        return "event"

    def _status(self, incoming: Incoming, now: int, retained: bool, token) -> str:
        status = incoming.status
        assert status is not None
        # A retained status is as old as the device says, not as old as our subscription.
        seen = min(status.ts_ms, now) if retained else now
        touched = self.registry.touch(incoming.site, incoming.device_id, incoming.room, seen)
        if touched is None:
            return self._unknown_device(incoming, token)
        touch, live = touched
        self.registry.set_state(incoming.site, incoming.device_id, status.state.value, status.reason, status.paused)
        if live.room_id is not None:
            if self.hub is not None:
                self.hub.publish(live.room_id, "status", self.registry.status_view(incoming.device_id, live))
            if self.summaries is not None:
                self.summaries.touch(live.room_id)
        if self.writer is not None:
            self.stats.add("status_messages")
            item = WriteItem("status", touch=touch, status=status, payload=incoming.payload, ack=token)
            self._submit(item, _topic_of(incoming))
        return "status"

    def _health(self, incoming: Incoming, now: int, token) -> str:
        touched = self.registry.touch(incoming.site, incoming.device_id, incoming.room, now)
        if touched is None:
            return self._unknown_device(incoming, token)
        h = incoming.health
        figures = None if h is None else trend_figures({"vision": h.vision, "host": h.host, "mqtt": h.mqtt})
        sent_ms = None if h is None else h.ts_ms
        if self.fleet is not None and figures is not None:
            self.fleet.note_trend(incoming.site, incoming.device_id, figures, now, sent_ms)
        if self.writer is not None:
            self.stats.add("health_messages")
            item = WriteItem("health", touch=touched[0], payload=incoming.payload, ack=token, trend=figures,
                             sent_ms=sent_ms)
            self._submit(item, _topic_of(incoming))
        return "health"
