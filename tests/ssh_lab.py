"""What the fleet tests (test_flash.py, test_server_install.py) share: a real sshd on loopback, the broker with its
certificates, a clone of this checkout to ship, running a `python -m fleet` command with its output kept in the
test's log, and a timing line shown even without `-s`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mosquitto import free_port, require_mosquitto
from tests.system_deps import missing_system_dep, require_system_dep
from tests.test_broker_acl import Broker, listening

ROOT = Path(__file__).resolve().parent.parent


def require_flash_tools() -> str:
    sshd = require_system_dep(shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:" + os.environ.get("PATH", "")),
                              "sshd is not installed; `apt-get install openssh-server` to run the flash tests")
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), ("rsync", "rsync")):
        require_system_dep(shutil.which(tool), f"{tool} is not installed; `apt-get install {package}`")
    if os.geteuid() != 0:
        missing_system_dep("the flash tests log in to a loopback sshd as root: run them as root")
    if not Path("/usr/bin/python3").exists():
        missing_system_dep("the flash tests need the system's /usr/bin/python3 (the device's interpreter)")
    return sshd


class Sshd:
    """sshd on a free loopback port: a throwaway host key, root login with a throwaway client key only."""

    def __init__(self, binary: str, work: Path):
        self.work, self.port = work, free_port()
        for name in ("host_key", "client_key", "wrong_key", "other_host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(work / name)],
                           check=True)
        (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self._pub('host_key')}\n")
        self.wrong_known_hosts = work / "wrong_known_hosts"
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} {self._pub('other_host_key')}\n")
        config = work / "sshd_config"
        config.write_text(f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {work / 'host_key'}\nPidFile none\n"
                          f"AuthorizedKeysFile {work / 'authorized_keys'} .ssh/authorized_keys\n"
                          "PermitRootLogin prohibit-password\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                          "StrictModes no\nUsePAM no\nMaxStartups 50\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.log = work / "sshd.log"
        self.process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("w"))
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def _pub(self, name: str) -> str:
        return " ".join((self.work / f"{name}.pub").read_text().split()[:2])

    @property
    def host(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class LabParts:
    sshd: Sshd
    broker: Broker
    source: Path  # what is shipped: a clone of this checkout


def start_lab(work: Path) -> LabParts:
    """sshd and the broker's certificates (the broker is started by the tests that need it), and the clone."""
    binary = require_flash_tools()
    require_mosquitto()
    sshd = Sshd(binary, work)
    (work / "broker").mkdir()
    broker = Broker(work / "broker")  # certificates for pi-a, pi-b and the server's account, aula-server
    source = work / "source"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(source)], check=True, timeout=120)
    (work / "root").mkdir()
    return LabParts(sshd, broker, source)


def stop_lab(parts: LabParts) -> None:
    parts.broker.stop()
    parts.sshd.stop()


def run_fleet(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `python -m fleet ...` from the checkout; the command and its output go to the test's log."""
    done = subprocess.run([sys.executable, "-m", "fleet", *cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    print(f"$ python -m fleet {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return done


def show(request, line: str) -> None:
    """Print a line that pytest shows even without -s (a timing worth seeing in every run)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")
