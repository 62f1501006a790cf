"""The teacher dashboard in a real headless Chromium, against the real server, broker and a publishing device.

Flow: mosquitto + `python -m server` on a fresh SQLite database; an admin and a teacher with one room; a device
publishes one EmotionEvent per second with paho. The browser (selenium 4, Debian's chromedriver) assigns the NEW
device on the admin page, logs in as the teacher, watches the live chart update without a reload, starts and
stops a segment "Question 3", finds it in the report and the CSV, and is refused a room it has no access to.
A screenshot goes to artifacts/dashboard.png.

Needs: `apt-get install chromium chromium-driver mosquitto` and `pip install selenium`; skips otherwise (fails under
AULA_REQUIRE_SYSTEM_DEPS=1, as in CI).
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from device.contract import DeviceState, EmotionEvent, topic, valence_arousal
from device.contract.labels import LABELS
from server import page_layout
from tests.mosquitto import broker_factory_fixture, free_port, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.system_deps import missing_system_dep

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "server" / "web" / "static"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# server/web/pages/
PAGES = ["login.html", "index.html", "room.html", "report.html", "admin.html", "account.html", "fleet.html"]

SITE, ROOM, DEVICE = "school1", "room101", "pi-dash"
ADMIN = ("admin", "admin-pass-1234")
TEACHER = ("teacher", "teacher-pass-1234")


# ---- static checks: no inline script or style, so a strict CSP (script-src 'self') holds ---------------------------


class _InlineFinder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = {k.lower(): v for k, v in attrs}
        for name in names:
            if name.startswith("on"):
                self.problems.append(f"inline handler {name}= on <{tag}>")
        if "style" in names:
            self.problems.append(f"style attribute on <{tag}>")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            src = names.get("src") or ""
            if not src:
                self.problems.append("inline <script>")
            elif not src.startswith("/static/"):
                self.problems.append(f"external script {src}")
            self._in_script = True
        if tag == "link" and re.match(r"(https?:)?//", names.get("href") or ""):
            self.problems.append(f"external asset {names.get('href')}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("inline script body")


@pytest.mark.parametrize("page", PAGES)
def test_pages_are_strict_csp_clean(page):
    """Every page loads its scripts from /static/ only, with no inline scripts, handlers or style attributes."""
    finder = _InlineFinder()
    finder.feed(page_layout.render(page))
    assert not finder.problems, f"{page}: {finder.problems}"


def test_scripts_avoid_csp_and_injection_traps():
    """No eval, no innerHTML (text goes in as text nodes), no style attributes set as strings, no remote URLs."""
    for path in sorted(STATIC.glob("*.js")) + sorted(STATIC.glob("*.css")):
        text = path.read_text()
        for pattern in (r"\beval\(", r"new Function\(", r"\.innerHTML\s*=", r"\.outerHTML\s*=", r"insertAdjacentHTML",
                        r"setAttribute\(\s*[\"']style", r"https?://(?!www\.w3\.org/2000/svg)"):
            assert not re.search(pattern, text), f"{path.name} matches {pattern}"


# ---- the live test ---------------------------------------------------------------------------------------------------


def _server_unavailable() -> str | None:
    """Why the real server cannot be used, or None."""
    if not (ROOT / "server" / "__main__.py").exists():
        return "server back end not available (no server/__main__.py)"
    try:
        out = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=ROOT, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "server back end not available (`python -m server --help` hung)"
    if out.returncode != 0:
        return f"server back end not available (`python -m server --help` exited {out.returncode})"
    return None


def _browser_unavailable() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            return f"{binary} is missing (apt-get install chromium chromium-driver)"
    return None


class Api:
    """A tiny JSON client with a cookie jar and the session's CSRF token."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if method != "GET":  # the server wants both on every unsafe request, with or without a body
            req.add_header("Content-Type", "application/json")
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=20) as res:
                raw, status, ctype = res.read(), res.status, res.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in ctype and raw else raw.decode(errors="replace"))

    def ok(self, method: str, path: str, body: dict | None = None):
        status, data = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {data}"
        return data

    def login(self, username: str, password: str) -> None:
        self.ok("POST", "/api/login", {"username": username, "password": password})
        self.csrf = self.ok("GET", "/api/me")["csrf"]


def _room_with_teacher(base: str, name: str) -> tuple[Api, dict]:
    """The admin's API client, and the room SITE/ROOM called `name` whose teacher is TEACHER."""
    api = Api(base)
    api.login(*ADMIN)
    room = api.ok("POST", "/api/rooms", {"site": SITE, "room": ROOM, "name": name})
    api.ok("POST", "/api/users", {"username": TEACHER[0], "password": TEACHER[1], "role": "teacher"})
    api.ok("POST", f"/api/users/{TEACHER[0]}/rooms", {"room_id": room["id"]})
    return api, room


class Publisher(threading.Thread):
    """A stand-in device: a retained `online` status, then one class-level window per second (QoS 1)."""

    def __init__(self, broker_port: int):
        super().__init__(daemon=True)
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{DEVICE}-test", protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self.stop_event = threading.Event()
        self.sent_ms: list[int] = []

    def run(self) -> None:
        from device.contract import StatusMessage

        status = StatusMessage(device_id=DEVICE, state=DeviceState.ONLINE, ts_ms=int(time.time() * 1000))
        self.client.publish(topic(SITE, ROOM, DEVICE, "status"), status.to_payload(), qos=1, retain=True)
        i = 0
        while not self.stop_event.is_set():
            now = int(time.time() * 1000)
            phase = i / 6
            weights = {k: 0.05 for k in LABELS}
            weights["neutral"] = 1.0
            weights["happy"] = 0.6 + 0.5 * math.sin(phase)
            weights["surprise"] = 0.3 + 0.3 * math.cos(phase)
            total = sum(weights.values())
            dist = {k: round(v / total, 4) for k, v in weights.items()}
            dist["neutral"] = round(1 - sum(v for k, v in dist.items() if k != "neutral"), 4)
            v, a = valence_arousal(dist)
            event = EmotionEvent(
                device_id=DEVICE, site=SITE, room=ROOM, seq=i, window_start_ms=now - 1000, window_end_ms=now,
                distribution=dist, dominant=max(dist, key=dist.get), valence=v, arousal=a,
                modalities={"face": dist}, counts={"faces": 12}, models={"face": "test@1"},
            )
            self.client.publish(topic(SITE, ROOM, DEVICE, "events"), event.to_payload(), qos=1)
            self.sent_ms.append(now)
            i += 1
            self.stop_event.wait(1.0)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:]
    pytest.fail(f"the server did not answer on {url} within {timeout:.0f} s:\n{tail}")


@pytest.fixture(name="server")
def server_fixture(mosquitto, tmp_path):
    """The real server on a free port with a fresh database; yields (base URL, broker port)."""
    reason = _server_unavailable()
    if reason:
        missing_system_dep(reason)
    db = f"sqlite:///{tmp_path / 'aula.db'}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", AULA_TEST_ADMIN_PASSWORD=ADMIN[1])
    admin = subprocess.run(
        [sys.executable, "-m", "server", "--database", db, "create-admin", ADMIN[0],
         "--password-env", "AULA_TEST_ADMIN_PASSWORD"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert admin.returncode == 0, f"create-admin failed: {admin.stdout}\n{admin.stderr}"
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--broker", mosquitto.url, "--database", db,
             "--http", f"127.0.0.1:{port}"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/login", proc, log)
        yield base, mosquitto.port, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(name="browser")
def browser_fixture():
    reason = _browser_unavailable()
    if reason:
        missing_system_dep(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="aula-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile}", "--window-size=1280,800", "--lang=en-GB"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver, path: Path, width: int) -> None:
    """A full-page screenshot `width` CSS pixels wide (emulated, as a window cannot be narrower than 500 px)."""
    metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    time.sleep(0.3)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", dict(metrics, height=max(800, height)))
    time.sleep(0.5)
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"]
    path.write_bytes(base64.b64decode(png))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _login(driver, wait, base: str, user: tuple[str, str], then: str) -> None:
    """Open a page, get sent to /login, log in, then open the page again (wherever the login sent us)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}{then}")
    wait.until(lambda d: "/login" in d.current_url and d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(user[0])
    driver.find_element(By.ID, "password").send_keys(user[1])
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: "/login" not in d.current_url)
    if driver.current_url.rstrip("/") != f"{base}{then}".rstrip("/"):
        driver.get(f"{base}{then}")


def _again_if_stale(step, tries: int = 5):
    """Run a few element reads and clicks; start over when the page re-rendered an element under them."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(tries):
        try:
            return step()
        except StaleElementReferenceException:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)


def test_dashboard_live_in_chromium(server, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, broker_port, server_log = server
    t_start = time.monotonic()
    api, room = _room_with_teacher(base, "Room 101 (Science)")
    other = api.ok("POST", "/api/rooms", {"site": SITE, "room": "room999", "name": "Staff room"})

    device = Publisher(broker_port)
    device.start()
    # The pages re-render their tables when data arrives: an element found in one poll may be replaced before
    # its text is read, so a stale reference means "look again", as a missing one does.
    driver, wait = browser, WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,))
    try:
        # The device shows up as NEW; the admin assigns it on the admin page.
        deadline = time.monotonic() + 30
        while not any(d.get("device_id") == DEVICE for d in api.ok("GET", "/api/devices")):
            assert time.monotonic() < deadline, f"no device in /api/devices\n{server_log.read_text()[-3000:]}"
            time.sleep(0.5)
        _login(driver, wait, base, ADMIN, "/admin")

        def assign():
            row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-device="{DEVICE}"]'))
            assert "New" in row.text, row.text
            Select(row.find_element(By.TAG_NAME, "select")).select_by_value(str(room["id"]))
            row.find_element(By.TAG_NAME, "button").click()

        _again_if_stale(assign)
        wait.until(lambda d: "assigned" in d.find_element(By.ID, "devices-msg").text)
        wait.until(lambda d: "Assigned" in d.find_element(By.CSS_SELECTOR, f'tr[data-device="{DEVICE}"]').text)
        driver.find_element(By.ID, "logout").click()
        wait.until(lambda d: "/login" in d.current_url)

        # The teacher's rooms, then the live view.
        _login(driver, wait, base, TEACHER, "/")

        def open_live_view():
            card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'.room-card[data-room="{room["id"]}"]'))
            assert "Room 101 (Science)" in card.text
            card.find_element(By.PARTIAL_LINK_TEXT, "Open live view").click()

        _again_if_stale(open_live_view)
        wait.until(lambda d: d.current_url.endswith(f"/rooms/{room['id']}"))
        wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
        driver.execute_script(
            "window.__aulaNoReload = true; window.__aulaUpdates = [];"
            "new MutationObserver(() => window.__aulaUpdates.push(Date.now()))"
            ".observe(document.getElementById('chart'), {attributes: true, attributeFilter: ['data-updated']});"
        )
        chart = driver.find_element(By.ID, "chart")
        before = int(chart.get_attribute("data-updated"))
        wait.until(lambda d: int(d.find_element(By.ID, "chart").get_attribute("data-updated")) >= before + 4)
        assert driver.execute_script("return window.__aulaNoReload === true"), "the page reloaded"
        assert int(chart.get_attribute("data-points")) >= 1
        assert driver.find_element(By.ID, "mood-word").text in {"Neutral", "Happy", "Surprised"}
        assert driver.find_element(By.ID, "faces").text == "12"

        def device_card_is_online():
            card = driver.find_element(By.CSS_SELECTOR, f'.device[data-device="{DEVICE}"]')
            assert card.get_attribute("data-state") == "online", card.text
            assert "Last seen" in card.text

        _again_if_stale(device_card_is_online)

        # Within 1 s of an event: each chart update follows the latest publish before it by less than a second.
        updates = driver.execute_script("return window.__aulaUpdates")
        lags = [u - max(s for s in device.sent_ms if s <= u) for u in updates if any(s <= u for s in device.sent_ms)]
        assert lags and statistics.median(lags) < 1000, f"update lags (ms): {lags}"

        # A segment: start, stop, listed.
        driver.find_element(By.ID, "seg-name").send_keys("Question 3")
        driver.find_element(By.ID, "seg-start").click()
        wait.until(lambda d: "Question 3" in d.find_element(By.ID, "seg-running").text)
        time.sleep(3)  # a few windows inside the segment
        _again_if_stale(lambda: driver.find_element(By.CSS_SELECTOR, "#seg-running button[data-stop]").click())
        wait.until(lambda d: "Question 3" in d.find_element(By.ID, "seg-list").text)
        assert "Question 3" not in driver.find_element(By.ID, "seg-running").text
        ARTIFACTS.mkdir(exist_ok=True)
        _screenshot(driver, ARTIFACTS / "dashboard.png", 1280)
        _screenshot(driver, ARTIFACTS / "dashboard-phone.png", 390)

        # The report lists it, and the CSV export has it.
        driver.find_element(By.ID, "report-link").click()
        wait.until(lambda d: "Question 3" in d.find_element(By.ID, "report").text)
        seg = driver.find_element(By.CSS_SELECTOR, ".report-seg")
        assert seg.find_elements(By.CSS_SELECTOR, "svg.distbar"), seg.text
        csv_href = driver.find_element(By.ID, "csv-link").get_attribute("href")
        assert csv_href.endswith(f"/api/rooms/{room['id']}/report.csv")
        csv_text = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(done, e => done(String(e)));",
            csv_href,
        )
        assert "Question 3" in csv_text, csv_text[:500]

        # A room the teacher may not see: refused by the page route, or by the API and explained by room.js.
        driver.get(f"{base}/rooms/{other['id']}")
        refused = re.compile(r"do not have access|another teacher|403")
        wait.until(lambda d: refused.search(d.find_element(By.TAG_NAME, "body").text))

        # No script errors and no CSP violations; only the expected 401 (login probe) and 403 (refused room).
        logs = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        unexpected = [m for m in logs if not re.search(r"/api/me .*401|/rooms/\d+(/\S*)? .*403|favicon", m)]
        assert not unexpected, unexpected
        print(f"dashboard browser test: {time.monotonic() - t_start:.1f} s, update lags (ms): {lags}")
    finally:
        device.stop()


class LiveRoom:
    """A room with a teacher and an assigned simulated device, and the teacher's browser on the room's live page."""

    def __init__(self, server, driver):
        import itertools

        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        from server.testing import DeviceSimulator

        base, broker_port, server_log = server
        self.driver = driver
        self._by_id = By.ID
        api, room = _room_with_teacher(base, "Room 101 (Science)")
        self.device = DeviceSimulator(broker_port)
        self._seqs = itertools.count()
        self.wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        try:
            self.send(1)
            deadline = time.monotonic() + 30
            while not any(d.get("device_id") == DEVICE for d in api.ok("GET", "/api/devices")):
                assert time.monotonic() < deadline, f"no device in /api/devices\n{server_log.read_text()[-3000:]}"
                time.sleep(0.3)
            api.ok("POST", f"/api/devices/{SITE}/{DEVICE}/assign", {"room_id": room["id"]})
            _login(driver, self.wait, base, TEACHER, f"/rooms/{room['id']}")
            self.wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
        except BaseException:
            self.device.close()
            raise

    def send(self, n: int, **kwargs) -> None:
        """Publish n windows of 12 faces from the device (make_event's keywords)."""
        from server.testing import make_event

        for _ in range(n):
            self.device.event(make_event(site=SITE, room=ROOM, device_id=DEVICE, seq=next(self._seqs), faces=12,
                                         **kwargs))

    def text(self, element_id: str) -> str:
        return self.driver.find_element(self._by_id, element_id).text

    def browser_errors(self) -> list[str]:
        """The page's console errors, less the expected 401 of /api/me before login and a missing favicon."""
        logs = [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        return [m for m in logs if not re.search(r"/api/me .*401|favicon", m)]

    def close(self) -> None:
        self.device.close()


def test_voices_mood_beside_the_faces_in_chromium(server, browser):
    """The live room view shows the faces' and the voices' moods as two lines: "No voices heard" while the windows
    carry no speech, then the voices' mood word once windows with `modalities.speech` arrive, live and after a reload.
    A screenshot goes to artifacts/dashboard-voices.png."""
    from selenium.webdriver.common.by import By

    from server.testing import distribution

    live = LiveRoom(server, browser)
    driver, wait, text, send = browser, live.wait, live.text, live.send
    try:

        # Faces only: the faces' mood is shown, and the voices' line says that no voices were heard.
        send(2, label="happy")
        wait.until(lambda d: text("face-line") == "Faces in view: happy")
        assert text("voices-line") == "No voices heard in the last 2 minutes"
        assert driver.find_element(By.ID, "voices-source").get_attribute("data-dominant") == ""
        explanation = text("voices-source")
        assert "the microphone hears, usually mostly the teacher's; not the class, and not what was said" in explanation

        # Windows with speech arrive on the stream: the voices' mood word, beside the faces' one.
        send(3, label="happy", speech=distribution("sad", 0.8), speech_segments=2)
        wait.until(lambda d: text("voices-line") == "Voices in the room: sad")
        assert text("face-line") == "Faces in view: happy"
        assert text("mood-word") == "Happy"  # the fused mood is what the device fused, as before
        detail = text("voices-detail")
        assert detail.startswith("Sounding ") and "80% of the mix" in detail, detail
        assert "6 stretches of speech in the last 2 minutes" in detail, detail
        assert driver.find_element(By.CSS_SELECTOR, "#voices-bar svg.distbar")
        assert "pupil" not in text("voices-source").lower()
        ARTIFACTS.mkdir(exist_ok=True)
        _screenshot(driver, ARTIFACTS / "dashboard-voices.png", 1280)

        # A reload reads the same from /live's buckets.
        driver.refresh()
        wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
        wait.until(lambda d: text("voices-line") == "Voices in the room: sad")
        assert "6 stretches of speech" in text("voices-detail")
        assert text("face-line") == "Faces in view: happy"

        assert not live.browser_errors()
    finally:
        live.close()


@pytest.mark.parametrize("target", ["/%09/evil.example", "//evil.example", "/%5C/evil.example", "/%0A/evil.example",
                                    "https://evil.example/"])
def test_login_never_sends_the_browser_to_another_site(server, browser, target):
    """A crafted ?next= must not turn the login page into an open redirect; the browser stays on the dashboard."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = server
    driver = browser
    driver.delete_all_cookies()
    driver.get(f"{base}/login?next={target}")
    wait = WebDriverWait(driver, 15)
    wait.until(lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(ADMIN[0])
    driver.find_element(By.ID, "password").send_keys(ADMIN[1])
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: "/login" not in d.current_url)
    assert driver.current_url.startswith(base + "/"), driver.current_url
    assert "evil.example" not in driver.current_url


def test_words_mood_beside_faces_and_voices_in_chromium(server, browser):
    """The live room view shows the words' mood as a third line: "No words heard" while the windows carry no text,
    then "Words spoken: <mood>" once windows with `modalities.text` arrive, live and after a reload, with a note that
    the words are mostly the teacher's and never leave the device. A screenshot: artifacts/dashboard-words.png."""
    from selenium.webdriver.common.by import By

    from server.testing import distribution

    live = LiveRoom(server, browser)
    driver, wait, text, send = browser, live.wait, live.text, live.send
    try:

        # Faces only: the words' line says that no words were heard, and why the words are not the class's.
        send(2, label="happy")
        wait.until(lambda d: text("face-line") == "Faces in view: happy")
        assert text("words-line") == "No words heard in the last 2 minutes"
        assert driver.find_element(By.ID, "words-source").get_attribute("data-dominant") == ""
        note = text("words-source")
        assert "usually mostly the teacher's" in note and "no words leave the device" in note, note
        assert "never sends or stores them" in note, note
        intro = driver.find_element(By.CSS_SELECTOR, "section[aria-labelledby='now-title'] .explain").text
        assert "their sound and their words" in intro, intro

        # Windows with the words' mood (and the voices') arrive on the stream: three lines, each its own mood.
        send(3, label="happy", speech=distribution("sad", 0.8), text=distribution("angry", 0.7), text_utterances=2)
        wait.until(lambda d: text("words-line") == "Words spoken: angry")
        assert text("voices-line") == "Voices in the room: sad" and text("face-line") == "Faces in view: happy"
        assert driver.find_element(By.ID, "words-source").get_attribute("data-dominant") == "angry"
        detail = text("words-detail")
        assert detail.startswith("Reading as ") and "70% of the mix" in detail, detail
        assert "6 utterances in the last 2 minutes" in detail, detail
        assert driver.find_element(By.CSS_SELECTOR, "#words-bar svg.distbar")
        assert "pupil" not in text("words-source").lower()
        ARTIFACTS.mkdir(exist_ok=True)
        _screenshot(driver, ARTIFACTS / "dashboard-words.png", 1280)

        # A reload reads the same from /live's buckets.
        driver.refresh()
        wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
        wait.until(lambda d: text("words-line") == "Words spoken: angry")
        assert "6 utterances" in text("words-detail")

        assert not live.browser_errors()
    finally:
        live.close()


def test_admin_manages_accounts_and_tokens_from_the_page_in_chromium(server, browser):
    """The admin page's buttons take a room away, disable and enable, set a password, revoke a token and delete a
    user, each taking effect on the teacher's next request; there is no button to disable or delete oneself. On
    /account a teacher changes their own password, which logs out their other session."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = server
    api, room = _room_with_teacher(base, "Room 101")
    token = api.ok("POST", "/api/tokens", {"name": "wall display", "room_ids": [room["id"]]})
    teacher = Api(base)
    teacher.login(*TEACHER)
    assert [r["id"] for r in teacher.ok("GET", "/api/rooms")] == [room["id"]]

    driver = browser
    driver.delete_all_cookies()
    wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
    _login(driver, wait, base, ADMIN, "/admin")
    row = f"#users li[data-user='{TEACHER[0]}']"

    def click(selector: str, text: str) -> None:
        def step():
            button = next(b for b in driver.find_elements(By.CSS_SELECTOR, f"{selector} button") if b.text == text)
            button.click()
        wait.until(lambda d: any(b.text == text for b in d.find_elements(By.CSS_SELECTOR, f"{selector} button")))
        _again_if_stale(step)

    own = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#users li[data-user='{ADMIN[0]}']"))
    assert {b.text for b in own.find_elements(By.TAG_NAME, "button") if b.is_displayed()} == {"Set password"}

    click(f"{row} .chip", "Remove")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f"{row} .chip"))
    assert teacher.ok("GET", "/api/rooms") == []
    api.ok("POST", f"/api/users/{TEACHER[0]}/rooms", {"room_id": room["id"]})

    click(row, "Disable")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} .user-disabled"))
    assert teacher.call("GET", "/api/me")[0] == 401
    click(row, "Enable")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f"{row} .user-disabled"))
    teacher.login(*TEACHER)

    click(row, "Set password")
    _again_if_stale(lambda: driver.find_element(By.CSS_SELECTOR, f"{row} .pw-input").send_keys("set-by-the-admin"))
    click(f"{row} .pw-form", "Save")
    wait.until(lambda d: "New password set" in d.find_element(By.ID, "user-msg").text)
    assert teacher.call("GET", "/api/me")[0] == 401
    teacher.login(TEACHER[0], "set-by-the-admin")

    bearer = urllib.request.Request(f"{base}/api/rooms", headers={"Authorization": f"Bearer {token['token']}"})
    with urllib.request.urlopen(bearer, timeout=10) as res:
        assert res.status == 200
    click(f"#tokens tr[data-token='{token['id']}']", "Revoke")
    wait.until(lambda d: "Revoked" in d.find_element(By.CSS_SELECTOR, f"#tokens tr[data-token='{token['id']}']").text)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bearer, timeout=10)
    assert refused.value.code == 401

    # The teacher changes their own password on /account in a second browser session; the API session ends.
    driver.delete_all_cookies()
    _login(driver, wait, base, (TEACHER[0], "set-by-the-admin"), "/account")
    wait.until(lambda d: d.find_element(By.ID, "current-password"))
    driver.find_element(By.ID, "current-password").send_keys("set-by-the-admin")
    driver.find_element(By.ID, "new-password").send_keys("chosen-by-me-1")
    driver.find_element(By.ID, "repeat-password").send_keys("chosen-by-me-1")
    driver.find_element(By.ID, "password-submit").click()
    wait.until(lambda d: "Your password is changed" in d.find_element(By.ID, "password-msg").text)
    assert teacher.call("GET", "/api/me")[0] == 401
    driver.get(f"{base}/account")
    wait.until(lambda d: d.find_elements(By.ID, "password-form") and "/login" not in d.current_url)

    driver.delete_all_cookies()
    _login(driver, wait, base, ADMIN, "/admin")
    click(row, "Delete")
    wait.until(lambda d: d.switch_to.alert)
    driver.switch_to.alert.accept()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
    assert all(u["username"] != TEACHER[0] for u in api.ok("GET", "/api/users"))


def test_room_page_stops_watching_when_the_room_is_taken_away_in_chromium(server, browser):
    """The stream re-checks its caller every http.sse_ping_s (15 s) and then sends `end`; the open room page must
    close it and say that the teacher has no access any more, instead of going on showing a live room."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = server
    api, room = _room_with_teacher(base, "Room 101")
    driver = browser
    driver.delete_all_cookies()
    wait = WebDriverWait(driver, 20)
    _login(driver, wait, base, TEACHER, f"/rooms/{room['id']}")
    wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
    api.ok("DELETE", f"/api/users/{TEACHER[0]}/rooms/{room['id']}")
    WebDriverWait(driver, 30).until(lambda d: "do not have access" in d.find_element(By.ID, "messages").text)
    assert driver.find_element(By.ID, "conn").text == "not connected"
    assert not driver.find_element(By.ID, "room-body").is_displayed()


def test_teacher_pauses_and_resumes_the_room_from_the_page_in_chromium(server, browser, tmp_path):
    """The room page's privacy buttons reach the real device (`python -m device run`), and its answer shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, broker_port, _ = server
    api, room = _room_with_teacher(base, "Room 101")
    device_log = tmp_path / "device.log"
    with device_log.open("w") as log:
        device = subprocess.Popen([sys.executable, "-m", "device", "run", "--loop", "--broker",
                                   f"mqtt://127.0.0.1:{broker_port}", "--site", SITE, "--room", ROOM, "--device-id",
                                   "pi-real", "--state-dir", str(tmp_path / "state")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not any(d.get("device_id") == "pi-real" for d in api.ok("GET", "/api/devices")):
            assert time.monotonic() < deadline, device_log.read_text()[-3000:]
            time.sleep(0.3)
        api.ok("POST", f"/api/devices/{SITE}/pi-real/assign", {"room_id": room["id"]})
        driver = browser
        driver.delete_all_cookies()
        wait = WebDriverWait(driver, 20)
        _login(driver, wait, base, TEACHER, f"/rooms/{room['id']}")
        wait.until(lambda d: d.find_element(By.ID, "privacy-state").text == "Sensing is on.")
        driver.find_element(By.ID, "privacy-pause").click()
        wait.until(lambda d: "pi-real: paused." in d.find_element(By.ID, "privacy-answers").text)
        wait.until(lambda d: d.find_element(By.ID, "privacy-state").text == "Sensing is paused.")
        assert "camera and microphone closed" in driver.find_element(By.ID, "devices").text
        assert not driver.find_element(By.ID, "privacy-pause").is_displayed()
        driver.find_element(By.ID, "privacy-resume").click()
        wait.until(lambda d: "pi-real: resumed." in d.find_element(By.ID, "privacy-answers").text)
        wait.until(lambda d: d.find_element(By.ID, "privacy-state").text == "Sensing is on.")
    finally:
        device.terminate()
        device.wait(15)


def test_the_fleet_page_shows_each_device_its_release_and_trends_in_chromium(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from server.testing import DeviceSimulator

    base, broker_port, _ = server
    device = DeviceSimulator(broker_port)
    try:
        device.status(SITE, ROOM, "pi-fleet", "degraded", "camera: no frames for 10 s")
        for fps in (4.0, 5.0, 6.0):
            device.health(SITE, ROOM, "pi-fleet", host={"cpu_temp_c": 50.0, "release": "r2026.12-ab12cd34"},
                          vision={"frames_analysed_per_s": fps}, mqtt={"backlog": 0})
        driver = browser
        driver.delete_all_cookies()
        wait = WebDriverWait(driver, 20)
        _login(driver, wait, base, ADMIN, "/fleet")
        row = "#devices tr[data-device='pi-fleet']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} td[data-figure='frames_per_s'] polyline"))
        text = driver.find_element(By.CSS_SELECTOR, row).text
        assert "degraded" in text and "camera: no frames" in text and "r2026.12-ab12cd34" in text and "6.0" in text
        assert "No alerts" in driver.find_element(By.ID, "alerts").text  # 5 minutes have not passed
        assert any(a.text == "Fleet" for a in driver.find_elements(By.CSS_SELECTOR, "#nav a"))
    finally:
        device.close()
