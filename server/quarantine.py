"""Replaying quarantined events after an upgrade: what this release reads is stored, what it cannot stays."""

from __future__ import annotations

import logging
from collections import Counter

from device.contract.topics import EVENTS
from server.config import ServerConfig
from server.storage import Storage
from server.storage.ingest import DeviceTouch, IncomingEvent
from server.storage.quarantine import QuarantineRepository
from server.validation import Rejected, check_times, validate_message

logger = logging.getLogger(__name__)

_PAGE = 500


def replay_quarantine(storage: Storage, config: ServerConfig) -> dict[str, int]:
    """Validate each quarantined row with the running code; store what reads, keep what still does not.

    A row that reads but is refused (privacy, a time outside the intake window around when it was received) is
    removed and counted by reason, as intake would have refused it. Returns the counts: ingested, duplicate,
    kept, and refused_<reason>.
    """
    intake = config.intake
    max_age_ms, max_ahead_ms = int(intake.max_age_s * 1000), int(intake.max_ahead_s * 1000)
    rooms = storage.rooms.index() if config.devices.auto_assign else {}
    counts: Counter[str] = Counter(ingested=0, duplicate=0, kept=0)
    after = 0
    while rows := storage.quarantine.page(after, _PAGE):
        after = rows[-1].id or after
        done: list[int] = []
        touches: list[DeviceTouch] = []
        events: list[IncomingEvent] = []
        for row in rows:
            assert row.id is not None
            try:
                incoming = validate_message(row.topic, row.payload)
                if incoming.leaf != EVENTS or incoming.event is None:
                    raise Rejected("topic", "only events are quarantined")
                check_times(incoming.event, row.received_ms, max_age_ms, max_ahead_ms)
            except Rejected as exc:
                if exc.reason == "newer_schema":
                    counts["kept"] += 1
                else:
                    counts[f"refused_{exc.reason}"] += 1
                    done.append(row.id)
                continue
            done.append(row.id)
            room_id = rooms.get((incoming.site, incoming.room))
            touches.append(DeviceTouch(incoming.site, incoming.device_id, incoming.room, row.received_ms, room_id))
            events.append(IncomingEvent(incoming.event, row.received_ms, row.payload))
        # One transaction per page: a row leaves the quarantine exactly when its event is stored.
        with storage.db.conn().transaction() as c:
            result = storage.ingest.write_batch(touches, events, [], [], unassigned_max=intake.unassigned_events_max)
            QuarantineRepository.delete(c, done)
        counts["ingested"] += len(result.inserted)
        counts["duplicate"] += result.duplicates
        if result.unassigned_full:
            counts["refused_unassigned_full"] += result.unassigned_full
    logger.info("quarantine: replayed %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
    return dict(counts)
