"""`make demo` (scripts/demo.py): broker, server and a replaying device come up; the teacher sees live data."""

import json
import re
import subprocess
import sys
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_starts_everything_and_the_teacher_sees_the_room_live():
    proc = subprocess.Popen([sys.executable, "scripts/demo.py", "--seconds", "40", "--http-port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        url = password = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (url is None or password is None):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"Dashboard: (http://\S+)", line):
                url = m.group(1)
            if m := re.search(r"Teacher login: teacher / (\S+)", line):
                password = m.group(1)
        assert url and password, "".join(lines[-40:])
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        req = urllib.request.Request(f"{url}api/login", data=json.dumps({"username": "teacher", "password": password})
                                     .encode(), headers={"Content-Type": "application/json"}, method="POST")
        assert opener.open(req, timeout=10).status == 200
        live = {}
        while time.monotonic() < deadline:
            live = json.loads(opener.open(f"{url}api/rooms/1/live?minutes=5", timeout=10).read())
            if live["buckets"] and live["current"]:
                break
            time.sleep(1)
        assert live["buckets"], "no data reached the dashboard"
        assert live["current"]["dominant"] in live["current"]["distribution"]
        assert any(d["state"] == "online" for d in live["devices"])
    finally:
        proc.terminate()  # the demo's Ctrl-C path: it stops the device, the server and the broker
        out, _ = proc.communicate(timeout=30)
    assert "demo stopped" in out
