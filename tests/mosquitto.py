"""A real mosquitto broker on a free loopback port for tests: start, stop, kill and restart it."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.system_deps import require_system_dep


def find_mosquitto() -> str | None:
    """Return the mosquitto binary; Debian puts it in /usr/sbin, which a normal user's PATH may lack."""
    extra = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"])
    return shutil.which("mosquitto", path=os.environ.get("PATH", "") + os.pathsep + extra)


def require_mosquitto() -> str:
    """The mosquitto binary, or skip the test (fail it under AULA_REQUIRE_SYSTEM_DEPS=1) saying how to install it."""
    return require_system_dep(
        find_mosquitto(), "mosquitto is not installed; `apt-get install mosquitto` to run the MQTT integration tests"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """One mosquitto process with its own config, persistence and log in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None, listener_options: str = "", anonymous: bool = True):
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = "certfile" in listener_options
        self.conf = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        # Persistence keeps subscribers' sessions and queued messages across a stop/start, as on a real server.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{listener_options}\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log_path}\n"
            "log_type all\n"
            # As root, mosquitto would switch to the `mosquitto` user, which cannot write a pytest tmp dir.
            f"user {getpass.getuser()}\n"
        )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("mosquitto is already running")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, as systemd does: mosquitto saves its persistence database and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.send_signal(signal.SIGCONT)  # a paused broker handles SIGTERM only once it runs again
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, without saving."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing, so PUBACKs stop coming."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# Named fixtures, so a test module can import them without its parameters shadowing the imported names.
@pytest.fixture(name="broker_factory")
def broker_factory_fixture(tmp_path):
    """Make brokers (not started) in the test's tmp dir; every one is stopped at the end."""
    require_mosquitto()
    made: list[MosquittoBroker] = []

    def make(name: str = "broker", **kwargs) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / name, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture(name="mosquitto")
def mosquitto_fixture(broker_factory):
    """A started broker on a free loopback port."""
    broker = broker_factory()
    broker.start()
    return broker


@pytest.fixture(name="device")
def device_simulator_fixture(mosquitto):
    """A simulated classroom device publishing to the started broker (`server.testing.DeviceSimulator`)."""
    from server.testing import DeviceSimulator

    sim = DeviceSimulator(mosquitto.port)
    yield sim
    sim.close()
