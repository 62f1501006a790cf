"""The fault and abuse suite: each case does one thing to a real Mosquitto, server and database, then counts.

tests/test_fault_suite.py runs the short version (seconds of outage, fewer fuzz examples) under `make test`;
`make soak` runs the full one and prints the table, writing artifacts/soak.json:

    python -m tests.fault_suite            # full durations (about 15 minutes)
    python -m tests.fault_suite --short    # the durations of make test

Devices are the real device publisher (EventPublisher with its offline queue, each in its own state directory).
Every case returns a Case: what was done, the figures counted afterwards, and whether its bound held.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from device.mqtt.publisher import EventPublisher
from server.config import DatabaseConfig
from server.db import Database
from server.storage import Storage
from server.testing import DeviceSimulator, ServerHarness, make_event, wait_for
from tests.mosquitto import MosquittoBroker, free_port
from tests.mqtt_device_script import build_config
from tests.postgres import PostgresServer, find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
YEAR_MS = 365 * 86_400_000
SITE, ROOM = "school1", "room101"


@dataclass
class Case:
    """One case: what was done, what was counted afterwards, and whether its bounds held."""

    name: str
    done: str
    figures: dict[str, Any]
    ok: bool
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


@dataclass
class Sizes:
    """How long and how much: the short version for make test, the full one for make soak."""

    devices: int = 20
    outages_s: tuple[float, ...] = (30.0, 300.0)
    device_interval_s: float = 2.0  # a device's window, as on a Pi
    kills: int = 5
    pg_down_s: float = 10.0
    fuzz_mqtt: int = 10_000
    fuzz_http: int = 2_000
    flood_others: int = 50
    flood_s: float = 60.0

    @classmethod
    def short(cls) -> Sizes:
        return cls(outages_s=(3.0,), device_interval_s=0.5, kills=2, pg_down_s=2.0, fuzz_mqtt=600, fuzz_http=200,
                   flood_s=5.0)


def check(case: Case, condition: bool, message: str) -> None:
    if not condition:
        case.ok = False
        case.failures.append(message)


# ---- devices -----------------------------------------------------------------------------------------------------


class Fleet:
    """Real device publishers, each with its own state directory, fed a window every `interval_s`."""

    def __init__(self, workdir: Path, broker_url: str, count: int, interval_s: float, prefix: str = "pi", **cfg: Any):
        self.interval_s = interval_s
        self.publishers = []
        for k in range(count):
            state = workdir / f"{prefix}-{k:02d}"
            state.mkdir(parents=True, exist_ok=True)
            config = build_config(
                broker_url, state / "queue.sqlite3", device_id=f"{prefix}-{k:02d}", drain_rate=50.0,
                health_interval_s=3600.0, **cfg,
            )
            self.publishers.append(EventPublisher(config))
        self.sent: dict[str, int] = {}  # event_id -> window start (ms)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for pub in self.publishers:
            pub.start()

    def publish_one(self, pub: EventPublisher, start_ms: int | None = None) -> None:
        cfg = pub.config
        start = int(time.time() * 1000) - 2000 if start_ms is None else start_ms
        stored = pub.publish_event(make_event(site=cfg.site, room=cfg.room, device_id=cfg.device_id, start_ms=start))
        with self._lock:
            self.sent[stored.event_id] = start

    def _feed(self) -> None:
        # Each device publishes once per interval, spread over the interval as real devices would be.
        step = self.interval_s / len(self.publishers)
        next_at = time.monotonic()
        while not self._stop.is_set():
            for pub in self.publishers:
                if self._stop.is_set():
                    return
                self.publish_one(pub)
                next_at += step
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def feed(self) -> None:
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def backlog(self) -> int:
        return sum(p.stats().backlog for p in self.publishers)

    def dropped(self) -> int:
        return sum(p.stats().dropped for p in self.publishers)

    def stop(self) -> None:
        self.halt()
        for pub in self.publishers:
            pub.stop()


def stored_ids(storage: Storage) -> list[str]:
    """Every stored event_id; once more on a fresh connection if this thread's was cut (a database restart)."""
    try:
        return [r[0] for r in storage.db.conn().fetchall("SELECT event_id FROM events")]
    except Exception:
        storage.db.reset_thread_connection()
        return [r[0] for r in storage.db.conn().fetchall("SELECT event_id FROM events")]


def tally(sent: dict[str, int], stored: list[str]) -> dict[str, int]:
    """Sent, stored, stored twice and lost, by event_id."""
    unique = set(stored)
    return {
        "sent": len(sent),
        "stored": len(unique & set(sent)),
        "stored_twice": len(stored) - len(unique),
        "lost": len(set(sent) - unique),
    }


# ---- broker outage -----------------------------------------------------------------------------------------------


def broker_outage(workdir: Path, sizes: Sizes, outage_s: float) -> Case:
    """Stop the broker for `outage_s` while the devices publish; count what the server stored."""
    case = Case(
        f"broker stopped {outage_s:g} s",
        f"{sizes.devices} devices (EventPublisher, one window each {sizes.device_interval_s:g} s) publish; Mosquitto "
        f"stopped (SIGTERM) for {outage_s:g} s, started again, then everything drained to the server (SQLite)",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    harness = ServerHarness(workdir / "server", broker.url)
    fleet = Fleet(workdir / "devices", broker.url, sizes.devices, sizes.device_interval_s)
    try:
        harness.start()
        fleet.start()
        fleet.feed()
        time.sleep(max(1.0, 2 * sizes.device_interval_s))
        broker.stop()
        time.sleep(outage_s)
        backlog_at_end = fleet.backlog()
        broker.start()
        time.sleep(max(1.0, 2 * sizes.device_interval_s))
        fleet.halt()
        t0 = time.monotonic()
        drained = wait_for(lambda: fleet.backlog() == 0 and harness.stat("events_ingested") >= len(fleet.sent), 120)
        case.figures = tally(fleet.sent, stored_ids(harness.server.storage))
        case.figures.update({
            "duplicates_received": harness.stat("events_duplicate"),
            "backlog_at_reconnect": backlog_at_end,
            "drained_after_s": round(time.monotonic() - t0, 1),
            "dropped_by_devices": fleet.dropped(),
        })
        check(case, drained, "the devices' backlog did not drain within 120 s")
        check(case, case.figures["lost"] == 0, "events lost")
        check(case, case.figures["stored_twice"] == 0, "an event stored twice")
    finally:
        fleet.stop()
        harness.stop()
        broker.stop()
    return case


# ---- server killed -----------------------------------------------------------------------------------------------


def _server_config(path: Path, broker_url: str, database_url: str, port: int) -> Path:
    path.write_text(json.dumps({  # YAML is a superset of JSON
        "mqtt": {"broker": broker_url, "client_id": "aula-fault-suite", "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
        "database": {"url": database_url},
        "http": {"listen": f"127.0.0.1:{port}"},
        "devices": {"auto_assign": True},
        "log_level": "warning",
    }))
    return path


def _start_server(config: Path, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "server", "--config", str(config)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def _healthz(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def server_kill9(workdir: Path, sizes: Sizes) -> Case:
    """Kill the server process with SIGKILL while it stores a stream of events, `sizes.kills` times in a row."""
    case = Case(
        f"server kill -9 x{sizes.kills}",
        f"4 devices publish 40 windows/s in all; the server (python -m server, SQLite) is killed with SIGKILL "
        f"0.5-2 s into storing, {sizes.kills} times in a row, restarted 1 s later each time; then the raw events and "
        "the room's aggregates are counted",
        {}, True,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    database_url = f"sqlite:///{workdir / 'server.sqlite3'}"
    db = Database(DatabaseConfig(url=database_url))
    db.migrate()
    room_id = Storage(db).rooms.create(SITE, ROOM, "Room 101")["id"]
    db.close()
    port = free_port()
    config = _server_config(workdir / "server.yaml", broker.url, database_url, port)
    log = workdir / "server.log"
    fleet = Fleet(workdir / "devices", broker.url, 4, 0.1)
    since = int(time.time() * 1000) - 3_600_000
    proc: subprocess.Popen | None = None
    rng = random.Random(16)
    killed_with_work = 0
    try:
        # The broker keeps events for the server's session only once it exists: the server subscribes first.
        proc = _start_server(config, log)
        up = wait_for(lambda: (_healthz(port) or {}).get("broker_connected"), 60, step=0.1)
        check(case, up, "the server did not connect to the broker within 60 s")
        fleet.start()
        fleet.feed()
        for kill in range(sizes.kills):
            if kill:
                proc = _start_server(config, log)
            started = wait_for(lambda: (_healthz(port) or {}).get("events_ingested", 0) > 0, 60, step=0.1)
            check(case, started, "the server did not start storing within 60 s")
            time.sleep(rng.uniform(0.5, 2.0))
            health = _healthz(port) or {}
            killed_with_work += int(health.get("events_ingested", 0) > 0)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(1.0)
        proc = _start_server(config, log)
        fleet.halt()
        wait_for(lambda: fleet.backlog() == 0, 60)
        wait_for(lambda: _healthz(port) is not None, 60, step=0.2)
        db = Database(DatabaseConfig(url=database_url))
        storage = Storage(db)
        try:
            wait_for(lambda: len(set(stored_ids(storage))) >= len(fleet.sent), 60, step=0.2)
            time.sleep(1.0)  # anything delivered twice would be stored or counted by now
            case.figures = tally(fleet.sent, stored_ids(storage))
            windows = storage.aggregates.merged(room_id, since).windows
        finally:
            db.close()
        last = _healthz(port) or {}
        case.figures.update({
            "kills": sizes.kills,
            "killed_while_storing": killed_with_work,
            "redelivered_after_last_start": last.get("events_duplicate"),
            "windows_in_aggregates": windows,
            "double_counted": max(0, windows - case.figures["stored"]),
            "missing_from_aggregates": max(0, case.figures["stored"] - windows),
        })
        check(case, case.figures["lost"] == 0, "events lost")
        check(case, case.figures["stored_twice"] == 0, "an event stored twice")
        check(case, windows == case.figures["stored"], "the aggregates do not count each stored window once")
    finally:
        fleet.stop()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
    if not case.ok:
        case.failures.append(log.read_text(errors="replace")[-2000:])
    return case


# ---- PostgreSQL restarted ----------------------------------------------------------------------------------------


def _pg_restart(pg: PostgresServer, down_s: float) -> None:
    """Stop PostgreSQL (fast: open connections are cut), wait, and start it again on the same port and data."""
    pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-m", "fast", "-w", "stop", timeout=60)
    time.sleep(down_s)
    options = (
        f"-p {pg.port} -k {pg.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    started = pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-o", options, "-l", str(pg.log), "-w", "-t",
                      "60", "start")
    if started.returncode:
        raise RuntimeError(f"PostgreSQL did not start again: {started.stderr or started.stdout}")


def postgres_restart(workdir: Path, sizes: Sizes, pg: PostgresServer) -> Case:
    """Restart PostgreSQL while devices publish; the server must reconnect and store everything."""
    case = Case(
        "PostgreSQL restarted",
        f"4 devices publish 20 windows/s in all to the server on PostgreSQL; PostgreSQL stopped (pg_ctl -m fast) "
        f"for {sizes.pg_down_s:g} s and started again; then everything drained",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    harness = ServerHarness(workdir / "server", broker.url, pg.create_database())
    fleet = Fleet(workdir / "devices", broker.url, 4, 0.2)
    try:
        harness.start()
        fleet.start()
        fleet.feed()
        time.sleep(2.0)
        _pg_restart(pg, sizes.pg_down_s)
        up = time.monotonic()
        before = harness.stat("events_ingested")
        reconnected = wait_for(lambda: harness.stat("events_ingested") > before, 60)
        reconnect_s = time.monotonic() - up
        time.sleep(2.0)
        fleet.halt()
        wait_for(lambda: fleet.backlog() == 0 and harness.stat("events_ingested") >= len(fleet.sent), 60)
        case.figures = tally(fleet.sent, stored_ids(harness.server.storage))
        health = harness.client().get("/healthz").json()
        case.figures.update({
            "stored_again_after_s": round(reconnect_s, 1),
            "database_after": health["database"],
            "duplicates_received": harness.stat("events_duplicate"),
        })
        check(case, reconnected, "nothing was stored within 60 s of PostgreSQL's return")
        check(case, case.figures["lost"] == 0, "events lost")
        check(case, health["database"] == "ok", "healthz does not say the database is ok")
    finally:
        fleet.stop()
        harness.stop()
        broker.stop()
    return case


# ---- device clock jumped -----------------------------------------------------------------------------------------


def clock_jump(workdir: Path, sizes: Sizes) -> Case:
    """Jump one device's wall clock a year forward and back while its events wait offline."""
    per_phase = 10
    case = Case(
        "device clock +1 year and back",
        f"broker down; one device (queue max_age_s 1 h) queues {per_phase} windows on the right clock, {per_phase} "
        f"with its clock a year ahead, {per_phase} back on the right clock and {per_phase} a year behind (each "
        "dated by that clock); then the broker starts and the queue drains",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    harness: ServerHarness | None = None
    fleet = Fleet(workdir / "devices", broker.url, 1, 1.0, queue={"path": str(workdir / "q.sqlite3"),
                                                                  "max_age_s": 3600.0})
    pub = fleet.publishers[0]
    phases = {"right": 0, "ahead": YEAR_MS, "back": 0, "behind": -YEAR_MS}
    ids: dict[str, list[str]] = {}
    try:
        fleet.start()
        for phase, offset in phases.items():
            pub.queue._clock = lambda offset=offset: time.time() + offset / 1000  # the device's wall clock only
            before = set(fleet.sent)
            for _ in range(per_phase):
                fleet.publish_one(pub, int(time.time() * 1000) + offset - 2000)
                time.sleep(1.0 if sizes.device_interval_s >= 1 else 0.1)
            ids[phase] = [e for e in fleet.sent if e not in before]
        backlog_offline = pub.stats().backlog
        broker.start()
        harness = ServerHarness(workdir / "server", broker.url)
        harness.start()
        wait_for(lambda: pub.stats().backlog == 0, 60)
        accounted = lambda: harness.stat("events_ingested") + harness.stat("events_invalid")  # noqa: E731
        wait_for(lambda: accounted() >= len(fleet.sent), 30)
        right = ids["right"] + ids["back"]
        wait_for(lambda: set(right) <= set(stored_ids(harness.server.storage)), 30, step=0.2)
        stored = set(stored_ids(harness.server.storage))
        reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
        now = int(time.time() * 1000)
        future = harness.server.storage.db.conn().fetchall(
            "SELECT COUNT(*) FROM events WHERE window_start_ms > ?", (now + 300_000,))[0][0]
        case.figures = {
            "queued": len(fleet.sent),
            "kept_by_queue": backlog_offline,
            "dropped_by_queue": pub.stats().dropped,
            "stored_right_clock": sum(e in stored for e in right),
            "lost_right_clock": sum(e not in stored for e in right),
            "refused_future": reasons.get("future", 0),
            "refused_too_old": reasons.get("too_old", 0),
            "stored_from_future": future,
        }
        check(case, backlog_offline == len(fleet.sent), "the queue dropped events after the clock jumped")
        check(case, case.figures["lost_right_clock"] == 0, "a correctly dated event was lost")
        check(case, future == 0 and not any(e in stored for e in ids["ahead"]), "a future-dated event was stored")
        check(case, reasons.get("future", 0) == per_phase, "not every future-dated window was refused as future")
    finally:
        fleet.stop()
        if harness is not None:
            harness.stop()
        broker.stop()
    return case


# ---- fuzzing -----------------------------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc), after a garbage collection."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def fuzz_mqtt(workdir: Path, sizes: Sizes, rss_bound_mib: float = 256.0) -> Case:
    """Hypothesis-made payloads into the server's MQTT callback, every tenth also through the real broker."""
    from hypothesis import HealthCheck, Phase, given, settings

    from server.validation import REASONS
    from tests.test_server_fuzz import message

    case = Case(
        f"MQTT fuzz x{sizes.fuzz_mqtt}",
        f"{sizes.fuzz_mqtt} Hypothesis payloads (tests/test_server_fuzz.py strategies: mutated events, bytes, "
        "oversized, deep nesting, wrong topics) into the server's message callback, every tenth also published "
        "through Mosquitto; then a valid event through the broker",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    # No rate limit here: the fuzz sends as fast as it can from two device ids, and should reach validation.
    harness = ServerHarness(workdir / "server", broker.url, **{"intake.device_rate_per_s": 1e9,
                                                              "intake.device_burst": 10**9})
    outcomes: Counter = Counter()
    crashes: list[str] = []
    through_broker: list[int] = []
    sim: DeviceSimulator | None = None
    try:
        server = harness.start()
        sim = DeviceSimulator(broker.port)
        rss_before = rss_mib()

        def one(msg: tuple[str, bytes]) -> None:
            topic_, payload = msg
            n = sum(outcomes.values())
            try:
                outcome = server.ingestor.handle(topic_, payload, False, None)
            except Exception as exc:  # a raise here is a crash of intake
                crashes.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            kind = outcome.split(":")[0]
            outcomes[kind] += 1
            if kind == "invalid" and outcome.split(":", 1)[1] not in REASONS:
                crashes.append(f"unknown reason {outcome}")
            if n % 10 == 0:
                try:
                    sim.publish(topic_, payload, wait=False)
                    through_broker.append(1)
                except ValueError:  # paho itself refuses a topic with wildcards or an empty one
                    through_broker.append(0)

        def fuzz(n: int) -> None:
            settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                     phases=[Phase.generate])(given(message())(one))()

        # In two halves: what the second half adds shows whether memory keeps growing.
        fuzz(sizes.fuzz_mqtt // 2)
        rss_half = rss_mib()
        fuzz(sizes.fuzz_mqtt - sizes.fuzz_mqtt // 2)
        # Mosquitto hangs up on a client that sends a malformed topic; a fresh one checks intake still works.
        sim.close()
        sim = DeviceSimulator(broker.port)
        good = make_event(device_id="pi-101")
        sim.event(good)
        took = wait_for(lambda: good.event_id in set(stored_ids(server.storage)), 60)
        health = harness.client().get("/healthz").json()
        rss_after = rss_mib()
        case.figures = {
            "payloads": sum(outcomes.values()) + len(crashes),
            **{f"outcome_{k}": v for k, v in sorted(outcomes.items())},
            "published_through_broker": sum(through_broker),
            "crashes": len(crashes),
            "valid_event_after": took,
            "broker_connected": health["broker_connected"],
            "rss_before_mib": round(rss_before),
            "rss_half_mib": round(rss_half),
            "rss_after_mib": round(rss_after),
            "rss_bound_mib": rss_bound_mib,
        }
        check(case, not crashes, f"crashes: {crashes[:5]}")
        check(case, took and health["broker_connected"] and health["database"] == "ok", "intake stopped working")
        check(case, rss_after - rss_before <= rss_bound_mib, "memory grew past the bound")
        check(case, sum(outcomes.values()) >= sizes.fuzz_mqtt * 0.95, "Hypothesis ran fewer payloads than asked")
    finally:
        if sim is not None:
            sim.close()
        harness.stop()
        broker.stop()
    return case


def _routes(openapi: dict) -> list[tuple[str, str, list[str]]]:
    """(method, path template, body property names) of every operation except streams, which never end."""
    out = []
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            if "stream" in path or "text/event-stream" in json.dumps(op.get("responses", {})):
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            props = list(openapi.get("components", {}).get("schemas", {}).get(ref, {}).get("properties", {}))
            out.append((method.upper(), path, props))
    # The pages are not in the schema.
    out += [("GET", p, []) for p in ("/", "/login", "/admin", "/account", "/rooms/{room_id}", "/static/{name}")]
    out += [("POST", "/login", ["username", "password", "next"])]
    return out


def fuzz_http(workdir: Path, sizes: Sizes, rss_bound_mib: float = 256.0) -> Case:
    """Hypothesis-made requests to every route of /openapi.json and the pages, as admin, teacher, token or nobody."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.test_server_fuzz import json_values

    case = Case(
        f"HTTP fuzz x{sizes.fuzz_http}",
        f"{sizes.fuzz_http} Hypothesis requests over every operation of /openapi.json (streams left out) and the "
        "pages: fuzzed path parameters, query strings, JSON or raw bodies and headers, sent as an admin session "
        "(with its CSRF token), a teacher, a made-up token or nobody",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    harness = ServerHarness(workdir / "server", broker.url)
    statuses: Counter = Counter()
    errors: list[str] = []
    try:
        server = harness.start()
        server.storage.users.create("admin", "admin-password-1", "admin")
        server.storage.users.create("ana", "teacher-password-1", "teacher")
        room = server.storage.rooms.create(SITE, ROOM, "Room 101")
        admin, admin_csrf = harness.login("admin", "admin-password-1")
        teacher, teacher_csrf = harness.login("ana", "teacher-password-1")
        nobody = harness.client()
        routes = [r for r in _routes(nobody.get("/openapi.json").json()) if "logout" not in r[1]]
        callers = {
            "admin": (admin, {"X-CSRF-Token": admin_csrf}),
            "teacher": (teacher, {"X-CSRF-Token": teacher_csrf}),
            "token": (nobody, {"Authorization": "Bearer aula_" + "0" * 40}),
            "nobody": (nobody, {}),
        }
        segment = st.one_of(
            st.sampled_from([str(room["id"]), "1", "0", "-1", "999999999999999999999", SITE, ROOM, "pi-101", "admin",
                             "ana", "..", "%00", "app.js"]),
            st.text(max_size=20),
            st.integers(),
        )
        rss_before = rss_mib()

        @st.composite
        def request(draw) -> tuple[str, str, str, dict, Any, bytes | None]:
            method, path, props = draw(st.sampled_from(routes))
            for name in re.findall(r"{(\w+)}", path):
                path = path.replace("{" + name + "}", urllib.parse.quote(str(draw(segment)), safe=""))
            query = draw(st.dictionaries(st.sampled_from(["since", "until", "room_id", "next", "limit", "days",
                                                          "x"]), st.one_of(st.text(max_size=12), st.integers()),
                                         max_size=3))
            if query:
                path += "?" + urllib.parse.urlencode(query)
            who = draw(st.sampled_from(list(callers)))
            body_kind = draw(st.sampled_from(["props", "json", "raw", "none"]))
            body: Any = None
            raw: bytes | None = None
            if body_kind == "props":
                body = {p: draw(json_values) for p in props if draw(st.booleans())}
            elif body_kind == "json":
                body = draw(json_values)
            elif body_kind == "raw":
                raw = draw(st.binary(max_size=200))
            return method, path, who, dict(draw(st.dictionaries(
                st.sampled_from(["Content-Type", "X-Forwarded-For", "Origin", "Accept", "X-CSRF-Token"]),
                st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30), max_size=2))), \
                body, raw

        @settings(max_examples=sizes.fuzz_http, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, phases=[Phase.generate])
        @given(request())
        def one(req) -> None:
            method, path, who, extra, body, raw = req
            client, headers = callers[who]
            headers = {**headers, **extra}
            try:
                if body is not None:
                    content = json.dumps(body, allow_nan=True).encode()
                    headers.setdefault("Content-Type", "application/json")
                    response = client.request(method, path, content=content, headers=headers)
                else:
                    response = client.request(method, path, content=raw, headers=headers)
            except httpx.HTTPError as exc:  # the server hung up or hung: a crash from the caller's side
                errors.append(f"{method} {path}: {type(exc).__name__} {exc}"[:200])
                return
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                errors.append(f"{method} {path} as {who}: {response.status_code} {response.text[:120]}")

        one()
        health = nobody.get("/healthz").json()
        rss_after = rss_mib()
        server_errors = sum(v for k, v in statuses.items() if k >= 500)
        case.figures = {
            "requests": sum(statuses.values()) + len(errors) - server_errors,
            "routes": len(routes),
            "status_2xx": sum(v for k, v in statuses.items() if 200 <= k < 300),
            "status_3xx": sum(v for k, v in statuses.items() if 300 <= k < 400),
            "status_4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
            "status_5xx": server_errors,
            "connection_errors": len(errors) - server_errors,
            "rss_before_mib": round(rss_before),
            "rss_after_mib": round(rss_after),
            "rss_bound_mib": rss_bound_mib,
        }
        check(case, not errors, f"errors: {errors[:5]}")
        check(case, health["database"] == "ok", "the database is not ok after the fuzz")
        check(case, rss_after - rss_before <= rss_bound_mib, "memory grew past the bound")
        check(case, case.figures["requests"] >= sizes.fuzz_http * 0.95, "Hypothesis ran fewer requests than asked")
    finally:
        harness.stop()
        broker.stop()
    return case


# ---- a flood at the rates -------------------------------------------------------------------------------


def flood_at_device_rates(
    workdir: Path, sizes: Sizes, seconds: float, p99_bound_ms: float | None = 250.0, interval: float = 2.0,
    factor: int = 100,
) -> Case:
    """50 devices at a real device's rate (a window every 2 s) while one sends 100 times as many, for `seconds`."""
    others = sizes.flood_others
    flooding = f"one device publishes {factor} times as often ({factor / interval:g}/s)" if factor else "no flood"
    case = Case(
        f"flood {factor}x, {others} others at {1 / interval:g}/s",
        f"{others} devices publish one window each {interval:g} s (QoS 1) for {seconds:g} s while {flooding}, all in "
        "one room watched by a stream; the others' publish-to-stored (commit) and publish-to-stream latencies",
        {}, True,
    )
    broker = MosquittoBroker(workdir / "broker")
    broker.start()
    harness = ServerHarness(workdir / "server", broker.url, **{"devices.auto_assign": True})
    sims: list[DeviceSimulator] = []
    try:
        server = harness.start()
        room = server.storage.rooms.create(SITE, ROOM, "Room 101")
        server.registry.add_room(SITE, ROOM, room["id"])
        stored_at: dict[str, float] = {}
        streamed_at: dict[tuple[str, int], float] = {}
        write_batch = server.storage.ingest.write_batch

        def timed_write(*args, **kwargs):
            result = write_batch(*args, **kwargs)
            t = time.monotonic()
            stored_at.update((event_id, t) for event_id in result.inserted)
            return result

        def streamed(room_id: int, kind: str, data: dict) -> None:
            if kind == "window":
                streamed_at.setdefault((data["device_id"], data["t_ms"]), time.monotonic())

        server.storage.ingest.write_batch = timed_write
        server.hub.watched = lambda room_id: True
        server.hub.publish = streamed
        sent: dict[str, tuple[float, str, int]] = {}
        sims = [DeviceSimulator(broker.port) for _ in range(others + 1)]
        stop = threading.Event()
        lock = threading.Lock()

        def device(k: int, every: float, record: bool) -> None:
            t0 = time.monotonic() + (k % 50) * every / 50  # spread the devices over their interval
            stop.wait(max(0.0, t0 - time.monotonic()))
            n = 0
            while not stop.is_set():
                start = int(time.time() * 1000) - 2000 + n  # unique per device: the stream view carries no event id
                event = make_event(device_id=f"pi-{k:02d}", seq=n + 1, start_ms=start)
                if record:
                    with lock:
                        sent[event.event_id] = (time.monotonic(), event.device_id, start)
                sims[k].event(event, wait=False)
                n += 1
                stop.wait(max(0.0, t0 + n * every - time.monotonic()))

        threads = [threading.Thread(target=device, args=(k, interval, True), daemon=True) for k in range(others)]
        if factor:
            threads.append(threading.Thread(target=device, args=(others, interval / factor, False), daemon=True))
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        wait_for(lambda: all(e in stored_at for e in sent), 60, step=0.2)
        store_ms = sorted((stored_at[e] - t) * 1000 for e, (t, _, _) in sent.items() if e in stored_at)
        stream_ms = sorted((streamed_at[(d, s)] - t) * 1000 for e, (t, d, s) in sent.items() if (d, s) in streamed_at)
        reasons = harness.client().get("/healthz").json()["invalid_by_reason"]
        flood_id = f"pi-{others:02d}"
        flood_stored = server.storage.db.conn().fetchall(
            "SELECT COUNT(*) FROM events WHERE device_id = ?", (flood_id,))[0][0]

        def pct(values: list[float], q: float) -> float:
            return round(values[int(q * (len(values) - 1))]) if values else float("nan")

        case.figures = {
            "others_events": len(sent),
            "others_stored": len(store_ms),
            "stored_p50_ms": pct(store_ms, 0.5),
            "stored_p99_ms": pct(store_ms, 0.99),
            "stored_max_ms": pct(store_ms, 1.0),
            "streamed_p99_ms": pct(stream_ms, 0.99),
            "flood_stored": flood_stored,
            "rate_limited": reasons.get("rate_limited", 0),
            "shed": reasons.get("shed", 0),
        }
        check(case, len(store_ms) == len(sent), "some of the others' events were not stored")
        if p99_bound_ms is not None:
            check(case, bool(store_ms) and case.figures["stored_p99_ms"] < p99_bound_ms,
                  f"the others' p99 to stored is {p99_bound_ms:g} ms or more")
    finally:
        for sim in sims:
            sim.close()
        harness.stop()
        broker.stop()
    return case


# ---- cases that other test files measure -------------------------------------------------------------------------


def _pytest(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    return done.stdout + done.stderr + f"\n[exit {done.returncode}]"


def flood(sizes: Sizes, rate: float = 10.0) -> Case:
    """tests/test_server_intake_limits.py's flood test, 50 others at `rate` events/s: a burst, not a device's pace."""
    case = Case(
        f"flood burst, {sizes.flood_others} others at {rate:g}/s",
        f"{sizes.flood_others} devices publish {rate:g} windows/s each for 2 s while one device publishes 100 times as "
        "many at once (mosquitto_pub -q 1 -l); others' publish-to-store latency (tests/test_server_intake_limits.py, "
        f"AULA_FLOOD_OTHERS={sizes.flood_others} AULA_FLOOD_RATE={rate:g})",
        {}, True,
    )
    env = {"AULA_FLOOD_OTHERS": str(sizes.flood_others), "AULA_FLOOD_RATE": str(rate)}
    out = _pytest(["tests/test_server_intake_limits.py", "-k", "flood"], env)
    found = re.search(r"p99 (\d+) ms, max (\d+) ms over (\d+) events; flood of (\d+): (\d+) rate-limited, (\d+) shed",
                      out)
    if found is None:
        case.ok = False
        case.failures.append(out[-3000:])
        return case
    p99, most, n, flooded, limited, shed = map(int, found.groups())
    case.figures = {"p99_ms": p99, "max_ms": most, "events": n, "flood": flooded, "rate_limited": limited,
                    "shed": shed, "passed": "[exit 0]" in out}
    check(case, p99 < 250, "p99 at or over 250 ms")
    check(case, "[exit 0]" in out, out[-2000:])
    return case


def disk_fill() -> Case:
    """tests/test_offline_queue_service.py's filled-then-freed disk, with its figures."""
    case = Case(
        "device disk filled, then freed",
        "python -m device run with its state directory on a 400 KiB tmpfs, filled with a ballast file while it "
        "runs, then freed (tests/test_offline_queue_service.py -k full_disk)",
        {}, True,
    )
    out = _pytest(["tests/test_offline_queue_service.py", "-k", "full_disk"])
    found = re.search(r'^\{"degraded_after_fill_s".*\}$', out, re.M)
    if found is None:
        case.ok = "[exit 0]" in out and "skipped" in out
        case.figures = {"skipped": True}
        case.failures.append(out[-2000:])
        return case
    case.figures = json.loads(found.group(0))
    check(case, case.figures["lost"] == 0 and "[exit 0]" in out, "events lost or the test failed")
    return case


# ---- the suite ---------------------------------------------------------------------------------------------------


def table(cases: list[Case]) -> str:
    """A Markdown table: case, what was done, what was counted, whether it held."""
    lines = ["| Case | What was done | What was counted | Held |", "| --- | --- | --- | --- |"]
    for c in cases:
        figures = ", ".join(f"{k} {v}" for k, v in c.figures.items())
        lines.append(f"| {c.name} | {c.done} | {figures} | {'yes' if c.ok else 'NO'} ({c.seconds:.0f} s) |")
    return "\n".join(lines)


def run_suite(sizes: Sizes, workdir: Path, only: list[str] | None = None) -> list[Case]:
    pg_bin = find_pg_bin()
    steps: list[tuple[str, Any]] = [
        *[(f"outage{int(s)}", lambda s=s: broker_outage(workdir / f"outage{int(s)}", sizes, s))
          for s in sizes.outages_s],
        ("kill", lambda: server_kill9(workdir / "kill", sizes)),
        ("postgres", None),
        ("clock", lambda: clock_jump(workdir / "clock", sizes)),
        ("fuzz_mqtt", lambda: fuzz_mqtt(workdir / "fuzz_mqtt", sizes)),
        ("fuzz_http", lambda: fuzz_http(workdir / "fuzz_http", sizes)),
        ("flood_rates", lambda: flood_at_device_rates(workdir / "flood", sizes, sizes.flood_s)),
        ("flood_burst", lambda: flood(sizes)),
        # The burst test's others alone, at its rate and without the flood: what the server's throughput costs.
        ("flood_none", lambda: flood_at_device_rates(workdir / "flood_none", sizes, 2.0, None, 0.1, 0)),
        ("disk", disk_fill),
    ]
    cases = []
    for name, step in steps:
        if only and not any(name.startswith(o) for o in only):
            continue
        t0 = time.monotonic()
        if name == "postgres":
            if pg_bin is None:
                print("PostgreSQL is not installed: its case is left out", flush=True)
                continue
            pg = PostgresServer(pg_bin)
            try:
                pg.start()
                case = postgres_restart(workdir / "postgres", sizes, pg)
            finally:
                pg.stop()
        else:
            case = step()
        case.seconds = time.monotonic() - t0
        print(f"{case.name}: {'held' if case.ok else 'FAILED'} in {case.seconds:.0f} s: {case.figures}", flush=True)
        for failure in case.failures:
            print("  " + failure, flush=True)
        cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> int:
    from bench.machine import banner, describe, write_artifact

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short durations of make test")
    parser.add_argument("--only", nargs="*", help="run only the cases whose names start with these")
    args = parser.parse_args(argv)
    # The cases make devices and the server log every reconnect and refusal; the table is what counts.
    logging.basicConfig(level=logging.ERROR)
    sizes = Sizes.short() if args.short else Sizes()
    info = describe()
    print(banner(info), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="aula-soak-"))
    try:
        cases = run_suite(sizes, workdir, args.only)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(cases))
    command = "python -m tests.fault_suite" + (" --short" if args.short else "")
    path = write_artifact("soak.json" if not args.short else "soak-short.json", {
        **info, "command": command, "sizes": asdict(sizes),
        "cases": [{k: v for k, v in asdict(c).items()} for c in cases],
    })
    print(f"wrote {path}")
    return 0 if all(c.ok for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
