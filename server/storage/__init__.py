"""Every read and write of the server's data, one repository per concern, held by `Storage`."""

from __future__ import annotations

from server.db import Database
from server.storage.aggregates import AggregateRepository
from server.storage.devices import DeviceRepository
from server.storage.health_trend import HealthTrendRepository
from server.storage.ingest import IngestRepository
from server.storage.quarantine import QuarantineRepository
from server.storage.retention import RetentionRepository
from server.storage.rooms import RoomRepository
from server.storage.segments import SegmentRepository
from server.storage.sessions import SessionRepository, TokenRepository
from server.storage.users import UserRepository


class Storage:
    """The server's data access: one repository per concern, all on one database."""

    def __init__(self, db: Database):
        self.db = db
        self.rooms = RoomRepository(db)
        self.devices = DeviceRepository(db)
        self.health_trends = HealthTrendRepository(db)
        self.ingest = IngestRepository(db)
        self.quarantine = QuarantineRepository(db)
        self.aggregates = AggregateRepository(db)
        self.users = UserRepository(db)
        self.sessions = SessionRepository(db)
        self.tokens = TokenRepository(db)
        self.segments = SegmentRepository(db, self.aggregates)
        self.retention = RetentionRepository(db)
