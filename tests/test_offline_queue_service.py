"""The whole device (`python -m device run`) with its state directory on a small tmpfs that fills up or is read-only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device import __main__ as cli
from device.errors import ConfigError
from device.offline_queue import QueueError, QueueFault
from tests.mosquitto import broker_factory_fixture, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.mqtt_helpers import Collector, wait_for
from tests.test_device_service import TOPICS, stop_device
from tests.test_offline_queue import FailingDisk, SmallDisk, can_fail_ext4, can_mount

ROOT = Path(__file__).resolve().parent.parent


def start_device(broker, state_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    """The device on `broker`, logging to a file (a fault's log lines must not fill a pipe nobody reads)."""
    config = log.parent / "device.yaml"
    config.write_text("mqtt:\n  health_interval_s: 1\n")
    cmd = [sys.executable, "-m", "device", "run", "--broker", broker.url, "--site", "test-school", "--room", "room-7",
           "--device-id", "pi-7", "--state-dir", str(state_dir), "--config", str(config), *args]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)


@pytest.fixture
def disk(tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN (tests/test_offline_queue.py covers the queue)")
    d = SmallDisk(tmp_path / "state", 400)
    yield d
    d.close()


def _states(collector: Collector) -> list[tuple[str, str | None]]:
    return [(s.state.value, s.reason) for s in collector.statuses(TOPICS)]


def _health(collector: Collector) -> list[dict]:
    return [json.loads(m.payload) for m in collector.on(TOPICS.health)]


def _fault_then_recovery(collector: Collector, proc, log: Path, fault, reason: str, recover,
                         while_degraded=None) -> dict:
    """With the device on --loop: `fault()` once 2 events are out; the device must go `degraded` with `reason`
    and keep publishing directly; then `recover()`, and it must be `online` and publishing again by itself. It is
    stopped, and no seq may be missing. Returns the times (ms) and counts docs/reliability.md quotes."""
    assert wait_for(lambda: len(collector.events(TOPICS)) >= 2, 30), log.read_text()[-3000:]
    fault_ms = time.time() * 1000
    fault()
    assert wait_for(lambda: ("degraded", reason) in _states(collector), 20), \
        (_states(collector), log.read_text()[-3000:])
    n = len(collector.events(TOPICS))
    # Analysis goes on and its events reach the broker although nothing can be queued on disk.
    assert wait_for(lambda: len(collector.events(TOPICS)) >= n + 3, 20)
    assert proc.poll() is None
    if while_degraded is not None:
        while_degraded()
    recovered_ms = time.time() * 1000
    recover()
    assert wait_for(lambda: _states(collector)[-1] == ("online", None), 20), log.read_text()[-3000:]
    n = len(collector.events(TOPICS))
    assert wait_for(lambda: len(collector.events(TOPICS)) >= n + 2, 20)
    stop_device(proc)
    assert proc.returncode == 0
    last = max(e.seq for e in collector.events(TOPICS))
    assert wait_for(lambda: {e.seq for e in collector.events(TOPICS)} == set(range(1, last + 1)), 10), \
        sorted({e.seq for e in collector.events(TOPICS)})  # lost: 0
    statuses = collector.statuses(TOPICS)
    degraded = next(s.ts_ms for s in statuses if s.state.value == "degraded")
    online = next(s.ts_ms for s in statuses if s.state.value == "online" and s.ts_ms > recovered_ms)
    events = collector.events(TOPICS)
    return {
        "fault_ms": fault_ms, "degraded_ms": degraded, "recovered_ms": recovered_ms, "online_ms": online,
        "events": last, "lost": last - len({e.seq for e in events}),
        "published_while_degraded": sum(1 for e in events if degraded <= e.window_end_ms <= online),
        "duplicates": len(events) - len({e.event_id for e in events}),
    }


def _seconds(since_ms: float, until_ms: float) -> float:
    return round((until_ms - since_ms) / 1000, 1)


def test_a_full_disk_degrades_the_device_publishes_directly_and_recovers(mosquitto, tmp_path, disk):
    collector = Collector(mosquitto, "aula/#", client_id="q1")
    log = tmp_path / "device.log"
    proc = start_device(mosquitto, disk.path, log, "--loop")

    def health_names_the_fault() -> None:
        assert wait_for(lambda: any(h["mqtt"]["queue_fault"] == "disk full" and h["reason"]
                                    for h in _health(collector)), 10)

    try:
        f = _fault_then_recovery(collector, proc, log, disk.fill, "offline queue: disk full", disk.free,
                                 while_degraded=health_names_the_fault)
        print(json.dumps({  # the figures docs/reliability.md quotes (pytest -s)
            "degraded_after_fill_s": _seconds(f["fault_ms"], f["degraded_ms"]),
            "degraded_for_s": _seconds(f["degraded_ms"], f["recovered_ms"]),
            "online_after_free_s": _seconds(f["recovered_ms"], f["online_ms"]),
            **{k: f[k] for k in ("events", "lost", "published_while_degraded", "duplicates")},
        }))
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()


def test_a_read_only_state_directory_does_not_stop_the_device(mosquitto, tmp_path, disk):
    """It exited with status 2 (which systemd does not restart); now it runs degraded and publishes directly."""
    disk.remount("ro")
    collector = Collector(mosquitto, "aula/#", client_id="q2")
    log = tmp_path / "device.log"
    proc = start_device(mosquitto, disk.path, log, "--fast")
    try:
        proc.wait(timeout=180)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert ("degraded", "offline queue: disk read-only") in _states(collector)
        last = max(e.seq for e in collector.events(TOPICS))
        assert last >= 3
        assert wait_for(lambda: {e.seq for e in collector.events(TOPICS)} == set(range(1, last + 1)), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()


def test_a_disk_that_turns_read_only_while_the_device_runs_degrades_it_and_loses_nothing(mosquitto, tmp_path):
    """ext4 turns read-only under the open queue (errors=remount-ro after an I/O error); after a repair and a
    mount at the same place the device is online again by itself, and every event reached the broker."""
    why = can_fail_ext4(tmp_path)
    if why:
        pytest.skip(why)
    disk = FailingDisk(tmp_path / "state", tmp_path / "state.img")
    collector = Collector(mosquitto, "aula/#", client_id="q-ro")
    log = tmp_path / "device.log"
    proc = start_device(mosquitto, disk.path, log, "--loop")
    try:
        f = _fault_then_recovery(collector, proc, log, disk.fail, "offline queue: disk read-only", disk.repair)
        print(json.dumps({  # the figures docs/reliability.md quotes (pytest -s)
            "degraded_after_failure_s": _seconds(f["fault_ms"], f["degraded_ms"]),
            "online_after_repair_s": _seconds(f["recovered_ms"], f["online_ms"]),
            **{k: f[k] for k in ("events", "lost", "published_while_degraded", "duplicates")},
        }))
    finally:
        if proc.poll() is None:
            proc.kill()
        collector.close()
        disk.close()


def test_a_second_device_on_the_same_state_directory_finds_the_queue_locked(mosquitto, tmp_path):
    """It used to share the file (and its seqs), or rename a locked file as corrupt and drop the backlog."""
    state = tmp_path / "state"
    collector = Collector(mosquitto, "aula/#", client_id="q3")
    first = start_device(mosquitto, state, tmp_path / "first.log", "--loop")
    try:
        assert wait_for(lambda: len(collector.events(TOPICS)) >= 1, 30), (tmp_path / "first.log").read_text()
        second_log = tmp_path / "second.log"
        cmd = [sys.executable, "-m", "device", "run", "--broker", mosquitto.url, "--site", "test-school", "--room",
               "room-7", "--device-id", "pi-8", "--state-dir", str(state), "--fast"]
        with open(second_log, "w") as err:
            second = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, timeout=180)
        assert second.returncode == 0, second_log.read_text()[-3000:]
        assert "queue locked: another process uses" in second_log.read_text()
        other = TOPICS.__class__.for_device("test-school", "room-7", "pi-8")
        statuses = [(s.state.value, s.reason) for s in collector.statuses(other)]
        assert ("degraded", "offline queue: queue locked") in statuses
        assert len(collector.events(other)) >= 3  # published directly
        assert not list(state.glob("*.corrupt-*"))
        n = len(collector.events(TOPICS))
        assert wait_for(lambda: len(collector.events(TOPICS)) >= n + 1, 20)  # the first device is untouched
        assert _states(collector)[-1] == ("online", None)
        stop_device(first)
        last = max(e.seq for e in collector.events(TOPICS))
        assert wait_for(lambda: {e.seq for e in collector.events(TOPICS)} == set(range(1, last + 1)), 10)
    finally:
        if first.poll() is None:
            first.kill()
        collector.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ConfigError("device.yaml:3: mqtt.port: not a port"), 2),  # a person must fix it: systemd does not restart
        (QueueError(QueueFault.DISK_FULL, "disk full: cannot write"), 1),  # may clear: systemd restarts
    ],
)
def test_only_a_configuration_error_exits_with_status_2(monkeypatch, tmp_path, error, status):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_validate_config", fail)
    assert cli.main(["validate-config", str(tmp_path / "device.yaml")]) == status
