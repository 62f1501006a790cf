"""Store-and-forward of events: on disk first, then sent in order, paced, with a bound on what is in flight."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from paho.mqtt.reasoncodes import ReasonCode

from device.contract import EmotionEvent
from device.mqtt.config import MqttConfig
from device.mqtt.connection import DeviceConnection
from device.offline_queue import OfflineQueue

logger = logging.getLogger(__name__)

_EXPIRE_EVERY_S = 10.0
_FAULT_CHECK_S = 1.0  # while the queue has a fault it is looked after this often (it retries its file every retry_s)
_HOLD_S = 30.0


class EventSender:
    """Sends queued events over `connection`, deleting each from the queue only on its PUBACK.

    `tick()` runs on the sender thread between sends and returns the seconds until it wants to run again (the
    publisher sends its periodic health there).
    """

    def __init__(self, config: MqttConfig, connection: DeviceConnection, tick: Callable[[], float]):
        self.config = config
        self.connection = connection
        self._tick = tick
        q = config.queue
        self.queue = OfflineQueue(
            q.path, max_rows=q.max_rows, max_bytes=q.max_bytes, max_age_s=q.max_age_s, synchronous=q.synchronous
        )
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        # mid -> seq of events handed to paho; touched only by the sender thread (and by stop() once it has ended),
        # so a PUBACK that beats the registration of its mid cannot be lost: PUBACKs wait in _puback_in.
        self.inflight: dict[int, int] = {}
        self._inflight_ids: dict[int, str] = {}  # mid -> event_id: a seq given while the file was unreadable changes
        self._generation = self.queue.generation
        self._puback_in: deque[tuple[int, ReasonCode]] = deque()
        self._last_sent_seq = 0
        self._hold: set[int] = set()
        self._hold_until = 0.0
        self._seen_epoch = 0
        self._next_slot = 0.0
        self._refused: set[int] = set()  # seqs the broker refused, sent again at _retry_at
        self._retry_at = 0.0
        self._retry_s = config.refused_retry_s
        self.queued = 0  # events enqueued since start
        self.sent = 0  # first sends; paho's resends after a reconnect are not counted
        self.acked = 0
        self.rejected = 0  # refused by the broker (MQTT 5 reason >= 0x80); kept on disk, re-sent after a restart

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self.thread.start()

    def enqueue(self, event: EmotionEvent) -> EmotionEvent:
        """Store the event durably with the next seq and wake the sender; returns the stored copy."""
        stored = self.queue.enqueue(event)
        self.queued += 1
        self.wake.set()
        return stored

    def on_puback(self, mid: int, reason: ReasonCode) -> None:
        # Runs with paho's message lock held: only hand the PUBACK over; the sender thread does the rest.
        self._puback_in.append((mid, reason))
        self.wake.set()

    def flush_for_stop(self, deadline: float) -> None:
        """On a clean stop, send what is queued while the broker is there, keeping pacing and the in-flight bound."""
        while len(self.queue) and self.connection.connected and time.monotonic() < deadline:
            self.wake.set()
            time.sleep(0.02)

    def join(self, timeout: float) -> None:
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def settle_inflight(self, deadline: float) -> None:
        """Let in-flight events finish, so `stopped` is the last thing the server hears."""
        while self.inflight and self.connection.connected and time.monotonic() < deadline:
            self.settle_pubacks()
            time.sleep(0.02)

    def settle_pubacks(self) -> None:
        while self._puback_in:
            mid, reason = self._puback_in.popleft()
            seq = self.inflight.pop(mid, None)
            event_id = self._inflight_ids.pop(mid, None)
            if seq is None:
                continue  # a status, ack or health message
            self._hold.discard(seq)
            if reason.is_failure:
                # Kept on disk: a broker that refuses (ACL, quota) is a setup problem that someone will fix, so the
                # event is sent again later, with backoff, instead of waiting for a restart.
                self.rejected += 1
                self.connection.last_error = f"broker refused event seq {seq}: {reason}"
                if not self._refused:
                    self._retry_at = time.monotonic() + self._retry_s
                self._refused.add(seq)
                logger.warning("MQTT: broker refused event seq %s (%s); it stays queued and is sent again in %.0f s",
                               seq, reason, max(0.0, self._retry_at - time.monotonic()))
                continue
            self.acked += 1
            self._refused.discard(seq)
            self._retry_s = self.config.refused_retry_s  # the broker takes events again
            self.queue.ack(seq, event_id)

    # ---- the sender thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = self.connection.stopping
        next_expire = time.monotonic() + _EXPIRE_EVERY_S
        next_fault_check = 0.0
        next_tick = 0.0
        while not stopping.is_set():
            self.wake.wait(timeout=max(0.0, min(1.0, next_tick - time.monotonic(), next_expire - time.monotonic())))
            self.wake.clear()
            try:
                self.settle_pubacks()
                now = time.monotonic()
                if now >= next_expire or (self.queue.fault and now >= next_fault_check):
                    # Retries a faulted file (full, read-only, locked) when its time has come; expires old events.
                    self.queue.maintain()
                    next_expire, next_fault_check = now + _EXPIRE_EVERY_S, now + _FAULT_CHECK_S
                next_tick = time.monotonic() + self._tick()
                self._drain()
            except Exception:
                # A bug must not end the thread (storage faults are the queue's own): try again shortly.
                logger.exception("MQTT sender failed; retrying")
                stopping.wait(1.0)

    def _pace(self) -> bool:
        """Wait for the next send slot of the drain rate; False when stopping."""
        delay = self._next_slot - time.monotonic()
        if delay > 0 and self.connection.stopping.wait(delay):
            return False
        self._next_slot = max(self._next_slot, time.monotonic()) + 1.0 / self.config.drain_rate
        return True

    def _held(self) -> bool:
        """After a reconnect paho re-sends what was in flight; hold new events until those are acknowledged.

        paho re-sends them after on_connect returns, so an event sent from here at once could overtake them.
        """
        epoch = self.connection.epoch
        if self._seen_epoch != epoch:
            self._seen_epoch = epoch
            self._hold = set(self.inflight.values())
            self._hold_until = time.monotonic() + _HOLD_S
        if self._hold and time.monotonic() > self._hold_until:
            logger.warning("MQTT: %s re-sent events unacknowledged after %ss; going on", len(self._hold), _HOLD_S)
            self._hold.clear()
        return bool(self._hold)

    def _retry_refused(self) -> None:
        """Once the retry time has come, go back to the oldest refused event and send on from there."""
        if not self._refused or time.monotonic() < self._retry_at:
            return
        oldest = min(self._refused)
        self._refused.clear()
        self._last_sent_seq = min(self._last_sent_seq, oldest - 1)
        self._retry_s = min(self._retry_s * 2, self.config.refused_retry_s * 10)
        self._retry_at = time.monotonic() + self._retry_s
        logger.info("MQTT: sending refused events again from seq %s", oldest)

    def _drain(self) -> None:
        conn = self.connection
        if self.queue.generation != self._generation:
            # The file was (re)opened after a fault: what it holds may lie behind the cursor, so start again from
            # the oldest; events still in flight are skipped below, acknowledged ones are gone from the file.
            self._generation = self.queue.generation
            self._last_sent_seq = 0
        while conn.connected and not conn.stopping.is_set():
            self.settle_pubacks()
            self._retry_refused()
            if self._held():
                return
            room = self.config.max_inflight - len(self.inflight)
            if room <= 0:
                return  # a PUBACK wakes us
            rows = self.queue.peek(self._last_sent_seq, room)
            if not rows:
                return
            flying = set(self._inflight_ids.values())
            for row in rows:
                if row.event_id in flying:
                    self._last_sent_seq = row.seq
                    continue
                if not self._pace() or not conn.connected:
                    return
                info = conn.publish(conn.topics.events, row.payload, qos=1)
                if info is None:
                    return
                self.inflight[info.mid] = row.seq
                self._inflight_ids[info.mid] = row.event_id
                self._last_sent_seq = row.seq
                self.sent += 1
