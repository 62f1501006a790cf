"""The server's PostgreSQL connections survive a database restart: the first read or transaction on a connection
the restart cut goes to a new connection instead of failing (a web request used to get a 500 there)."""

from __future__ import annotations

import pytest

from server.config import DatabaseConfig
from server.db import Database
from server.storage import Storage
from tests.postgres import PostgresServer, find_pg_bin
from tests.system_deps import require_system_dep


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, since the test restarts it."""
    server = PostgresServer(require_system_dep(find_pg_bin(), "PostgreSQL is not installed"))
    server.start()
    yield server
    server.stop()


def _restart(pg: PostgresServer) -> None:
    pg_ctl = str(pg.bin / "pg_ctl")
    stopped = pg._run(pg_ctl, "-D", str(pg.data), "-m", "fast", "-w", "stop")
    assert stopped.returncode == 0, stopped.stderr
    options = f"-p {pg.port} -k {pg.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = pg._run(pg_ctl, "-D", str(pg.data), "-o", options, "-l", str(pg.log), "-w", "-t", "60", "start")
    assert started.returncode == 0, started.stderr


def test_reads_and_transactions_after_a_postgresql_restart_use_a_new_connection(own_postgres):
    db = Database(DatabaseConfig(url=own_postgres.create_database()))
    db.migrate()
    storage = Storage(db)
    room = storage.rooms.create("school1", "room101", "Room 101")
    conn = db.conn()
    _restart(own_postgres)
    assert [r["id"] for r in storage.rooms.list()] == [room["id"]]  # a read: repeated on a new connection
    assert db.conn() is conn and not conn.raw.closed
    _restart(own_postgres)
    storage.rooms.create("school1", "room102", "Room 102")  # a transaction: its BEGIN goes to a new connection
    assert len(storage.rooms.list()) == 2
    _restart(own_postgres)
    with pytest.raises(Exception):  # noqa: B017 - a write outside a transaction may have run: never repeated
        db.conn().execute("CREATE TABLE t (x INTEGER)")
    db.close()
