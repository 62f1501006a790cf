"""Login throttling slows a guesser without locking the teacher out: a doubling wait per (address, user name), a
looser one per address, and a bounded table that forgets the least recently failed entry, never everyone."""

from __future__ import annotations

import pytest

from server.auth import LoginLimiter
from server.testing import ServerHarness
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)

TEACHER_PW = "teacher-password"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_each_failure_doubles_the_wait_up_to_the_cap():
    clock = Clock()
    limiter = LoginLimiter(base_s=1, max_s=8, clock=clock)
    waits = []
    for _ in range(6):
        assert limiter.retry_after("10.0.0.9", "ana") == 0
        limiter.failed("10.0.0.9", "Ana")  # names are matched without case
        waits.append(limiter.retry_after("10.0.0.9", "ana"))
        clock.t += waits[-1]
    assert waits == [1, 2, 4, 8, 8, 8]
    limiter.succeeded("10.0.0.9", "ana")
    assert limiter.retry_after("10.0.0.9", "ana") == 0


def test_a_guesser_at_another_address_does_not_lock_the_teacher_out():
    clock = Clock()
    limiter = LoginLimiter(base_s=1, max_s=300, clock=clock)
    for _ in range(50):
        limiter.failed("203.0.113.66", "ana")
    assert limiter.retry_after("203.0.113.66", "ana") == 300
    assert limiter.retry_after("10.0.0.9", "ana") == 0  # the teacher's own machine


def test_an_address_spraying_names_waits_after_ten_times_as_many_failures():
    clock = Clock()
    limiter = LoginLimiter(base_s=1, max_s=300, address_factor=10, clock=clock)
    for i in range(9):
        limiter.failed("203.0.113.66", f"user{i}")
    assert limiter.retry_after("203.0.113.66", "fresh-name") == 0
    limiter.failed("203.0.113.66", "user9")
    assert limiter.retry_after("203.0.113.66", "fresh-name") == 1
    for i in range(10, 20):
        limiter.failed("203.0.113.66", f"user{i}")
    assert limiter.retry_after("203.0.113.66", "fresh-name") == 2
    assert limiter.retry_after("10.0.0.9", "fresh-name") == 0


def test_the_table_is_bounded_and_forgets_the_least_recently_failed_entry_only():
    clock = Clock()
    limiter = LoginLimiter(base_s=1, max_s=300, max_entries=100, clock=clock)
    for _ in range(5):
        limiter.failed("203.0.113.66", "ana")  # the attacker's entries, kept fresh below
    for i in range(1000):
        clock.t += 0.001
        limiter.failed(f"198.51.100.{i % 250}", f"name{i}")
        if i % 40 == 0:
            limiter.failed("203.0.113.66", "ana")
    assert len(limiter) <= 100
    # No global reset: the address that keeps failing is still slowed down.
    assert limiter.retry_after("203.0.113.66", "ana") > 0
    # The oldest entries went first.
    assert limiter.retry_after("198.51.100.0", "name0") == 0
    assert limiter.retry_after("198.51.100.249", "name999") > 0


@pytest.fixture
def harness(tmp_path, mosquitto):
    made = ServerHarness(tmp_path / "server", mosquitto.url)
    server = made.start()
    server.storage.users.create("ana", TEACHER_PW, "teacher")
    yield made
    made.stop()


def test_over_http_a_guesser_elsewhere_never_locks_the_teacher_out(harness):
    attacker = {"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https"}
    client = harness.client()
    guesses = [client.post("/api/login", json={"username": "ana", "password": f"guess{i}"}, headers=attacker)
               for i in range(20)]
    codes = [g.status_code for g in guesses]
    assert codes[0] == 401 and set(codes[1:]) == {429}  # slowed at once
    assert int(guesses[-1].headers["retry-after"]) >= 1
    teacher = {"X-Forwarded-For": "192.0.2.10", "X-Forwarded-Proto": "https"}
    ok = harness.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW}, headers=teacher)
    assert ok.status_code == 200
    assert harness.client().post("/api/login", json={"username": "ana", "password": TEACHER_PW}).status_code == 200
