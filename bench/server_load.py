"""Server load benchmark on loopback: N simulated devices at 1 event/s, a burst, and the raw broker ceiling.

Starts its own mosquitto and `python -m server` (SQLite by default), then measures:
- steady state: N devices (default 1,000) each publishing one event per second; end-to-end latency from the
  device's publish to the SSE `window` event on a few rooms' streams (p50/p99), and the ingest rate;
- burst: M events (default 50,000) published as fast as C publishers (mosquitto_pub -l) can; ingest events/s;
- the raw ceiling of the same burst through the same broker to mosquitto_sub (C) and to a bare paho subscriber.
Writes artifacts/bench_server.json. Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from device.contract import topic  # noqa: E402
from server.config import DatabaseConfig  # noqa: E402
from server.db import Database  # noqa: E402
from server.storage import Storage  # noqa: E402
from server.testing import SseReader, make_event  # noqa: E402
from tests.mosquitto import MosquittoBroker, free_port  # noqa: E402

TARGET_EVENTS_PER_S = 5000
TARGET_P99_MS = 250
DEVICES_PER_ROOM = 25
PUBLISHER_PROCESSES = 40
SITE = "bench"

PAHO_SUBSCRIBER = """
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, n = int(sys.argv[1]), int(sys.argv[2])
got, done, ready = [0], threading.Event(), threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-sub", protocol=mqtt.MQTTv5)
def on_message(client, userdata, msg):
    got[0] += 1
    if got[0] >= n:
        done.set()
c.on_message = on_message
c.on_connect = lambda cl, u, f, r, p: cl.subscribe("benchraw/#", qos=1)
c.on_subscribe = lambda *a: ready.set()
c.connect("127.0.0.1", port)
c.loop_start()
ready.wait(10)
print("ready", flush=True)
done.wait(300)
print(got[0], flush=True)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def device_name(i: int) -> tuple[str, str]:
    return f"room-{i // DEVICES_PER_ROOM:03d}", f"dev-{i:05d}"


def burst_publishers(port: int, lines_by_topic: dict[str, list[bytes]]) -> list[subprocess.Popen]:
    """One mosquitto_pub -l per topic, QoS 1: C publishers, so the publishing side is not the bottleneck."""
    procs = []
    for i, topic_ in enumerate(lines_by_topic):
        proc = subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-t", topic_, "-q", "1", "-l", "-i", f"bench-pub-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)

    def feed(proc: subprocess.Popen, lines: list[bytes]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"\n".join(lines) + b"\n")
        proc.stdin.close()

    pairs = zip(procs, lines_by_topic.values(), strict=True)
    threads = [threading.Thread(target=feed, args=(p, lines)) for p, lines in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return procs


def burst_payloads(count: int, devices: int) -> dict[str, list[bytes]]:
    per = {}
    start = int(time.time() * 1000) - 60_000
    n_topics = min(PUBLISHER_PROCESSES, devices)
    for k in range(n_topics):
        room, dev = device_name(k)
        per[topic(SITE, room, dev, "events")] = [
            make_event(SITE, room, dev, seq=j, start_ms=start + j).to_payload() for j in range(count // n_topics)
        ]
    return per


def writer_ceiling(database: str, count: int) -> float:
    """Events/s that the storage layer alone commits, in batches of 500 (validated events, no MQTT)."""
    from server.storage.ingest import DeviceTouch, IncomingEvent

    db = Database(DatabaseConfig(url=database))
    db.migrate()
    storage = Storage(db)
    now = int(time.time() * 1000)
    items = []
    for j in range(count):
        room, dev = device_name(j % 1000)
        event = make_event("writer", room, dev, seq=j, start_ms=now - 60_000 + j)
        items.append((DeviceTouch("writer", dev, room, now), IncomingEvent(event, now, event.to_payload())))
    t0 = time.monotonic()
    for start in range(0, count, 500):
        chunk = items[start : start + 500]
        storage.ingest.write_batch([t for t, _ in chunk], [e for _, e in chunk], [], [])
    rate = count / (time.monotonic() - t0)
    db.close()
    return rate


def raw_ceiling(broker: MosquittoBroker, count: int) -> dict[str, float]:
    """The same burst, QoS 1, to mosquitto_sub (C) and to a bare paho subscriber, on topics the server ignores."""
    per_topic = count // PUBLISHER_PROCESSES
    payload = make_event().to_payload()
    lines = {f"benchraw/{k}": [payload] * per_topic for k in range(PUBLISHER_PROCESSES)}
    total = per_topic * PUBLISHER_PROCESSES
    out = {}
    csub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(broker.port), "-t", "benchraw/#", "-q", "1", "-C", str(total), "-i", "bench-c-sub"],
        stdout=subprocess.DEVNULL,
    )
    psub = subprocess.Popen(
        [sys.executable, "-c", PAHO_SUBSCRIBER, str(broker.port), str(total)], stdout=subprocess.PIPE, text=True
    )
    assert psub.stdout is not None
    psub.stdout.readline()  # ready
    time.sleep(0.5)
    t0 = time.monotonic()
    procs = burst_publishers(broker.port, lines)
    csub.wait(300)
    out["mosquitto_sub_per_s"] = total / (time.monotonic() - t0)
    got = int(psub.stdout.readline() or 0)
    out["paho_sub_per_s"] = got / (time.monotonic() - t0)
    psub.wait(30)
    for p in procs:
        p.wait(60)
    return out


class SteadyPublisher:
    """N devices, one event per second each, spread evenly over the second; remembers when each was published."""

    def __init__(self, port: int, devices: int):
        self.devices = devices
        self.sent: dict[tuple[str, int], float] = {}
        self.count = 0
        self.late_ticks = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-devices", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(2000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def run(self, seconds: float) -> None:
        tick = 0.01
        per_tick = self.devices * tick
        start = time.monotonic()
        owed = 0.0
        i = 0
        seq = 0
        while (now := time.monotonic()) - start < seconds:
            owed += per_tick
            while owed >= 1:
                room, dev = device_name(i)
                window_start = int(time.time() * 1000) - 2000
                event = make_event(SITE, room, dev, seq=seq, start_ms=window_start)
                self.sent[(dev, window_start)] = time.monotonic()
                self.client.publish(topic(SITE, room, dev, "events"), event.to_payload(), qos=1)
                self.count += 1
                owed -= 1
                i += 1
                if i == self.devices:
                    i, seq = 0, seq + 1
            sleep = start + (round((now - start) / tick) + 1) * tick - time.monotonic()
            if sleep > 0:
                time.sleep(sleep)
            else:
                self.late_ticks += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    from bench.machine import banner, describe

    print(banner(describe()))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices at one event per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the steady phase")
    parser.add_argument("--burst", type=int, default=50_000, help="events in the burst phase")
    parser.add_argument("--watch", type=int, default=3, help="rooms whose SSE streams measure latency")
    parser.add_argument("--database", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--protocol", default="5", choices=["5", "3.1.1"], help="the server's MQTT protocol")
    args = parser.parse_args()
    if not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")):
        print("mosquitto-clients are needed (apt-get install mosquitto mosquitto-clients)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="aula-server-bench-"))
    broker = MosquittoBroker(work / "broker")
    # Per-message logging would make the broker the bottleneck.
    broker.conf.write_text(broker.conf.read_text().replace("log_type all", "log_type error"))
    broker.start()
    database = args.database or f"sqlite:///{work / 'server.sqlite3'}"
    http_port = free_port()
    config = work / "server.yaml"
    config.write_text(
        f"mqtt: {{broker: '{broker.url}', protocol: '{args.protocol}', client_id: aula-bench}}\n"
        f"database: {{url: '{database}'}}\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        "devices: {auto_assign: true}\nlog_level: warning\n"
    )
    rooms = (args.devices + DEVICES_PER_ROOM - 1) // DEVICES_PER_ROOM
    db = Database(DatabaseConfig(url=database))
    db.migrate()
    storage = Storage(db)
    room_ids = [storage.rooms.create(SITE, f"room-{r:03d}", f"Bench room {r}")["id"] for r in range(rooms)]
    watched = room_ids[: args.watch]
    token = storage.tokens.create("bench", watched, "bench")["token"]
    db.close()
    server = subprocess.Popen([sys.executable, "-m", "server", "--config", str(config)], cwd=ROOT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10)
    result: dict = {"devices": args.devices, "database": database.split(":")[0], "protocol": args.protocol}
    readers: list[SseReader] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/healthz").json()["broker_connected"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{http_port}"
        readers = [SseReader(f"{base}/api/rooms/{room_id}/stream", headers=auth) for room_id in watched]

        # ---- steady state ----
        publisher = SteadyPublisher(broker.port, args.devices)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        publisher.run(args.seconds)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while http.get("/healthz").json()["events_ingested"] < publisher.count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        health = http.get("/healthz").json()
        cpu_steady = cpu_seconds(server.pid) - cpu0
        latencies = []
        warmup = t0 + 3.0
        for reader in readers:
            for msg in reader.of("window"):
                sent = publisher.sent.get((msg.data["device_id"], msg.data["t_ms"]))
                if sent is not None and sent >= warmup:
                    latencies.append((msg.received - sent) * 1000)
        publisher.close()
        watched_devices = args.watch * DEVICES_PER_ROOM
        expected = sum(1 for (dev, _), t in publisher.sent.items() if t >= warmup and int(dev[4:]) < watched_devices)
        result.update(
            {
                "steady_published": publisher.count,
                "steady_offered_per_s": publisher.count / elapsed,
                "steady_ingested": health["events_ingested"],
                "steady_server_cpu_fraction": cpu_steady / (time.monotonic() - t0),
                "latency_samples": len(latencies),
                "latency_expected": expected,
                "latency_p50_ms": percentile(latencies, 0.50),
                "latency_p99_ms": percentile(latencies, 0.99),
                "latency_max_ms": max(latencies) if latencies else float("nan"),
                "latency_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
                "publisher_late_ticks": publisher.late_ticks,
            }
        )

        for reader in readers:  # the burst measures intake alone
            reader.close()
        readers = []

        # ---- burst ----
        before = health["events_ingested"]
        lines = burst_payloads(args.burst, args.devices)
        total = sum(len(v) for v in lines.values())
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        procs = burst_publishers(broker.port, lines)
        deadline = time.monotonic() + 180
        while (done := http.get("/healthz").json()["events_ingested"] - before) < total:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        burst_s = time.monotonic() - t0
        for p in procs:
            p.wait(60)
        result.update(
            {
                "burst_events": total,
                "burst_ingested": done,
                "burst_s": burst_s,
                "burst_ingest_per_s": done / burst_s,
                "burst_server_cpu_us_per_event": (cpu_seconds(server.pid) - cpu0) / max(done, 1) * 1e6,
            }
        )
        final = http.get("/healthz").json()
        result["invalid"] = final["events_invalid"]
        result["duplicates"] = final["events_duplicate"]

        # ---- raw broker ceiling, same broker, same burst shape; and the storage layer alone ----
        result.update(raw_ceiling(broker, args.burst))
        writer_db = f"sqlite:///{work / 'writer.sqlite3'}" if args.database is None else database
        result["writer_ceiling_per_s"] = writer_ceiling(writer_db, min(args.burst, 50_000))
    finally:
        for reader in readers:
            reader.close()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    r = result
    print(f"\n== server load ({r['devices']} devices, {r['database']}, MQTT {r['protocol']}, loopback) ==")
    print(
        f"steady: offered {r['steady_offered_per_s']:.0f} events/s, ingested {r['steady_ingested']} of "
        f"{r['steady_published']}; server CPU {100 * r['steady_server_cpu_fraction']:.0f}% of a core"
    )
    print(
        f"publish -> SSE latency over {r['latency_samples']} events (expected about {r['latency_expected']}): "
        f"p50 {r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms, max {r['latency_max_ms']:.1f} ms "
        f"(target p99 <= {TARGET_P99_MS} ms)"
    )
    print(
        f"burst: {r['burst_ingested']} of {r['burst_events']} events in {r['burst_s']:.1f} s = "
        f"{r['burst_ingest_per_s']:.0f} events/s ingested (target >= {TARGET_EVENTS_PER_S}); "
        f"{r['burst_server_cpu_us_per_event']:.0f} us server CPU per event"
    )
    print(
        f"raw broker ceiling, same burst: mosquitto_sub {r['mosquitto_sub_per_s']:.0f}/s, bare paho subscriber "
        f"{r['paho_sub_per_s']:.0f}/s; server/mosquitto_sub {r['burst_ingest_per_s'] / r['mosquitto_sub_per_s']:.2f}, "
        f"server/paho {r['burst_ingest_per_s'] / r['paho_sub_per_s']:.2f}"
    )
    print(f"storage layer alone (write_batch, 500 per transaction): {r['writer_ceiling_per_s']:.0f} events/s")
    ok_rate = r["burst_ingest_per_s"] >= TARGET_EVENTS_PER_S
    ok_latency = r["latency_p99_ms"] <= TARGET_P99_MS and r["latency_samples"] >= 0.99 * r["latency_expected"]
    print(f"{'PASS' if ok_rate else 'MISS'}  ingest >= {TARGET_EVENTS_PER_S} events/s")
    print(f"{'PASS' if ok_latency else 'MISS'}  p99 <= {TARGET_P99_MS} ms at {r['devices']} devices x 1/s")
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "bench_server.json").write_text(json.dumps(result, indent=2))
    return 0 if ok_rate and ok_latency else 1


if __name__ == "__main__":
    sys.exit(main())
