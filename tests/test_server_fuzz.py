"""Fuzzed payloads: the running server never crashes, stores only valid events and counts the rest by reason."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.contract import MAX_PAYLOAD_BYTES, topic
from server.testing import DeviceSimulator, ServerHarness, make_event, wait_for
from server.validation import REASONS
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)

EVENT_FIELDS = list(json.loads(make_event().to_payload()))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["happy", "emotion_window", "status", "health", "", "pi-101", "school1", "room101"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_event(draw) -> bytes:
    """A valid event with fields replaced, removed or added; NaN and infinity are written as bare tokens."""
    data = json.loads(make_event(device_id="pi-101").to_payload())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "remove", "add", "nested"]))
        key = draw(st.sampled_from(EVENT_FIELDS))
        if action == "replace":
            data[key] = draw(json_values)
        elif action == "remove":
            data.pop(key, None)
        elif action == "add":
            data[draw(st.text(max_size=12))] = draw(json_values)
        elif isinstance(data.get("distribution"), dict):
            data["distribution"][draw(st.sampled_from(["happy", "sad", "bogus"]))] = draw(json_values)
    return json.dumps(data, allow_nan=True).encode()


@st.composite
def message(draw) -> tuple[str, bytes]:
    """A (topic, payload) pair a broken or hostile device might send."""
    device = draw(st.sampled_from(["pi-101", "pi-102"]))
    leaf = draw(st.sampled_from(["events", "events", "events", "status", "health"]))
    good_topic = topic("school1", "room101", device, leaf)
    kind = draw(st.sampled_from(["mutated", "mutated", "bytes", "huge", "nested", "wrong_topic", "json", "valid"]))
    if kind == "mutated":
        return good_topic, draw(mutated_event())
    if kind == "bytes":
        return good_topic, draw(st.binary(max_size=300))
    if kind == "huge":
        return good_topic, b'{"pad":"' + b"x" * draw(st.integers(MAX_PAYLOAD_BYTES, 3 * MAX_PAYLOAD_BYTES)) + b'"}'
    if kind == "nested":
        depth = draw(st.integers(100, 8000))
        return good_topic, b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    if kind == "wrong_topic":
        levels = draw(st.lists(st.text(min_size=0, max_size=12), min_size=0, max_size=7))
        return draw(st.sampled_from(["aula/v1/", "", "aula/v2/"])) + "/".join(levels), make_event().to_payload()
    if kind == "json":
        return good_topic, json.dumps(draw(json_values), allow_nan=True).encode()
    event = make_event(device_id=device)
    return topic("school1", "room101", device, "events"), event.to_payload()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One server and broker for all fuzz cases (starting one per case would take minutes)."""
    from tests.mosquitto import MosquittoBroker, require_mosquitto

    require_mosquitto()
    broker = MosquittoBroker(tmp_path_factory.mktemp("fuzz-broker"))
    broker.start()
    harness = ServerHarness(tmp_path_factory.mktemp("fuzz-server"), broker.url)
    harness.start()
    yield harness, broker
    harness.stop()
    broker.stop()


OUTCOMES: Counter = Counter()


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
@given(message())
def test_fuzzed_messages_through_the_mqtt_callback(running, msg):
    harness, _ = running
    topic_, payload = msg
    # The very function the paho callback calls; a raise here would be a crash of intake.
    outcome = harness.server.ingestor.handle(topic_, payload, False, None)
    OUTCOMES[outcome.split(":")[0]] += 1
    assert outcome in {"event", "duplicate", "status", "health", "quarantine"} or outcome.split(":", 1)[1] in REASONS


def test_fuzz_left_the_server_consistent(running):
    """Runs after the fuzz cases: every valid event was stored, every invalid one counted, and intake still works."""
    harness, _ = running
    assert sum(OUTCOMES.values()) >= 1000, OUTCOMES
    assert OUTCOMES["invalid"] > 500 and OUTCOMES["event"] >= 1, OUTCOMES
    assert wait_for(lambda: harness.stat("events_ingested") == OUTCOMES["event"], 20), (OUTCOMES, harness.stat)
    assert harness.stat("events_invalid") == OUTCOMES["invalid"]
    # A newer schema version (a mutated "schema") is kept for a later release, not counted invalid.
    assert wait_for(lambda: harness.stat("events_quarantined") == OUTCOMES["quarantine"], 20), OUTCOMES
    assert harness.server.storage.ingest.count_events() == OUTCOMES["event"]
    assert harness.client().get("/healthz").json()["database"] == "ok"


def test_garbage_through_the_real_broker(running):
    harness, broker = running
    before_invalid = harness.stat("events_invalid")
    before_ok = harness.stat("events_ingested")
    rng = random.Random(7)
    device = DeviceSimulator(broker.port)
    try:
        sent_invalid = 0
        payloads = [
            b"",
            b"null",
            b"[]",
            b'{"type":"emotion_window","schema":1}',
            b'{"valence": NaN}',
            b"{" * 5000,
            b"\xc3\x28\xa0\xa1",
            b"x" * (MAX_PAYLOAD_BYTES + 1),
            json.dumps({**json.loads(make_event().to_payload()), "seq": 2**60}).encode(),
            json.dumps({**json.loads(make_event().to_payload()), "arousal": 1e308}).encode(),
            json.dumps({**json.loads(make_event().to_payload()), "counts": {"faces": -1}}).encode(),
            make_event(device_id="someone-else").to_payload(),  # topic says pi-101
        ]
        payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(150)]
        for payload in payloads:
            device.publish(topic("school1", "room101", "pi-101", "events"), payload, wait=False)
            sent_invalid += 1
        for leaf in ("status", "health"):
            for payload in payloads[:20]:
                device.publish(topic("school1", "room101", "pi-101", leaf), payload, wait=False)
                sent_invalid += 1
        good = make_event(device_id="pi-101")
        device.event(good)
        assert wait_for(lambda: harness.stat("events_invalid") - before_invalid == sent_invalid, 20), (
            harness.stat("events_invalid") - before_invalid,
            sent_invalid,
        )
        assert wait_for(lambda: harness.stat("events_ingested") == before_ok + 1, 10)
        health = harness.client().get("/healthz").json()
        assert health["broker_connected"] and health["database"] == "ok"
    finally:
        device.close()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json"])
def test_a_body_that_is_not_utf8_gets_422_not_500(running, content_type):
    """FastAPI's own validation handler echoed such a body back and failed on it (500 for any content type but
    JSON), found by the HTTP fuzz of tests/fault_suite.py."""
    harness, _ = running
    headers = {"Content-Type": content_type} if content_type else {}
    with harness.client() as client:
        for path in ("/api/login", "/api/me/password"):
            response = client.post(path, content=b"\xd2\x18 not utf-8", headers=headers)
            assert response.status_code in (400, 401, 403, 422), (path, response.status_code, response.text)


def test_nan_bodies_and_ids_beyond_64_bits_get_422_not_500(running):
    """Both were 500s in the HTTP fuzz: a validation error echoed NaN or infinity back (not JSON), and SQLite
    cannot compare a room id of more than 64 bits."""
    harness, _ = running
    harness.server.storage.users.create("fuzz-admin", "fuzz-admin-password", "admin")
    admin, csrf = harness.login("fuzz-admin", "fuzz-admin-password")
    try:
        nan = b'{"username": -Infinity, "password": NaN}'
        response = admin.post("/api/login", content=nan, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "username"]
        password = admin.post("/api/me/password", content=b'{"current_password": {"a": NaN}, "new_password": 1}',
                              headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert password.status_code == 422, password.text
        for path in ("/api/rooms/32589158477190044730/report.csv", "/api/rooms/32589158477190044730/live"):
            assert admin.get(path).status_code == 422, path
    finally:
        admin.close()
