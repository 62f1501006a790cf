"""The fleet at a glance: each device's health trend, and alerts for devices offline or degraded too long.

Trends are the last `fleet.trend_samples` health messages of each device. The monitor holds them in memory
and appends each health message as it arrives; the batch writer keeps the same rows in the database
(`device_health_trend`, server/storage/health_trend.py), from which the server fills the monitor at start, so
the trends survive a restart.

An alert is raised when a device's shown state has been `offline` or `degraded` for `fleet.alert_after_s`; it
is shown on the fleet page, counted in /metrics, and published retained on `aula/v1/<site>/alerts` while any
is active, so that a school's own monitoring can subscribe. When the last alert of a site clears, the retained
message is cleared too (an empty retained payload).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from device.contract.alerts import ALERT_STATES, DeviceAlert, SiteAlerts
from device.contract.schema import short_reason
from device.contract.topics import alerts_topic
from server.health_trend import TREND_FIELDS, TREND_SAMPLES, figure, trend_row

logger = logging.getLogger(__name__)

__all__ = ["ALERT_STATES", "AlertLoop", "FleetMonitor", "alerts_topic", "prometheus_fleet"]


class FleetMonitor:
    """Health trends per device, how long each has been in its state, and the active alerts."""

    def __init__(self, alert_after_s: float, samples: int = TREND_SAMPLES):
        self.alert_after_ms = int(alert_after_s * 1000)
        self.samples = samples
        self._lock = threading.Lock()
        self._trends: dict[tuple[str, str], deque] = {}  # (trend row, its health message's own ts_ms) per device
        self._since: dict[tuple[str, str], tuple[str, int]] = {}  # shown state and since when
        self._published: dict[str, str] = {}  # site -> the retained alerts payload last published

    def note_trend(self, site: str, device_id: str, figures: dict[str, float | None], ts_ms: int,
                   sent_ms: int | None = None) -> None:
        """Append one health message's trend figures (server/health_trend.py: trend_figures), received at `ts_ms`;
        a message whose own ts_ms (`sent_ms`) is already in the trend was delivered twice and adds nothing."""
        row = trend_row(ts_ms, figures)
        with self._lock:
            trend = self._trends.get((site, device_id))
            if trend is None:
                trend = self._trends[(site, device_id)] = deque(maxlen=self.samples)
            if sent_ms is not None and any(sent == sent_ms for _, sent in trend):
                return
            trend.append((row, sent_ms))

    def restore(self, trends: dict[tuple[str, str], list[tuple[dict[str, Any], int | None]]]) -> None:
        """Take the stored trends (each device's rows oldest first, with their health messages' own ts_ms), as at
        start, before health arrives."""
        with self._lock:
            for key, rows in trends.items():
                self._trends[key] = deque(rows, maxlen=self.samples)

    def trend(self, site: str, device_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [row for row, _ in self._trends.get((site, device_id), ())]

    def forget(self, keep: set[tuple[str, str]]) -> None:
        with self._lock:
            for key in [k for k in self._trends if k not in keep]:
                del self._trends[key]
            for key in [k for k in self._since if k not in keep]:
                del self._since[key]

    def since(self, site: str, device_id: str, state: str, now_ms: int, hint_ms: int | None = None) -> int:
        """When the device entered its shown `state` (first seen in it now, or `hint_ms` when known)."""
        with self._lock:
            old = self._since.get((site, device_id))
            if old is None or old[0] != state:
                old = (state, hint_ms if hint_ms is not None and hint_ms <= now_ms else now_ms)
                self._since[(site, device_id)] = old
            return old[1]

    def alerts(self, views: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
        """The active alerts among devices as the fleet view shows them (state, reason, since_ms set)."""
        out = []
        for v in views:
            if v["state"] in ALERT_STATES and now_ms - v["since_ms"] >= self.alert_after_ms:
                out.append({"site": v["site"], "device_id": v["device_id"], "room": v.get("room"),
                            "state": v["state"], "reason": v.get("reason"), "since_ms": v["since_ms"]})
        return out

    def to_publish(self, sites: set[str], alerts: list[dict[str, Any]], now_ms: int) -> list[tuple[str, bytes]]:
        """(topic, retained payload) for each site whose alerts changed; an empty payload clears the topic."""
        by_site: dict[str, list[dict[str, Any]]] = {s: [] for s in sites | set(self._published)}
        for a in alerts:
            item = {k: v for k, v in a.items() if k != "site"}
            item["reason"] = item.get("reason") and short_reason(item["reason"])  # as the contract bounds it
            by_site.setdefault(a["site"], []).append(item)
        out = []
        for site, items in sorted(by_site.items()):
            key = json.dumps(items, sort_keys=True)
            if self._published.get(site, "[]") == key:
                continue
            found = [DeviceAlert(**a) for a in items]
            payload = SiteAlerts(site=site, ts_ms=now_ms, alerts=found).to_payload() if items else b""
            out.append((alerts_topic(site), payload))
        return out

    def published(self, topic_payloads: list[tuple[str, bytes]]) -> None:
        """Record what the broker took, so that only changes are sent again."""
        for topic_name, payload in topic_payloads:
            site = topic_name.split("/")[2]
            items = json.loads(payload)["alerts"] if payload else []
            self._published[site] = json.dumps(items, sort_keys=True)


class AlertLoop:
    """Every `interval_s`: compute the fleet's alerts and publish each site's that changed."""

    def __init__(self, interval_s: float, compute: Callable[[], tuple[set[str], list[dict[str, Any]]]],
                 monitor: FleetMonitor, publish: Callable[[str, bytes], bool]):
        self.interval_s = interval_s
        self.compute = compute
        self.monitor = monitor
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        sites, alerts = self.compute()
        pending = self.monitor.to_publish(sites, alerts, int(time.time() * 1000))
        done = [(t, p) for t, p in pending if self.publish(t, p)]
        self.monitor.published(done)
        for t, p in done:
            logger.info("fleet: %s %s", t, "cleared" if not p else f"{len(json.loads(p)['alerts'])} alert(s)")
        return len(done)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # a database hiccup must not end the loop
                logger.warning("fleet: alert check failed (%s); next in %.0f s", exc, self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aula-fleet-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# Gauge name -> (help, how to read it from a fleet view).
_GAUGES: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
    "aula_device_up": ("1 while the device is online or degraded, 0 when offline, stopped or new.",
                       lambda v: 1.0 if v["state"] in ("online", "degraded") else 0.0),
    "aula_device_degraded": ("1 while the device reports degraded.", lambda v: float(v["state"] == "degraded")),
    "aula_device_paused": ("1 while the device's privacy pause is on.", lambda v: float(bool(v.get("paused")))),
    "aula_device_last_seen_seconds": ("Unix time of the device's last message.",
                                      lambda v: v["last_seen_ms"] / 1000 if v["last_seen_ms"] else None),
}
for _name, (_section, _figure_name) in TREND_FIELDS.items():
    _GAUGES[f"aula_device_{_name}"] = (f"The device's latest health figure {_section}.{_figure_name}.",
                                       lambda v, s=_section, f=_figure_name: figure(v.get("health") or {}, s, f))


def prometheus_fleet(views: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """Per-device gauges (labels site, device, room) and the number of active alerts."""
    lines = []
    for name, (text, read) in _GAUGES.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        for v in views:
            value = read(v)
            if value is None:
                continue
            labels = f'site="{_label(v["site"])}",device="{_label(v["device_id"])}",room="{_label(v["room"] or "")}"'
            lines.append(f"{name}{{{labels}}} {value:g}")
    lines += ["# HELP aula_fleet_alerts Devices offline or degraded for longer than fleet.alert_after_s.",
              "# TYPE aula_fleet_alerts gauge", f"aula_fleet_alerts {len(alerts)}"]
    return "\n".join(lines) + "\n"
