"""`python -m fleet flash` (what `make flash` runs) against a real sshd on loopback, with a scratch folder as the
device's `/` (DEST_ROOT): the installed tree, the config, certificates and unit, a second flash that changes
nothing, a failed upgrade that rolls back, the installed device coming online on a TLS broker, flash-all's
summary, and the errors a technician meets.

The source shipped is a `git clone --local` of this checkout (the real path: git describe, git ls-files), so
that edits made in the checkout while the test runs cannot change the release between two flashes. The wheelhouse
is made once per test session by the real step (`pip wheel`, from pip's cache), in a temporary cache folder.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from device.common.errors import ConfigError
from device.contract import DeviceTopics
from fleet.errors import BrokerUnreachable
from fleet.flash import summary_table, tls_layout, unit_programs
from fleet.online_watch import watch_online
from fleet.release import Target, build_release, platform_tags, prepare_wheelhouse
from fleet.ssh_remote import SshTarget
from tests.mosquitto import free_port
from tests.ssh_lab import Sshd, run_fleet, show, start_lab, stop_lab
from tests.system_deps import missing_system_dep
from tests.test_broker_acl import Broker, listening

ROOT = Path(__file__).resolve().parent.parent
TOPICS = DeviceTopics.for_device("school1", "room101", "pi-a")


@dataclass
class Lab:
    work: Path
    sshd: Sshd
    broker: Broker
    root: Path  # the device's / (DEST_ROOT)
    source: Path  # what is shipped: a clone of this checkout
    inventory: Path
    base_config: Path
    wheelhouse: Path

    @property
    def broker_url(self) -> str:
        return f"mqtts://localhost:{self.broker.port}"

    def flash(self, *args: str, command: str = "flash", identity: str = "client_key", known_hosts: Path | None = None,
              device: str | None = "pi-a", timeout: float = 400, inputs: str | None = "sample"
              ) -> subprocess.CompletedProcess:
        return run_fleet([command, "--inventory", str(self.inventory),
                          *(["--device", device] if device and command == "flash" else []),
                          "--certs", str(self.broker.certs), "--broker", self.broker_url, "--dest-root", str(self.root),
                          "--identity", str(self.sshd.work / identity),
                          "--known-hosts", str(known_hosts or self.sshd.known_hosts),
                          "--connect-timeout", "5", *(["--inputs", inputs] if inputs else []),
                          "--base-config", str(self.base_config),
                          "--source", str(self.source), "--wheelhouse-cache", str(self.wheelhouse), *args], timeout)

    def current(self) -> str:
        return os.readlink(self.root / "opt/aula/current")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("flash")
    parts = start_lab(work)  # the broker is started by the online test
    inventory = work / "fleet.csv"
    inventory.write_text(f"site,room,device,host\nschool1,room101,pi-a,{parts.sshd.host}\n"
                         f"school1,room102,pi-b,ssh://root@127.0.0.1:{free_port()}\n")
    base = work / "base.yaml"
    base.write_text("mqtt:\n  health_interval_s: 1\n")  # the first health message a second after online
    yield Lab(work, parts.sshd, parts.broker, work / "root", parts.source, inventory, base, work / "wheelhouse")
    stop_lab(parts)
    for heavy in ("root", "wheelhouse", "source", "broken-source", "space-source"):  # a venv alone is 0.8 GB
        shutil.rmtree(work / heavy, ignore_errors=True)


@pytest.fixture(scope="module")
def first(lab, request):
    """The first flash of pi-a, timed."""
    t = time.monotonic()
    done = lab.flash()
    seconds = time.monotonic() - t
    show(request, f"first `python -m fleet flash` against the loopback host: {seconds:.1f} s ({os.cpu_count()} CPUs)")
    assert done.returncode == 0, done.stdout + done.stderr
    return done, seconds


def _line(out: str, start: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith(start)), "")


def test_the_first_flash_installs_a_release_its_venv_the_config_the_certificates_and_the_unit(lab, first):
    done, _ = first
    out = done.stdout
    root, aula = lab.root, lab.root / "opt/aula"
    version = lab.current().removeprefix("releases/")
    assert f"current -> releases/{version} (first release)" in out
    assert "made on the device from the wheelhouse" in out and "validates on the device" in out
    release = aula / "releases" / version
    info = json.loads((release / ".aula-release.json").read_text())
    assert info["version"] == version == build_release(lab.source).version  # git describe + content hash
    assert version.startswith(subprocess.run(["git", "-C", str(lab.source), "describe", "--always", "--dirty"],
                                             capture_output=True, text=True).stdout.strip())
    venv = aula / "venvs" / info["venv"]
    assert os.readlink(release / ".venv") == f"../../venvs/{info['venv']}"  # relative: works under any root
    assert (venv / ".aula-venv-complete").exists() and (venv / "bin/python").exists()
    assert (release / "models_tflite/manifest.json").exists() and (release / "device/__main__.py").exists()
    for name in (".venv", "device", "models_tflite", "docs"):  # the paths the unit names follow current
        assert os.readlink(aula / name) == f"current/{name}"
    # The config validates with the installed code, and says who the device is.
    config = root / "etc/aula/device.yaml"
    check = subprocess.run([str(aula / ".venv/bin/python"), "-m", "device", "validate-config", str(config)],
                           cwd=aula, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    mqtt = yaml.safe_load(config.read_text())["mqtt"]
    assert (mqtt["site"], mqtt["room"], mqtt["device_id"], mqtt["broker"]) == (
        "school1", "room101", "pi-a", lab.broker_url)
    # The unit is the shipped file, enabled; its programs exist in the installed tree.
    unit = root / "etc/systemd/system/aula-device.service"
    assert unit.read_text() == (release / "systemd/aula-device.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/aula-device.service"
    assert os.readlink(wants) == "/etc/systemd/system/aula-device.service"
    assert "not started: DEST_ROOT" in out
    for program in unit_programs(unit.read_text()):
        assert (root / program.lstrip("/")).exists(), program
    # The certificates: where the unit and the config expect them, the key private.
    layout = tls_layout(unit.read_text(), "pi-a")
    assert (mqtt["tls"]["ca_file"], mqtt["tls"]["cert_file"], mqtt["tls"]["key_file"]) == (
        layout.ca, layout.cert, layout.key_in_config)
    key = root / layout.key.lstrip("/")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == (lab.broker.certs / "clients/pi-a.key").read_bytes()
    assert (root / layout.cert.lstrip("/")).read_bytes() == (lab.broker.certs / "clients/pi-a.crt").read_bytes()
    assert "checks passed: ready" in out


def test_the_wheelhouse_is_cached_so_a_second_venv_downloads_nothing(lab, first):
    release = build_release(lab.source)
    here = Target(*json.loads(subprocess.run(
        ["/usr/bin/python3", "-c", "import json,platform;l=platform.libc_ver();"
         "print(json.dumps([platform.machine(),platform.python_version(),l[1]]))"],
        capture_output=True, text=True).stdout))
    said: list[str] = []
    wheelhouse = prepare_wheelhouse(release, here, lab.wheelhouse, said.append)
    assert wheelhouse.cached and not said and wheelhouse.files >= len(release.requirements)


def test_a_second_flash_changes_nothing_and_says_so(lab, first):
    config = lab.root / "etc/aula/device.yaml"
    before = (lab.current(), config.stat().st_mtime_ns, sorted(os.listdir(lab.root / "opt/aula/releases")))
    done = lab.flash()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unchanged:" in done.stdout and "nothing to do" in done.stdout
    assert "copied" not in done.stdout and "self-check" not in done.stdout
    assert (lab.current(), config.stat().st_mtime_ns, sorted(os.listdir(lab.root / "opt/aula/releases"))) == before


def test_an_upgrade_whose_models_do_not_match_is_never_switched_to(lab, first):
    good = lab.current()
    broken = lab.work / "broken-source"
    shutil.copytree(lab.source, broken, ignore=shutil.ignore_patterns(".git"))
    model = broken / "models_tflite/face_emotion_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong sha256
    model.write_bytes(bytes(data))
    done = lab.flash("--source", str(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    print(done.stderr)
    assert "does not match its manifest on the device (nothing was switched" in done.stderr
    assert "face_emotion_int8.tflite" in done.stderr
    assert "current -> releases/nogit-" not in done.stdout  # checked on the device before the switch
    assert lab.current() == good
    check = subprocess.run([str(lab.root / "opt/aula/current/.venv/bin/python"), "-m", "device", "verify-models"],
                           cwd=lab.root / "opt/aula/current", capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout  # the current release is intact (hard links are not shared with
    # the broken file: rsync wrote a new one)


def test_a_rollout_group_by_devices_rooms_or_share_is_stable():
    from fleet.inventory import DeviceRow
    from fleet.rollout import select_devices

    rows = [DeviceRow("s1", f"r{i % 4}", f"pi-{i}", None, i + 2) for i in range(40)]
    assert [r.device for r in select_devices(rows, devices=["pi-3", "pi-1"])] == ["pi-1", "pi-3"]
    assert {r.room for r in select_devices(rows, rooms=["r1", "s1/r2"])} == {"r1", "r2"}
    ten, quarter = select_devices(rows, percent=10), select_devices(rows, percent=25)
    assert len(ten) == 4 and len(quarter) == 10 and {r.device for r in ten} <= {r.device for r in quarter}
    assert select_devices(list(reversed(rows)), percent=10) == list(reversed(ten))
    with pytest.raises(ConfigError, match="'pi-99' is not in the inventory"):
        select_devices(rows, devices=["pi-99"])
    with pytest.raises(ConfigError, match="choose the devices"):
        select_devices(rows)


def test_the_installed_device_comes_online_on_the_broker(lab, first):
    """The installed tree run the way the unit runs it (its ExecStart, from its WorkingDirectory), with the rendered
    config; paths the device would find under / are mapped into the scratch root."""
    root = lab.root
    unit = (root / "etc/systemd/system/aula-device.service").read_text()
    layout = tls_layout(unit, "pi-a")
    cfg = yaml.safe_load((root / "etc/aula/device.yaml").read_text())
    tls = cfg["mqtt"]["tls"]
    tls.update(ca_file=str(root / layout.ca.lstrip("/")), cert_file=str(root / layout.cert.lstrip("/")),
               key_file=str(root / layout.key.lstrip("/")))  # systemd's credential copy is the installed key
    mapped = lab.work / "device-mapped.yaml"
    mapped.write_text(yaml.safe_dump(cfg))
    python = str(root / "opt/aula/.venv/bin/python")
    assert python.startswith(str(root)) and "/opt/aula/.venv/bin/python" in unit
    lab.broker.start()
    since = int(time.time() * 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AULA_", "PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.Popen([python, "-m", "device", "run", "--config", str(mapped), "--state-dir",
                             str(lab.work / "state"), "--loop"], cwd=root / "opt/aula", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        online = watch_online(lab.broker_url, lab.broker.certs, "aula-server", TOPICS, timeout=60, since_ms=since)
        assert online.status.state.value == "online" and online.status.device_id == "pi-a"
        assert online.health is not None and online.health["device_id"] == "pi-a"
        version = lab.current().removeprefix("releases/")
        assert (root / "opt/aula/current/RELEASE").read_text().strip() == version
        assert f'"release": "{version}"' in json.dumps(online.health)  # what the fleet page shows
        print(f"online after {online.seconds:.1f} s; first health: {json.dumps(online.health)[:300]}")
    except Exception:
        proc.kill()
        raise AssertionError(f"the installed device did not come online; its log:\n{proc.communicate()[1][-4000:]}"
                             f"\nbroker log:\n{lab.broker.log()[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def test_make_selftest_over_ssh_checks_the_installed_device_with_its_key(lab, first):
    """`python -m fleet selftest --host` (make selftest HOST=..): the installed release and config, the broker
    reached with the installed key although the config names the unit's credential."""
    if not listening(lab.broker.port):
        lab.broker.start()
    cmd = [sys.executable, "-m", "fleet", "selftest", "--host", lab.sshd.host, "--dest-root", str(lab.root),
           "--identity", str(lab.sshd.work / "client_key"), "--known-hosts", str(lab.sshd.known_hosts)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = dict(re.findall(r"^\s*(.+?)\s+(PASS|FAIL)\s", done.stdout, re.M))
    assert rows["broker"] == rows["camera"] == rows["model files"] == rows["clock"] == "PASS"
    assert "handshake with the device's certificate accepted" in done.stdout
    empty = subprocess.run([*cmd[:5], f"ssh://root@127.0.0.1:{free_port()}", *cmd[6:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "cannot reach 127.0.0.1" in empty.stderr


def test_a_broker_that_is_down_is_named_as_such(lab):
    with pytest.raises(BrokerUnreachable, match="is down or unreachable"):
        watch_online(f"mqtts://localhost:{free_port()}", lab.broker.certs, "aula-server", TOPICS, timeout=5)


def test_an_unreachable_host_a_wrong_key_and_a_changed_host_key_say_what_to_fix(lab):
    closed = free_port()
    done = lab.flash("--host", f"ssh://root@127.0.0.1:{closed}")
    assert done.returncode == 1 and f"connection refused on port {closed}" in done.stderr, done.stderr
    assert "running sshd" in done.stderr
    done = lab.flash(identity="wrong_key")
    assert done.returncode == 1 and "permission denied" in done.stderr and "ssh-copy-id" in done.stderr, done.stderr
    assert "wrong_key" in done.stderr
    done = lab.flash(known_hosts=lab.sshd.wrong_known_hosts)
    assert done.returncode == 1 and "does not match" in done.stderr and "ssh-keygen -R" in done.stderr, done.stderr


def test_a_bad_inventory_row_is_named_by_its_line(lab):
    bad = lab.work / "bad.csv"
    bad.write_text(f"site,room,device,host\nschool1,room101,pi-a,{lab.sshd.host}\nschool1,room/2,pi-x,\n")
    done = subprocess.run([sys.executable, "-m", "fleet", "flash", "--inventory", str(bad), "--device", "pi-a",
                           "--broker", lab.broker_url], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{bad}:3: room 'room/2'" in done.stderr, done.stderr
    nohost = lab.work / "nohost.csv"
    nohost.write_text("site,room,device,host\n\nschool1,room101,pi-a,\n")
    done = subprocess.run([sys.executable, "-m", "fleet", "flash", "--inventory", str(nohost), "--device", "pi-a",
                           "--broker", lab.broker_url], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{nohost}:3: device 'pi-a' has no host" in done.stderr, done.stderr


def test_too_little_space_on_the_device_stops_before_copying(lab, first):
    before = sorted(os.listdir(lab.root / "opt/aula/releases"))
    bigger = lab.work / "space-source"
    shutil.copytree(lab.source, bigger, ignore=shutil.ignore_patterns(".git"), copy_function=os.link)
    (bigger / "device" / "flash_space_marker.py").write_text("# a release the device does not have yet\n")
    done = lab.flash("--source", str(bigger), "--reserve-mib", str(10**9))
    assert done.returncode == 1 and "not enough space on 127.0.0.1" in done.stderr, done.stderr
    assert "Nothing was copied" in done.stderr and "df -h" in done.stderr
    assert sorted(os.listdir(lab.root / "opt/aula/releases")) == before


def test_flash_all_flashes_in_parallel_and_sums_up_why_the_others_failed(lab, first):
    fleet_csv = lab.work / "all.csv"
    rows = lab.inventory.read_text() + "school1,room103,pi-c,\n"
    fleet_csv.write_text(rows)
    lab_all = Lab(**{**lab.__dict__, "inventory": fleet_csv})
    done = lab_all.flash("--jobs", "3", command="flash-all", device=None)
    assert done.returncode == 1, done.stdout + done.stderr
    table = done.stdout[done.stdout.index("device  "):].splitlines()
    by_device = {ln.split()[0]: ln for ln in table[1:4]}
    assert "unchanged" in by_device["pi-a"]
    assert "FAILED" in by_device["pi-b"] and "connection refused" in by_device["pi-b"]
    assert "FAILED" in by_device["pi-c"] and f"{fleet_csv}:4: device 'pi-c' has no host" in by_device["pi-c"]
    assert table[4] == "3 device(s): 0 installed, 1 unchanged, 2 failed"
    assert "[pi-a] unchanged:" in done.stdout  # each device's lines, prefixed with its name


def test_the_make_targets_call_the_fleet_commands():
    done = subprocess.run(["make", "-n", "flash", "HOST=root@pi.lan", "SITE=s1", "ROOM=r1", "DEVICE=pi-1",
                           "BROKER=mqtts://mqtt.lan:8883", "DEST_ROOT=/mnt/sd"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    line = _line(done.stdout.replace("\\\n", " "), ".venv/bin/python -m fleet flash ")
    for part in ('--host "root@pi.lan"', '--site "s1"', '--room "r1"', '--device "pi-1"',
                 '--broker "mqtts://mqtt.lan:8883"', '--dest-root "/mnt/sd"', '--certs "certs"'):
        assert part in line, (part, done.stdout, done.stderr)
    done = subprocess.run(["make", "-n", "flash-all", "INVENTORY=fleet.csv", "JOBS=8", "BROKER=mqtts://m:8883"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    line = _line(done.stdout.replace("\\\n", " "), ".venv/bin/python -m fleet flash-all ")
    assert '--inventory "fleet.csv"' in line and "--jobs 8" in line, done.stdout + done.stderr


def test_ssh_targets_units_and_platform_tags():
    assert SshTarget.parse("ssh://pi@10.0.0.5:2222") == SshTarget("10.0.0.5", "pi", 2222)
    assert SshTarget.parse("root@pi-7.school.lan") == SshTarget("pi-7.school.lan", "root", None)
    assert SshTarget.parse("ssh://[fe80::1]:22").rsync_host == "[fe80::1]"
    credential = "[Service]\nLoadCredential=mqtt-client.key:/etc/aula/certs/device.key\n# LoadCredential=x:/y.key\n"
    layout = tls_layout(credential, "pi-1")
    assert (layout.key, layout.cert, layout.key_in_config, layout.key_for_service) == (
        "/etc/aula/certs/device.key", "/etc/aula/certs/device.crt",
        "/run/credentials/aula-device.service/mqtt-client.key", False)
    plain = tls_layout("[Service]\nExecStart=/opt/aula/.venv/bin/python -m device run\n", "pi-1")
    assert (plain.key, plain.key_in_config, plain.key_for_service) == (
        "/etc/aula/certs/pi-1.key", "/etc/aula/certs/pi-1.key", True)
    assert unit_programs("ExecStartPre=-/a/b x\nExecStart=/c/d\nWorkingDirectory=/opt/aula\n") == [
        "/a/b", "/c/d", "/opt/aula"]
    tags = platform_tags(Target("aarch64", "3.11.2", "2.36"))
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-1] == "manylinux2014_aarch64"
    assert summary_table([])[-1] == "0 device(s): 0 installed, 0 unchanged, 0 failed"


@pytest.fixture
def sudo_user(lab):
    """A login user with passwordless sudo and the lab's client key, as a Raspberry Pi OS image has: the
    technician's usual `pi@device`, where flash runs each command with `sudo -n`. Removed afterwards."""
    name = "aula-tech"
    if os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("useradd"):
        missing_system_dep("the rollout test logs in as a user with sudo, which it creates: it needs root and sudo "
                           "(apt-get install sudo)")
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, timeout=30)
    subprocess.run(["usermod", "-p", "*", name], check=True, timeout=30)  # no password, but not locked: sshd
    # (without PAM) refuses a locked account even its keys
    home = Path(pwd.getpwnam(name).pw_dir)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_text((lab.sshd.work / "client_key.pub").read_text())
    for path in (home / ".ssh", home / ".ssh" / "authorized_keys"):
        shutil.chown(path, name, name)
    rule = Path("/etc/sudoers.d/aula-flash-test")
    rule.write_text(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
    rule.chmod(0o440)
    yield name
    rule.unlink(missing_ok=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30)


# Last: it moves pi-a to a second release, which the tests above do not expect.
def test_a_rollout_to_two_of_three_devices_rolls_back_the_one_that_fails_its_self_check(lab, first, sudo_user):
    """pi-a and pi-b get release 2; pi-b's camera fails its self-check after the switch, so pi-b goes back to
    release 1 on its own config; pi-c, outside the group (and unreachable), is never contacted. pi-a is reached
    as a user with sudo, not as root."""
    roots = lab.work / "roots"
    roots.mkdir()
    (roots / "pi-a").symlink_to(lab.root)  # pi-a as the first flash left it
    inventory = lab.work / "rollout.csv"
    user = sudo_user
    inventory.write_text(f"site,room,device,host\nschool1,room101,pi-a,ssh://{user}@127.0.0.1:{lab.sshd.port}\n"
                         f"school1,room102,pi-b,{lab.sshd.host}\n"
                         f"school1,room103,pi-c,ssh://root@127.0.0.1:{free_port()}\n")
    samples = lab.source / "device" / "samples"
    inputs = (f"camera:\n  type: video\n  path: {samples / 'classroom_sample.mp4'}\n  realtime: false\n"
              f"microphone:\n  type: wav\n  path: {samples / 'classroom_sample.wav'}\n")
    for device in ("pi-a", "pi-b"):
        (lab.work / f"base-{device}.yaml").write_text(lab.base_config.read_text() + inputs)
    group = Lab(**{**lab.__dict__, "inventory": inventory, "root": roots / "{device}",
                   "base_config": lab.work / "base-{device}.yaml"})
    assert group.flash(device="pi-b", inputs=None).returncode == 0  # pi-b on release 1
    release_1 = os.readlink(roots / "pi-b" / "opt/aula/current")

    newer = lab.work / "newer-source"
    shutil.copytree(lab.source, newer, ignore=shutil.ignore_patterns(".git"))
    with (newer / "docs" / "flash.md").open("a") as f:
        f.write("\n<!-- release 2 -->\n")
    (lab.work / "base-pi-b.yaml").write_text(lab.base_config.read_text()
                                             + "camera:\n  type: opencv\n  device: 97\n")  # its camera broke
    t = time.monotonic()
    done = group.flash("--source", str(newer), "--devices", "pi-a,pi-b", "--jobs", "2", command="rollout",
                       device=None, inputs=None)
    print(f"rollout to 2 devices: {time.monotonic() - t:.1f} s")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "to 2 of 3 device(s) (pi-a, pi-b); 1 not contacted" in done.stdout
    table = done.stdout[done.stdout.index("device  "):].splitlines()
    by_device = {ln.split()[0]: ln for ln in table[1:3]}
    assert set(by_device) == {"pi-a", "pi-b"} and "pi-c" not in done.stdout.split("not contacted", 1)[1]
    assert " ok " in by_device["pi-a"] and f"[pi-a] flash pi-a (school1/room101) to {user}@127.0.0.1" in done.stdout
    assert "FAILED" in by_device["pi-b"] and "self-check failed" in by_device["pi-b"]
    assert f"rolled back on the device: current -> {release_1}" in done.stdout
    release_2 = os.readlink(roots / "pi-a" / "opt/aula/current")
    assert release_2 != release_1 and os.readlink(roots / "pi-b" / "opt/aula/current") == release_1
    assert "type: video" in (roots / "pi-b" / "etc/aula/device.yaml").read_text()  # its config came back too
    assert not (roots / "pi-c").exists()
    assert table[3] == "2 device(s): 1 installed, 0 unchanged, 1 failed"
