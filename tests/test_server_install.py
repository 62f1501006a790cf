"""`python -m fleet server-install` (what `make server-install` runs) against a real sshd on loopback, with a scratch
folder as the host's `/` (DEST_ROOT): the installed tree, the rendered and validated config, the certificates, the
enabled unit, a second run that changes nothing, the installed server answering /healthz, and the errors a
technician meets. The sshd, the broker's certificates and the shipped clone come from tests/ssh_lab.py, as in
test_flash.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fleet.flash import tls_layout, unit_programs
from fleet.release import SERVER, build_release
from fleet.server_install import health_url
from server.testing import wait_for_broker
from tests.mosquitto import free_port
from tests.ssh_lab import Sshd, run_fleet, show, start_lab, stop_lab
from tests.test_broker_acl import Broker, listening

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerLab:
    work: Path
    sshd: Sshd
    broker: Broker
    root: Path  # the host's / (DEST_ROOT)
    source: Path

    @property
    def broker_url(self) -> str:
        return f"mqtts://localhost:{self.broker.port}"

    def install(self, *args: str, host: str | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
        return run_fleet(["server-install", "--host", host or self.sshd.host,
                          "--broker", self.broker_url, "--certs", str(self.broker.certs), "--dest-root", str(self.root),
                          "--identity", str(self.sshd.work / "client_key"), "--known-hosts", str(self.sshd.known_hosts),
                          "--connect-timeout", "5", "--source", str(self.source),
                          "--wheelhouse-cache", str(self.work / "wheelhouse"), *args], timeout)

    def current(self) -> str:
        return os.readlink(self.root / "opt/aula/current")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("server-install")
    parts = start_lab(work)
    yield ServerLab(work, parts.sshd, parts.broker, work / "root", parts.source)
    stop_lab(parts)


@pytest.fixture(scope="module")
def first(lab, request):
    t = time.monotonic()
    done = lab.install()
    show(request, f"first `python -m fleet server-install` against the loopback host: {time.monotonic() - t:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_first_install_puts_the_release_config_certificates_state_directory_and_unit_in_place(lab, first):
    out, root, aula = first.stdout, lab.root, lab.root / "opt/aula"
    version = lab.current().removeprefix("releases/")
    assert version == build_release(lab.source, SERVER).version
    assert f"current -> releases/{version} (first release)" in out and "made on the host from the wheelhouse" in out
    release = aula / "releases" / version
    info = json.loads((release / ".aula-release.json").read_text())
    assert info["role"] == "server" and "fastapi>=0.110" in info["requirements"]
    assert (release / "server/__main__.py").exists() and (release / "device/contract/__init__.py").exists()
    assert not (release / "models_tflite").exists() and not (release / "device/__main__.py").exists()
    for name in (".venv", "server", "docs"):
        assert os.readlink(aula / name) == f"current/{name}"
    # The config: BROKER and the installed TLS files, SQLite in the state directory; it validates with the
    # installed code run the way the unit runs it (its python, from another folder).
    config = root / "etc/aula/server.yaml"
    cfg = yaml.safe_load(config.read_text())
    unit = root / "etc/systemd/system/aula-server.service"
    layout = tls_layout(unit.read_text(), "server", "aula-server.service")
    assert cfg["mqtt"]["broker"] == lab.broker_url
    assert cfg["mqtt"]["tls"] == {"ca_file": "/etc/aula/certs/ca.crt", "cert_file": "/etc/aula/certs/server.crt",
                                  "key_file": "/run/credentials/aula-server.service/mqtt-client.key"}
    assert cfg["database"]["url"] == "sqlite:////var/lib/aula-server/aula-server.sqlite3"
    assert "validates on the host" in out
    check = subprocess.run([str(aula / ".venv/bin/python"), "-m", "server", "validate-config", "--config",
                            str(config)], cwd=lab.work, capture_output=True, text=True, timeout=60, env=_clean_env())
    assert check.returncode == 0, check.stderr
    # The key as the unit's comments say: 0600 root:root, where LoadCredential= reads it.
    key = root / layout.key.lstrip("/")
    assert layout.key == "/etc/aula/certs/server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == 0
    assert key.read_bytes() == (lab.broker.certs / "clients/aula-server.key").read_bytes()
    assert (root / "etc/aula/certs/server.crt").read_bytes() == (
        lab.broker.certs / "clients/aula-server.crt").read_bytes()
    # The state directory and the hardened unit, enabled; every path the unit names exists.
    state = root / "var/lib/aula-server"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    assert unit.read_text() == (ROOT / "systemd/aula-server.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/aula-server.service"
    assert os.readlink(wants) == "/etc/systemd/system/aula-server.service"
    for program in unit_programs(unit.read_text()):
        assert (root / program.lstrip("/")).exists(), program
    assert "not started: DEST_ROOT" in out and "user aula-server: not created (DEST_ROOT" in out


def test_a_second_install_changes_nothing_and_says_so(lab, first):
    config = lab.root / "etc/aula/server.yaml"
    before = (lab.current(), config.stat().st_mtime_ns, sorted(os.listdir(lab.root / "opt/aula/releases")))
    t = time.monotonic()
    done = lab.install()
    print(f"repeat `python -m fleet server-install`: {time.monotonic() - t:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unchanged:" in done.stdout and "nothing to do" in done.stdout and "copied" not in done.stdout
    assert (lab.current(), config.stat().st_mtime_ns, sorted(os.listdir(lab.root / "opt/aula/releases"))) == before


def test_the_installed_server_answers_healthz_connected_to_the_broker(lab, first):
    """The installed venv's python runs `-m server` from a state directory, as the unit does (the release is found
    through the venv, not the working directory), with the installed config; paths under / are mapped into the
    scratch root, and the port is a free one."""
    root = lab.root
    cfg = yaml.safe_load((root / "etc/aula/server.yaml").read_text())
    cfg["mqtt"]["tls"] = {k: str(root / ("etc/aula/certs/server.key" if k == "key_file" else v).lstrip("/"))
                          for k, v in cfg["mqtt"]["tls"].items()}  # systemd's credential copy is the installed key
    cfg["database"]["url"] = "sqlite:///aula-server.sqlite3"
    port = free_port()
    cfg["http"] = {"listen": f"127.0.0.1:{port}"}
    mapped = lab.work / "server-mapped.yaml"
    mapped.write_text(yaml.safe_dump(cfg))
    state = lab.work / "state"
    state.mkdir()
    if not listening(lab.broker.port):
        lab.broker.start()
    proc = subprocess.Popen([str(root / "opt/aula/.venv/bin/python"), "-m", "server", "--config", str(mapped)],
                            cwd=state, env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = health_url(mapped.read_text())
        assert url == f"http://127.0.0.1:{port}/healthz"
        health = wait_for_broker(url, proc)
        assert health is not None and health["broker_connected"] and health["database"] == "ok", health
        assert (state / "aula-server.sqlite3").is_file()
        print(f"/healthz: {json.dumps(health)[:300]}")
    except AssertionError:
        proc.kill()
        raise AssertionError(f"the installed server did not answer; its log:\n{proc.communicate()[1][-4000:]}"
                             f"\nbroker log:\n{lab.broker.log()[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_a_config_that_does_not_validate_is_never_installed(lab, first):
    config = lab.root / "etc/aula/server.yaml"
    before = (config.read_bytes(), lab.current())
    bad = lab.work / "bad-server.yaml"
    bad.write_text("http:\n  listen: 127.0.0.1:8080\n  colour: blue\n")
    done = lab.install("--config", str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "does not validate on the host" in done.stderr and "colour" in done.stderr, done.stderr
    assert "nothing was switched" in done.stderr and "fix CONFIG" in done.stderr
    assert (config.read_bytes(), lab.current()) == before
    assert not (lab.root / "etc/aula/server.yaml.aula-new").exists()


def test_an_unreachable_host_a_wrong_key_and_missing_certificates_say_what_to_fix(lab):
    closed = free_port()
    done = lab.install(host=f"ssh://root@127.0.0.1:{closed}")
    assert done.returncode == 1 and f"connection refused on port {closed}" in done.stderr, done.stderr
    done = lab.install("--identity", str(lab.sshd.work / "wrong_key"))
    assert done.returncode == 1 and "permission denied" in done.stderr and "ssh-copy-id" in done.stderr, done.stderr
    done = lab.install("--certs", str(lab.work / "no-certs"))
    assert done.returncode == 2 and "ca.crt is missing" in done.stderr and "make certs" in done.stderr, done.stderr


def test_the_make_target_calls_the_fleet_command():
    done = subprocess.run(["make", "-n", "server-install", "HOST=root@srv.lan", "BROKER=mqtts://mqtt.lan:8883",
                           "CONFIG=server.yaml", "DEST_ROOT=/mnt/srv"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    line = next((ln for ln in done.stdout.replace("\\\n", " ").splitlines()
                 if ".venv/bin/python -m fleet server-install " in ln), "")
    for part in ('--host "root@srv.lan"', '--broker "mqtts://mqtt.lan:8883"', '--config "server.yaml"',
                 '--dest-root "/mnt/srv"', '--certs "certs"'):
        assert part in line, (part, done.stdout, done.stderr)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AULA_", "PYTHON", "VIRTUAL_ENV"))}
