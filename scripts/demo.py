"""`make demo`: an MQTT broker, the server on SQLite, and a device replaying the bundled sample.

Uses the system Mosquitto when one is installed (MQTT 5), else an embedded amqtt broker (MQTT 3.1.1 only).
Prints the dashboard URL and the demo logins; Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.systemd_unit import unit_environment  # noqa: E402

SITE, ROOM, DEVICE = "demo-school", "room-1", "demo-pi"


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise SystemExit("no free port")


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}; see the messages above")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not open port {port} within {timeout:.0f} s")


def start_broker(state: Path, port: int) -> tuple[subprocess.Popen, str]:
    """Return (process, MQTT protocol) of a broker listening on 127.0.0.1:port."""
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto and os.environ.get("AULA_DEMO_BROKER") != "amqtt":  # the override tests the fallback
        conf = state / "mosquitto.conf"
        # No persistence: run as root, mosquitto drops to its own user, which cannot write to the demo folder.
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_type error\nlog_type warning\n")
        return subprocess.Popen([mosquitto, "-c", str(conf)]), "5"
    conf = state / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    return subprocess.Popen([sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]), "3.1.1"


def api(opener, method: str, url: str, body: dict | None = None, csrf: str | None = None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if csrf:
        req.add_header("X-CSRF-Token", csrf)
    with opener.open(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--seconds", type=float, default=0, help="stop by itself after this long (0: until Ctrl-C)")
    args = ap.parse_args()
    state = ROOT / ".demo"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir()
    procs: list[tuple[str, subprocess.Popen]] = []
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        mqtt_port = free_port(1883)
        broker, protocol = start_broker(state, mqtt_port)
        procs.append(("broker", broker))
        wait_port(mqtt_port, broker, "MQTT broker")
        broker_url = f"mqtt://127.0.0.1:{mqtt_port}"
        http_port = free_port(args.http_port)
        db = f"sqlite:///{state / 'aula.sqlite3'}"
        admin_pw, teacher_pw = "demo-admin-" + secrets.token_hex(3), "demo-teacher-" + secrets.token_hex(3)
        env = {**os.environ, "AULA_DEMO_ADMIN_PASSWORD": admin_pw}
        subprocess.run([sys.executable, "-m", "server", "--database", db, "create-admin", "admin",
                        "--password-env", "AULA_DEMO_ADMIN_PASSWORD"], check=True, env=env, cwd=ROOT)
        server_cfg = state / "server.yaml"
        # auto_assign: the demo device lands in the demo room at once instead of waiting for an admin.
        server_cfg.write_text(f'mqtt:\n  protocol: "{protocol}"\ndevices:\n  auto_assign: true\n')
        server = subprocess.Popen([sys.executable, "-m", "server", "--config", str(server_cfg), "--broker", broker_url,
                                   "--database", db, "--http", f"127.0.0.1:{http_port}"], cwd=ROOT)
        procs.append(("server", server))
        wait_port(http_port, server, "server")
        base = f"http://127.0.0.1:{http_port}"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        api(opener, "POST", f"{base}/api/login", {"username": "admin", "password": admin_pw})
        csrf = api(opener, "GET", f"{base}/api/me")["csrf"]
        room = api(opener, "POST", f"{base}/api/rooms", {"site": SITE, "room": ROOM, "name": "Demo classroom"}, csrf)
        api(opener, "POST", f"{base}/api/users", {"username": "teacher", "password": teacher_pw, "role": "teacher"},
            csrf)
        api(opener, "POST", f"{base}/api/users/teacher/rooms", {"room_id": room["id"]}, csrf)
        device_cfg = state / "device.yaml"
        device_cfg.write_text(f'mqtt:\n  protocol: "{protocol}"\n  health_interval_s: 5\n')
        device = subprocess.Popen([sys.executable, "-m", "device", "run", "--config", str(device_cfg), "--loop",
                                   "--broker", broker_url, "--site", SITE, "--room", ROOM, "--device-id", DEVICE,
                                   "--state-dir", str(state / "device")], cwd=ROOT,
                                  env={**os.environ, **unit_environment()})  # as the systemd unit runs it
        procs.append(("device", device))
        print(f"\nAula demo is running ({'Mosquitto' if protocol == '5' else 'embedded amqtt'} broker on "
              f"{broker_url}, SQLite in {state}).\n"
              f"  Dashboard: {base}/\n"
              f"  Teacher login: teacher / {teacher_pw}   (sees 'Demo classroom')\n"
              f"  Admin login:   admin / {admin_pw}\n"
              f"The device replays device/samples/classroom_sample.* in a loop. Press Ctrl-C to stop.\n", flush=True)
        t_end = time.monotonic() + args.seconds if args.seconds else float("inf")
        while not stop["now"] and time.monotonic() < t_end:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}; stopping the demo", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for name, proc in reversed(procs):  # device first, so its `stopped` status reaches the broker
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in 10 s; killing it", file=sys.stderr)
                    proc.kill()
        print("demo stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
