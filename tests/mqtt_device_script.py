"""A device process for the MQTT tests: publish N events, then hold (to be killed) or drain and stop cleanly.

    python -m tests.mqtt_device_script --broker mqtt://127.0.0.1:1883 --queue /tmp/q.sqlite3 --count 10 --hold

It prints one JSON object per line on stdout (`started`, `queued`, `published`, `drained`) so a test can follow it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from device.common.broker_settings import broker_url_arg
from device.contract import EmotionEvent, valence_arousal
from device.contract.labels import LABELS
from device.mqtt.config import MqttConfig
from device.mqtt.publisher import EventPublisher


def make_event(site: str, room: str, device_id: str, i: int) -> EmotionEvent:
    """A valid window whose distribution varies with i; seq is given by the queue."""
    dist = {label: 0.0 for label in LABELS}
    dist[LABELS[i % len(LABELS)]] = 0.6
    dist["neutral"] += 0.4
    v, a = valence_arousal(dist)
    start = 1_700_000_000_000 + i * 2000
    return EmotionEvent(
        device_id=device_id,
        site=site,
        room=room,
        seq=0,
        window_start_ms=start,
        window_end_ms=start + 2000,
        distribution=dist,
        dominant=max(dist, key=dist.get),
        valence=v,
        arousal=a,
        modalities={"face": dist},
        counts={"faces": 5},
        models={"face": "face_emotion_int8@1"},
    )


def build_config(broker: str, queue_path: str | Path, device_id: str = "dev1", **overrides) -> MqttConfig:
    """A test config: fast reconnects and drain, the site and room the tests subscribe to."""
    data = {
        "broker": broker,
        "site": "school1",
        "room": "room101",
        "device_id": device_id,
        "keepalive": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "drain_rate": 200.0,
        "queue": {"path": str(queue_path)},
    }
    data.update(overrides)
    return MqttConfig.model_validate(data)


def say(**data) -> None:
    print(json.dumps(data), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", type=broker_url_arg, required=True, help="mqtt://host:port")
    parser.add_argument("--queue", required=True, help="SQLite queue file")
    parser.add_argument("--device", default="dev1")
    parser.add_argument("--protocol", default="5", choices=["5", "3.1.1"])
    parser.add_argument("--count", type=int, default=0, help="events to publish")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--hold", action="store_true", help="after publishing, wait until killed")
    parser.add_argument("--drain-rate", type=float, default=200.0, help="events per second at most")
    parser.add_argument("--drain-timeout", type=float, default=20.0, help="seconds to wait for an empty queue")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    # systemd stops a service with SIGTERM: end through the clean path.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    config = build_config(args.broker, args.queue, args.device, protocol=args.protocol, drain_rate=args.drain_rate)
    publisher = EventPublisher(config)
    publisher.start()
    try:
        say(started=True, backlog=len(publisher.queue))
        for i in range(args.count):
            stored = publisher.publish_event(make_event(config.site, config.room, config.device_id, i))
            say(queued=stored.seq, event_id=stored.event_id)
            if args.interval:
                time.sleep(args.interval)
        say(published=args.count, backlog=len(publisher.queue))
        if args.hold:
            while True:
                time.sleep(1)
        deadline = time.monotonic() + args.drain_timeout
        while len(publisher.queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = publisher.stats()
        say(drained=stats.backlog == 0, stats=stats.to_dict())
        return 0 if stats.backlog == 0 else 1
    finally:
        publisher.stop(clean=True)


if __name__ == "__main__":
    sys.exit(main())
