"""The storage fixtures shared by the server's storage tests: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from server.config import DatabaseConfig
from server.db import Database
from server.storage import Storage


@pytest.fixture(name="database_url", params=["sqlite", "postgresql"])
def database_url_fixture(request, tmp_path):
    """A fresh database URL: a SQLite file in tmp_path, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/storage.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(name="storage")
def storage_fixture(database_url):
    """A migrated Storage on `database_url`, closed after the test."""
    db = Database(DatabaseConfig(url=database_url))
    db.migrate()
    yield Storage(db)
    db.close()
