"""Helpers for tests and benchmarks: an in-process server, a device-like publisher, an SSE reader, event builders."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.contract import DeviceState, EmotionEvent, HealthMessage, topic, valence_arousal
from device.contract.labels import LABELS
from server.config import ServerConfig, load_server_config
from server.service import AulaServer


def distribution(label: str = "happy", p: float = 0.7) -> dict[str, float]:
    """A distribution with `p` on one label and the rest spread evenly."""
    rest = (1.0 - p) / (len(LABELS) - 1)
    return {k: (p if k == label else rest) for k in LABELS}


def make_event(
    site: str = "school1",
    room: str = "room101",
    device_id: str = "pi-101",
    seq: int = 1,
    start_ms: int | None = None,
    label: str = "happy",
    p: float = 0.7,
    faces: int = 4,
    event_id: str | None = None,
    speech: dict[str, float] | None = None,
    speech_segments: int | None = None,
    text: dict[str, float] | None = None,
    text_utterances: int | None = None,
) -> EmotionEvent:
    """A valid 2 s emotion window, built with the device's own EmotionEvent.

    The fused distribution and the face modality are `distribution(label, p)`; below 3 faces the face modality is
    withheld (null), as the device withholds it and the server requires. `speech` is the speech modality's
    distribution (None: no speech in the window), and `speech_segments` its count (1 when speech is given); `text` and
    `text_utterances` are the same for the words' mood (the device sends the mood, never the words).
    """
    start = int(time.time() * 1000) - 2000 if start_ms is None else start_ms
    dist = distribution(label, p)
    valence, arousal = valence_arousal(dist)
    modalities: dict[str, dict[str, float] | None] = {"face": dist if faces >= 3 else None}
    counts = {"faces": faces}
    models = {"face": "face_emotion_int8@1"}
    if speech is not None:
        modalities["speech"] = speech
        models["speech"] = "speech_emotion_int8@1"
    if speech is not None or speech_segments is not None:
        counts["speech_segments"] = (1 if speech is not None else 0) if speech_segments is None else speech_segments
    if text is not None:
        modalities["text"] = text
        models["text"] = "text_emotion_int8@1"
    if text is not None or text_utterances is not None:
        counts["text_utterances"] = (1 if text is not None else 0) if text_utterances is None else text_utterances
    return EmotionEvent(
        device_id=device_id,
        site=site,
        room=room,
        seq=seq,
        window_start_ms=start,
        window_end_ms=start + 2000,
        distribution=dist,
        dominant=label,
        valence=valence,
        arousal=arousal,
        modalities=modalities,
        counts=counts,
        models=models,
        event_id=event_id or uuid.uuid4().hex,
    )


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll predicate until it is true or timeout seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def wait_for_broker(url: str, process, timeout: float = 60.0) -> dict | None:
    """Poll a server's /healthz `url` until it reports the broker connected, `process` (a Popen) exits or `timeout`
    seconds pass; return the last health read (None if none was)."""
    health, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(url, timeout=2).json()
            if health.get("broker_connected"):
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    return health


class DeviceSimulator:
    """A paho publisher that sends events, statuses and health on the device topics with QoS 1."""

    def __init__(self, port: int, client_id: str | None = None, protocol: str = "5"):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sim-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        self._health_ts: dict[str, int] = {}  # each device's last health ts_ms
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self._connected.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("simulator could not connect")

    def publish(self, topic_: str, payload: bytes, qos: int = 1, retain: bool = False, wait: bool = True):
        info = self.client.publish(topic_, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(10)
        return info

    def event(self, event: EmotionEvent, wait: bool = True):
        return self.publish(topic(event.site, event.room, event.device_id, "events"), event.to_payload(), wait=wait)

    def status(self, site: str, room: str, device_id: str, state: str, reason: str | None = None):
        payload = {"type": "status", "schema": 1, "device_id": device_id, "state": state}
        payload.update({"ts_ms": int(time.time() * 1000), "reason": reason, "paused": False})
        return self.publish(topic(site, room, device_id, "status"), json.dumps(payload).encode(), retain=True)

    def health(self, site: str, room: str, device_id: str, **fields: Any):
        """A health message; `fields` are HealthMessage fields (e.g. `vision={"detect_ms_p50": 4.1}`).

        Each of a device's messages gets a later ts_ms than its last one, as a device's do (one every
        `health_interval_s`): the server takes a ts_ms it already holds for a redelivery and keeps the first.
        Messages sent in one loop would otherwise share a millisecond."""
        ts_ms = max(int(time.time() * 1000), self._health_ts.get(device_id, 0) + 1)
        self._health_ts[device_id] = ts_ms
        message = HealthMessage(device_id=device_id, ts_ms=ts_ms, state=DeviceState.ONLINE, **fields)
        return self.publish(topic(site, room, device_id, "health"), message.to_payload())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class SseMessage:
    event: str
    data: Any
    received: float  # time.monotonic()


class SseReader:
    """Reads a Server-Sent-Event stream on a thread and keeps every message (comments too, as event ':')."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, cookies: Any = None):
        self.url = url
        self.messages: list[SseMessage] = []
        self.status_code: int | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(headers=headers or {}, cookies=cookies, timeout=httpx.Timeout(30, read=60))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url) as response:
                self.status_code = response.status_code
                self.connected.set()
                if response.status_code != 200:
                    return
                event, data = "message", []
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.messages.append(SseMessage(":", line[1:].strip(), time.monotonic()))
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        self.messages.append(SseMessage(event, json.loads("\n".join(data)), time.monotonic()))
                        event, data = "message", []
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self.connected.set()

    def of(self, event: str) -> list[SseMessage]:
        return [m for m in list(self.messages) if m.event == event]

    def close(self) -> None:
        self._stop.set()
        self._client.close()


class ServerHarness:
    """An AulaServer in this process with HTTP on a free loopback port; restartable on the same database."""

    def __init__(self, workdir: Path, broker_url: str, database_url: str | None = None, **overrides: Any):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or f"sqlite:///{self.workdir / 'server.sqlite3'}"
        self.overrides = {
            "mqtt.broker": broker_url,
            "mqtt.client_id": f"aula-test-{uuid.uuid4().hex[:8]}",
            "mqtt.reconnect_min_s": 0.1,
            "mqtt.reconnect_max_s": 0.5,
            "database.url": self.database_url,
            **overrides,
        }
        self.server: AulaServer | None = None
        self.port = 0

    @property
    def config(self) -> ServerConfig:
        return load_server_config(None, self.overrides)

    def start(self, wait_broker: bool = True) -> AulaServer:
        self.server = AulaServer(self.config)
        self.server.start_background()
        self.port = self.server.start_http_thread()
        if wait_broker:
            assert self.server.broker is not None
            assert self.server.broker.wait_subscribed(10), "server did not subscribe at the broker"
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop_http_thread()
            self.server.stop_background()
            self.server = None

    def restart(self) -> AulaServer:
        self.stop()
        return self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=15, **kwargs)

    def login(self, username: str, password: str) -> tuple[httpx.Client, str]:
        """A client with a session cookie, and the session's CSRF token."""
        client = self.client()
        response = client.post("/api/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return client, client.get("/api/me").json()["csrf"]

    def stat(self, name: str) -> int:
        assert self.server is not None
        return self.server.stats.get(name)
