"""Flash a classroom device over ssh and rsync: a versioned release, its venv, the config, certificates and the unit.

On the device (every path below is under DEST_ROOT, `/` on a real device):

    /opt/aula/releases/<version>/        device/, models_tflite/, systemd/, docs/, RELEASE, .aula-release.json
    /opt/aula/releases/<version>/.venv   -> ../../venvs/<key>  (one venv per dependency set, CPU and Python)
    /opt/aula/venvs/<key>/               made on the device from a wheelhouse prepared on this machine
    /opt/aula/current                    -> releases/<version>  (switched by renaming a new link over it)
    /opt/aula/{.venv,device,models_tflite,docs} -> current/...  (the paths systemd/aula-device.service names)
    /etc/aula/device.yaml                rendered here, validated on the device by the release's own code
    /etc/aula/certs/{ca.crt,<device>.crt,<device>.key}   the key mode 0600, owned by `aula` where it exists
    /etc/systemd/system/aula-device.service, enabled

A release whose self-check fails, or that does not come online in time, is switched back to the previous one,
which is restarted. Nothing is changed on the device before everything it needs is copied and validated.
Uses the system's ssh and rsync (BatchMode, a connect timeout, one multiplexed connection per device).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from device.common.broker_settings import BrokerAddress, parse_broker_url
from device.common.errors import AulaError, ConfigError
from device.contract import DeviceTopics, HealthMessage, StatusMessage
from fleet.inventory import DeviceRow, check_id, read_inventory
from fleet.release import (
    DEFAULT_WHEELHOUSE_CACHE,
    Release,
    Target,
    Wheelhouse,
    prepare_wheelhouse,
)

UNIT_NAME = "aula-device.service"
# The links that make systemd/aula-device.service's paths (/opt/aula/.venv/bin/python, WorkingDirectory=/opt/aula
# and `-m device`) follow `current`.
COMPAT_LINKS = (".venv", "device", "models_tflite", "docs")
# A venv takes about 3.2x its wheels once unpacked (788 MB from 250 MB of wheels, the device extra on x86_64).
VENV_PER_WHEEL_BYTE = 3.5
MIB = 1024 * 1024
Say = Callable[[str], None]


class FlashError(AulaError):
    """A flash failed; the message tells the technician what to fix."""


class BrokerUnreachable(FlashError):
    """The broker cannot be reached or refuses the watcher: not the release's fault, so no rollback."""


class NotOnline(FlashError):
    """The device did not report `online` in time."""


# --- what to flash where ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SshTarget:
    """`[user@]host`, or `ssh://[user@]host[:port]` (inventory host column or HOST=)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str, port: int | None = None) -> SshTarget:
        raw = text.strip()
        if not raw:
            raise ConfigError("the ssh host is empty: HOST=user@host or ssh://user@host:port")
        if raw.startswith("ssh://"):
            m = re.fullmatch(r"ssh://(?:([^@/]+)@)?(\[[0-9A-Fa-f:.]+\]|[^:/@\[\]]+)(?::(\d+))?/?", raw)
            if not m:
                raise ConfigError(f"ssh host {raw!r} is not ssh://[user@]host[:port]")
            user, host, p = m.group(1), m.group(2).strip("[]"), m.group(3)
            return cls(host, user, int(p) if p else port)
        user, _, host = raw.rpartition("@")
        if not host or any(c in host for c in "/ ") or ("@" in user):
            raise ConfigError(f"ssh host {raw!r} is not [user@]host; for a port use ssh://user@host:port")
        return cls(host.strip("[]"), user or None, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def rsync_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        return self.destination + (f" port {self.port}" if self.port else "")


@dataclass(frozen=True)
class DeviceSpec:
    site: str
    room: str
    device: str
    host: SshTarget
    where: str = "the command line"  # for messages: an inventory's file and line

    @property
    def topics(self) -> DeviceTopics:
        return DeviceTopics.for_device(self.site, self.room, self.device)


@dataclass
class FlashOptions:
    certs: Path = Path("certs")
    broker: str | None = None
    dest_root: str = "/"
    identity: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: int = 10
    inputs: str | None = None  # hardware | sample | None (the base config's, else hardware)
    base_config: Path | None = None
    wheelhouse_cache: Path = DEFAULT_WHEELHOUSE_CACHE
    online_timeout: float = 120.0
    watch_as: str | None = None
    keep_releases: int = 3
    reserve_mib: int = 64

    @property
    def root(self) -> str:
        """The prefix of every installed path: '' for a real device's /."""
        return self.root_for("")

    def root_for(self, device: str) -> str:
        """The prefix for one device; `{device}` in DEST_ROOT is its id (several test roots on one host)."""
        root = str(self.dest_root or "/").replace("{device}", device).rstrip("/")
        if root and not root.startswith("/"):
            raise ConfigError(f"DEST_ROOT {self.dest_root!r} must be an absolute path on the device")
        return root

    def base_config_for(self, device: str) -> Path | None:
        """The base config for one device; `{device}` in BASE_CONFIG is its id (per-device settings)."""
        if self.base_config is None:
            return None
        return Path(str(self.base_config).replace("{device}", device))


@dataclass
class FlashResult:
    device: str
    host: str
    ok: bool
    state: str  # installed | unchanged | failed
    detail: str
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


# --- ssh and rsync ------------------------------------------------------------------------------------------

def ssh_failure(stderr: str, target: SshTarget, opts: FlashOptions) -> FlashError:
    """Turn ssh's stderr (exit 255) into what the technician should do."""
    text = stderr.strip()
    port = target.port or 22
    if "Could not resolve hostname" in text:
        return FlashError(f"cannot resolve the host name {target.host!r}: check the name in HOST or the inventory, "
                          "or use the device's IP address")
    if "Connection refused" in text:
        return FlashError(f"cannot reach {target.host}: connection refused on port {port}. Is the device on and "
                          "running sshd (`sudo systemctl enable --now ssh` on it), and is the port right?")
    if any(s in text for s in ("timed out", "No route to host", "Network is unreachable", "Host is unreachable")):
        reason = next(s for s in ("timed out", "No route to host", "Network is unreachable", "Host is unreachable")
                      if s in text)
        return FlashError(f"cannot reach {target.host} (port {port}): {reason.lower()} after up to "
                          f"{opts.connect_timeout} s. Check that the device is powered and on this network "
                          f"(`ping {target.host}`) and that the address is right")
    if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
        where = opts.known_hosts or "~/.ssh/known_hosts"
        forget = f"ssh-keygen -R {target.host}" + ("" if opts.known_hosts is None else f" -f {where}")
        return FlashError(f"the host key of {target.host} does not match {where}. If the device was reinstalled, "
                          f"remove its old key (`{forget}`) and flash again; if not, stop: something else answers "
                          "at that address")
    if "Permission denied" in text or "Too many authentication failures" in text:
        key = f"the key {opts.identity}" if opts.identity else "your ssh keys (ssh-agent, ~/.ssh/id_*)"
        user = target.user or "your user name"
        return FlashError(f"{target.destination} refused {key} (permission denied). Put your public key on the "
                          f"device (`ssh-copy-id {target.destination}`), or pass the right one with SSH_KEY=..., "
                          f"and check the user ({user}) is allowed to log in")
    last = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return FlashError(f"ssh to {target} failed: {last[-1] if last else 'no message'}")


def _space_error(text: str) -> bool:
    return "No space left on device" in text or "Errno 28" in text


class Remote:
    """One device over one multiplexed ssh connection; commands run as root (sudo -n for another user)."""

    def __init__(self, target: SshTarget, opts: FlashOptions):
        self.target, self.opts = target, opts
        self._dir = tempfile.mkdtemp(prefix="aula-ssh-")
        self.control = f"{self._dir}/c"
        self.sudo: list[str] = []
        self._master = False

    def ssh_options(self) -> list[str]:
        o = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.opts.connect_timeout}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", f"ControlPath={self.control}"]
        if self.opts.known_hosts is not None:
            o += ["-o", f"UserKnownHostsFile={self.opts.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        else:
            o += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.opts.identity is not None:
            o += ["-i", str(self.opts.identity), "-o", "IdentitiesOnly=yes"]
        if self.target.port:
            o += ["-p", str(self.target.port)]
        return o

    def connect(self) -> None:
        """Open the shared connection (the error, if any, says why) and find out whether sudo is needed."""
        if shutil.which("ssh") is None:
            raise FlashError("ssh is not installed here (`sudo apt install openssh-client`)")
        with tempfile.TemporaryFile(mode="w+") as err:
            # -f: ssh backgrounds itself once logged in; its stderr goes to a file, not a pipe that it would
            # hold open for as long as the shared connection lives.
            try:
                done = subprocess.run(["ssh", "-M", "-N", "-f", "-o", "ControlPersist=600", *self.ssh_options(),
                                       self.target.destination], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.opts.connect_timeout * 3 + 15)
            except subprocess.TimeoutExpired:
                raise FlashError(f"cannot reach {self.target}: no answer within {self.opts.connect_timeout * 3 + 15} s"
                                 f" (check `ping {self.target.host}`)") from None
            err.seek(0)
            if done.returncode != 0:
                raise ssh_failure(err.read(), self.target, self.opts)
        self._master = True
        uid = self.run("id -u", raw=True).strip()
        if uid != "0":
            check = self.run("sudo -n true", check=False, raw=True)
            if check.returncode != 0:
                raise FlashError(f"{self.target.destination} is not root and cannot use sudo without a password: "
                                 f"log in as root@{self.target.host}, or allow passwordless sudo for that user")
            self.sudo = ["sudo", "-n"]

    def _command(self, script: str, args: tuple[str, ...]) -> str:
        return shlex.join([*self.sudo, "sh", "-c", script, "sh", *args])

    def run(self, script: str, *args: str, input: bytes | str | None = None, check: bool = True,
            timeout: float = 600, raw: bool = False, what: str | None = None):
        """Run `script` with `sh -c` on the device (arguments as $1...), as root. With check, return its stdout
        or raise FlashError; without, return the CompletedProcess (text). raw: as the login user, no sudo."""
        data = input.encode() if isinstance(input, str) else input
        remote = shlex.join([*([] if raw else self.sudo), "sh", "-c", script, "sh", *args])
        cmd = ["ssh", *self.ssh_options(), self.target.destination, remote]
        try:
            done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout,
                                  stdin=None if data is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{what or 'a command'} on {self.target} did not finish within {timeout:.0f} s") from None
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        if done.returncode == 255 and not out and (err.startswith("ssh:") or "Permission denied" in err
                                                   or "Connection" in err or not err.strip()):
            raise ssh_failure(err or "the connection was lost", self.target, self.opts)
        if not check:
            return subprocess.CompletedProcess(cmd, done.returncode, out, err)
        if done.returncode != 0:
            text = (err or out).strip()
            if _space_error(text):
                raise FlashError(f"the device {self.target.host} ran out of space during {what or 'a command'}: "
                                 f"{_last_lines(text, 3)}; free space there (`df -h`) and flash again")
            raise FlashError(f"{what or 'a command'} failed on {self.target} (exit {done.returncode}):\n"
                             f"  {_last_lines(text, 12, indent='  ')}")
        return out

    def put(self, path: str, data: bytes, mode: str = "0644", owner: str = "") -> None:
        """Write a file on the device atomically, created with a private mode before it is renamed into place."""
        self.run('set -eu; p="$1"; t="$p.aula-tmp"; mkdir -p "$(dirname "$p")"; (umask 077; cat > "$t"); '
                 'chmod "$2" "$t"; if [ -n "$3" ]; then chown "$3" "$t"; fi; mv -f "$t" "$p"',
                 path, mode, owner, input=data, what=f"writing {path}")

    def rsync(self, args: list[str], what: str, timeout: float = 3600) -> float:
        if shutil.which("rsync") is None:
            raise FlashError("rsync is not installed here (`sudo apt install rsync`)")
        cmd = ["rsync", "-e", shlex.join(["ssh", *self.ssh_options()])]
        if self.sudo:
            cmd += ["--rsync-path", "sudo -n rsync"]
        t = time.monotonic()
        try:
            done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FlashError(f"copying {what} to {self.target} took longer than {timeout:.0f} s") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            if _space_error(text):
                raise FlashError(f"the device {self.target.host} ran out of space while copying {what}; free space "
                                 "there (`df -h`; old releases are under /opt/aula/releases) and flash again")
            raise FlashError(f"copying {what} to {self.target} failed (rsync exit {done.returncode}):\n"
                             f"  {_last_lines(text, 8, indent='  ')}")
        return time.monotonic() - t

    def close(self) -> None:
        if self._master:
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={self.control}", self.target.destination],
                           capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
            self._master = False
        shutil.rmtree(self._dir, ignore_errors=True)


def _last_lines(text: str, n: int, indent: str = "") -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return f"\n{indent}".join(lines[-n:]) if lines else "(no output)"


# --- what is on the device ----------------------------------------------------------------------------------

# Run with the host's python3; prints one JSON object. $1: DEST_ROOT ('' for /), $2: the service user, $3: the
# unit's name, $4: the config file, $5-$7: the CA, certificate and key paths, $8: the state directory ('' for
# none), $9 and after: the names under /opt/aula whose links are reported. A device and a server both use it.
_PROBE = r"""
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(command -v python3) || { echo AULA-NO-PYTHON; exit 3; }
exec "$PY" - "$@" <<'AULA_PY'
import hashlib, json, os, platform, pwd, shutil, subprocess, sys, time
root, user_name, unit_name, config, ca, cert, key, state = sys.argv[1:9]
A = root + "/opt/aula"
def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None
def meta(path):
    try:
        st = os.stat(path)
        return {"sha256": sha(path), "mode": "%04o" % (st.st_mode & 0o7777), "uid": st.st_uid}
    except OSError:
        return None
releases = {}
if os.path.isdir(A + "/releases"):
    for name in os.listdir(A + "/releases"):
        try:
            with open("%s/releases/%s/.aula-release.json" % (A, name)) as f:
                info = json.load(f)
            info["mtime"] = os.stat("%s/releases/%s/.aula-release.json" % (A, name)).st_mtime
            releases[name] = info
        except (OSError, ValueError):
            pass
venvs = []
if os.path.isdir(A + "/venvs"):
    venvs = [n for n in os.listdir(A + "/venvs") if os.path.exists("%s/venvs/%s/.aula-venv-complete" % (A, n))]
links = {}
for n in sys.argv[9:]:
    p = "%s/%s" % (A, n)
    links[n] = ("link:" + os.readlink(p)) if os.path.islink(p) else ("other" if os.path.lexists(p) else None)
d = A
while not os.path.isdir(d):
    d = os.path.dirname(d)
st = os.statvfs(d)
try:
    entry = pwd.getpwnam(user_name)
    user = {"uid": entry.pw_uid, "gid": entry.pw_gid}
except KeyError:
    user = None
try:
    import ensurepip, venv
    has_venv = True
except ImportError:
    has_venv = False
systemd = os.path.isdir("/run/systemd/system")
active = None
if systemd and not root and shutil.which("systemctl"):
    active = subprocess.run(["systemctl", "is-active", unit_name], capture_output=True, text=True).stdout.strip()
libc = platform.libc_ver()
print(json.dumps({
    "python": sys.executable, "python_version": platform.python_version(), "machine": platform.machine(),
    "libc": libc[1] if libc[0] == "glibc" else "", "venv_module": has_venv,
    "rsync": bool(shutil.which("rsync")), "systemctl": bool(shutil.which("systemctl")), "systemd": systemd,
    "active": active, "user": user, "free_bytes": st.f_bavail * st.f_frsize, "free_at": d,
    "releases": releases, "venvs": venvs, "links": links,
    "state_dir": os.path.isdir(root + state) if state else None,
    "files": {"config": meta(root + config), "ca": meta(root + ca), "cert": meta(root + cert),
              "key": meta(root + key), "unit": meta(root + "/etc/systemd/system/" + unit_name)},
    "enabled": os.path.lexists(root + "/etc/systemd/system/multi-user.target.wants/" + unit_name),
    "clock_ms": int(time.time() * 1000),
}))
AULA_PY
"""


def probe_host(remote: Remote, what: str, root: str, user: str, unit: str, config: str, tls: tuple[str, str, str],
               state_dir: str, links: tuple[str, ...]) -> dict:
    """The host's state as _PROBE reports it (`what`: "device" or "host", for the messages)."""
    out = remote.run(_PROBE, root, user, unit, config, *tls, state_dir, *links, what=f"reading the {what}'s state",
                     check=False)
    if out.returncode == 3 or "AULA-NO-PYTHON" in out.stdout:
        raise FlashError(f"{remote.target.host} has no python3: install it (`sudo apt install python3 python3-venv`)")
    if out.returncode != 0:
        raise FlashError(f"reading the {what}'s state failed (exit {out.returncode}): {_last_lines(out.stderr, 5)}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise FlashError(f"the {what}'s state report is unreadable: {out.stdout[-500:]!r}") from None


@dataclass
class DeviceState:
    raw: dict

    @property
    def target(self) -> Target:
        return Target(self.raw["machine"], self.raw["python_version"], self.raw.get("libc", ""))

    @property
    def current(self) -> str | None:
        link = self.raw["links"].get("current")
        return link[len("link:releases/"):] if link and link.startswith("link:releases/") else None

    def release_with(self, content_hash: str) -> str | None:
        for name, info in sorted(self.raw["releases"].items()):
            if info.get("content_hash") == content_hash:
                return name
        return None

    def file(self, name: str) -> dict | None:
        return self.raw["files"].get(name)


def probe(remote: Remote, root: str, layout: TlsLayout) -> DeviceState:
    return DeviceState(probe_host(remote, "device", root, "aula", UNIT_NAME, "/etc/aula/device.yaml",
                                  (layout.ca, layout.cert, layout.key), "", ("current", *COMPAT_LINKS)))


# --- what is installed ----------------------------------------------------------------------------------------

def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def render_config(spec: DeviceSpec, opts: FlashOptions, layout: TlsLayout) -> tuple[str, bool]:
    """/etc/aula/device.yaml for the device, and whether its camera is picamera2 (which needs Debian's
    python3-picamera2: the venv then sees the system's packages). Keys of --base-config are kept."""
    base: dict = {}
    base_path = opts.base_config_for(spec.device)
    if base_path is not None:
        try:
            base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the base config {base_path}: {exc}") from None
        if not isinstance(base, dict):
            raise ConfigError(f"the base config {base_path} must be a mapping of device config keys")
    cfg = dict(base)
    mqtt = dict(cfg.get("mqtt") or {})
    broker = opts.broker or mqtt.get("broker")
    if not broker:
        raise ConfigError("BROKER is empty: the broker's URL as the devices reach it, e.g. mqtts://mqtt.school.lan:8883")
    try:
        address = parse_broker_url(str(broker))
    except ValueError as exc:
        raise ConfigError(f"BROKER: {exc}") from None
    mqtt["broker"] = address.url
    mqtt.update(site=spec.site, room=spec.room, device_id=spec.device)
    if address.tls:
        tls = dict(mqtt.get("tls") or {})
        tls.update(ca_file=layout.ca, cert_file=layout.cert, key_file=layout.key_in_config)
        mqtt["tls"] = tls
    cfg["mqtt"] = mqtt
    inputs = opts.inputs or ("keep" if "camera" in base or "microphone" in base else "hardware")
    if inputs == "sample":  # the defaults: the bundled recording in the release
        cfg.pop("camera", None)
        cfg.pop("microphone", None)
    elif inputs == "hardware":
        cfg["camera"] = {"type": "picamera2"}
        cfg["microphone"] = {"type": "pyaudio"}
    camera = cfg.get("camera") or {}
    text = ("# Written by `make flash` (python -m fleet flash) for this device; a new flash replaces it.\n"
            "# Every key: /opt/aula/docs/device.example.yaml\n" + yaml.safe_dump(cfg, sort_keys=False))
    return text, isinstance(camera, dict) and camera.get("type") == "picamera2"


CREDENTIALS_DIR = f"/run/credentials/{UNIT_NAME}"


@dataclass(frozen=True)
class TlsLayout:
    """Where the device's TLS files go (paths on the device, without DEST_ROOT) and what device.yaml names."""

    ca: str
    cert: str
    key: str
    key_in_config: str
    key_for_service: bool  # owned by the service user; else root-only (systemd hands it over as a credential)


def tls_layout(unit_text: str, device: str, unit_name: str = UNIT_NAME) -> TlsLayout:
    """Follow the unit: a `LoadCredential=<name>:<path>.key` line means the key stays root-only at that path and
    the device reads systemd's copy in /run/credentials/; without one, the key is the service user's own file."""
    for line in unit_text.splitlines():
        key, _, value = line.strip().partition("=")
        name, _, path = value.strip().partition(":")
        if key == "LoadCredential" and path.startswith("/") and path.endswith(".key"):
            return TlsLayout("/etc/aula/certs/ca.crt", path[: -len(".key")] + ".crt", path,
                             f"/run/credentials/{unit_name}/{name}", False)
    return TlsLayout("/etc/aula/certs/ca.crt", f"/etc/aula/certs/{device}.crt", f"/etc/aula/certs/{device}.key",
                     f"/etc/aula/certs/{device}.key", True)


@dataclass(frozen=True)
class CertFile:
    remote: str  # path on the device without DEST_ROOT
    data: bytes
    mode: str
    for_service: bool  # owned by the service user


def device_certs(spec: DeviceSpec, opts: FlashOptions, layout: TlsLayout) -> list[CertFile]:
    """The CA and the device's own certificate and key from the certificates' folder (`make certs`)."""
    folder = Path(opts.certs)
    paths = {"ca": folder / "ca.crt", "cert": folder / "clients" / f"{spec.device}.crt",
             "key": folder / "clients" / f"{spec.device}.key"}
    for name, path in paths.items():
        if not path.is_file():
            hint = ("run `make certs INVENTORY=fleet.csv BROKER_HOSTS=...` first" if name == "ca" else
                    f"add {spec.device} to the inventory and run `make certs` again")
            raise ConfigError(f"{path} is missing: {hint} (CERTS={folder})")
    data = {name: path.read_bytes() for name, path in paths.items()}
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(data["cert"])
        ca = x509.load_pem_x509_certificate(data["ca"])
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [spec.device]:
            raise ConfigError(f"{paths['cert']} is issued to {names}, not {spec.device!r}")
        if cert.issuer != ca.subject:
            raise ConfigError(f"{paths['cert']} is not issued by {paths['ca']}; run `make certs` with CERTS={folder}")
    except ImportError:
        pass  # the fleet extra (cryptography) is missing: the broker checks the certificate anyway
    except ValueError as exc:
        raise ConfigError(f"{paths['cert']} or {paths['ca']} is not a PEM certificate: {exc}") from None
    return [CertFile(layout.ca, data["ca"], "0644", False), CertFile(layout.cert, data["cert"], "0644", False),
            CertFile(layout.key, data["key"], "0600", layout.key_for_service)]


def unit_programs(unit_text: str) -> list[str]:
    """The absolute programs and the working directory the unit names (they must exist after the install)."""
    found = []
    for line in unit_text.splitlines():
        key, _, value = line.strip().partition("=")
        if key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop") and value.strip():
            prog = value.strip().lstrip("-@+!:").split()[0]
            if prog.startswith("/"):
                found.append(prog)
        elif key == "WorkingDirectory" and value.strip().lstrip("-").startswith("/"):
            found.append(value.strip().lstrip("-"))
    return list(dict.fromkeys(found))


# --- the broker ------------------------------------------------------------------------------------------------

@dataclass
class Online:
    status: StatusMessage
    health: dict | None
    seconds: float


def watch_online(broker: str, certs: Path, account: str, topics: DeviceTopics, timeout: float,
                 since_ms: int | None = None, want_health: bool = True) -> Online:
    """Wait until the device's retained status is `online` (newer than since_ms, device clock), then for its first
    health message; subscribe with `account`'s certificate from the certificates' folder."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise FlashError("paho-mqtt is not installed here, so the broker cannot be watched: `make setup` "
                         "(EXTRAS with device or server)") from None
    address: BrokerAddress = parse_broker_url(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"aula-flash-{account}", protocol=mqtt.MQTTv5)
    if address.tls:
        ca, crt, key = (Path(certs) / "ca.crt", Path(certs) / "clients" / f"{account}.crt",
                        Path(certs) / "clients" / f"{account}.key")
        for path in (ca, crt, key):
            if not path.is_file():
                raise FlashError(f"{path} is missing: watching the broker needs the account {account}'s certificate "
                                 "(`make certs`), or pass WATCH_AS=<an account with read access>")
        client.tls_set(ca_certs=str(ca), certfile=str(crt), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
    cond = threading.Condition()
    state: dict = {"connected": None, "gone": None, "status": [], "health": []}

    def on_connect(c, u, flags, rc, props):
        with cond:
            state["connected"] = rc
            cond.notify_all()
        if not rc.is_failure:
            c.subscribe([(topics.status, 1), (topics.health, 0)])

    def on_disconnect(c, u, flags, rc, props):
        with cond:
            state["gone"] = rc
            cond.notify_all()

    def on_message(c, u, msg):
        with cond:
            state["status" if msg.topic == topics.status else "health"].append((time.monotonic(), msg.payload))
            cond.notify_all()

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    where = f"the broker {address.url}"
    t0 = time.monotonic()
    try:
        client.connect(address.host, address.port, keepalive=30)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerUnreachable(f"{where} presented a certificate that {certs}/ca.crt does not verify "
                                f"({exc.verify_message}); is BROKER the name in the broker's certificate "
                                "(make certs BROKER_HOSTS=...)?") from None
    except ssl.SSLError as exc:
        raise BrokerUnreachable(f"TLS with {where} failed ({exc.reason or exc}); is it the fleet's broker "
                                "(`make broker-setup`) and is BROKER's port the TLS listener?") from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise BrokerUnreachable(f"{where} is down or unreachable ({exc.strerror or type(exc).__name__}): is "
                                "Mosquitto running there (`systemctl status mosquitto`, `make broker-setup`) and "
                                "is the port open? The device is installed; flash again once the broker is up to "
                                "see it come online") from None
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach {where}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        deadline = t0 + timeout
        with cond:
            cond.wait_for(lambda: state["connected"] is not None or state["gone"] is not None, 15)
            rc = state["connected"]
            if rc is None or rc.is_failure:
                why = rc or state["gone"] or "no answer within 15 s"
                raise BrokerUnreachable(f"{where} refused the watcher account {account} ({why}): check that "
                                        "account is in the broker's ACL (`make broker-setup`) and not revoked")
            online_at = None
            while True:
                if state["gone"] is not None:
                    raise BrokerUnreachable(f"{where} closed the watcher's connection ({state['gone']}). The broker "
                                            "keeps one connection per account: if a running server uses "
                                            f"{account}, watch with an account of its own (WATCH_AS=<name>)")
                statuses = _parsed(StatusMessage, state["status"])
                if online_at is None:
                    fresh = [s for s in statuses if since_ms is None or s.ts_ms >= since_ms]
                    if fresh and fresh[-1].state.value == "online":
                        online_at = time.monotonic()
                        status = fresh[-1]
                if online_at is not None:
                    healths = [json.loads(p) for p, h in zip([p for _, p in state["health"]],
                                                              _parsed(HealthMessage, state["health"], keep=True),
                                                              strict=True)
                               if h is not None and (since_ms is None or h.ts_ms >= since_ms)]
                    if healths or not want_health:
                        return Online(status, healths[0] if healths else None, time.monotonic() - t0)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                cond.wait(min(left, 0.5))
            if online_at is not None:
                return Online(status, None, time.monotonic() - t0)
            last = statuses[-1] if statuses else None
            if last is None:
                seen = "no status message at all"
            elif since_ms is not None and last.ts_ms < since_ms:
                seen = f"only an older status ({last.state.value}) from before the restart"
            else:
                seen = f"its status is {last.state.value}" + (f": {last.reason}" if last.reason else "")
            raise NotOnline(f"{topics.status} did not turn online within {timeout:.0f} s; {seen}")
    finally:
        client.disconnect()
        client.loop_stop()


def _parsed(kind, received: list, keep: bool = False) -> list:
    """Messages of the contract's type; one that does not parse is left out (None in its place with keep)."""
    out = []
    for _, payload in received:
        try:
            out.append(kind.from_payload(payload))
        except (ValueError, KeyError, TypeError):
            if keep:
                out.append(None)
    return out


def watcher_account(opts: FlashOptions, say: Say) -> str:
    if opts.watch_as:
        return opts.watch_as
    if (Path(opts.certs) / "clients" / "aula-flash.crt").is_file():
        return "aula-flash"
    say("note: watching as aula-server. The broker makes a certificate's name its client id, so while flash watches, "
        "a running server with that account is disconnected and reconnects; make an account for flash "
        "(run make certs and make broker-setup again: they make the read-only monitor account aula-flash)")
    return "aula-server"


# --- a release on a host (shared by flash and server-install) ---------------------------------------------------

def wheelhouse_for(release: Release, target: Target, opts: FlashOptions, say: Say) -> Wheelhouse:
    """The release's wheels for the target's platform, from the cache or made now (once per platform at a time)."""
    t = time.monotonic()
    with _wheelhouse_lock(release.wheelhouse_key(target)):
        wh = prepare_wheelhouse(release, target, opts.wheelhouse_cache, say)
    say(f"wheelhouse {wh.path}: {wh.files} files, {wh.bytes / MIB:.0f} MiB, "
        + ("cached, nothing downloaded" if wh.cached else f"made in {time.monotonic() - t:.1f} s")
        + (f"; built on the device from source: {', '.join(wh.source_builds)} (needs gcc, python3-dev "
           "and portaudio19-dev there)" if wh.source_builds else ""))
    return wh


def check_space(raw: dict, host: str, release_bytes: int, wh: Wheelhouse | None, reserve_mib: int,
                machine: str = "device") -> None:
    """Stop before copying anything when the host has too little space for the release, wheelhouse and venv."""
    parts = [("release", release_bytes)] if release_bytes else []
    if wh is not None:
        parts += [("wheelhouse", wh.bytes), ("venv about", int(wh.bytes * VENV_PER_WHEEL_BYTE))]
    need = sum(b for _, b in parts) + reserve_mib * MIB
    if raw["free_bytes"] < need:
        detail = ", ".join(f"{what} {b / MIB:,.0f} MiB" for what, b in parts)
        raise FlashError(
            f"not enough space on {host}: {raw['free_bytes'] / MIB:,.0f} MiB free under "
            f"{raw['free_at']}, this install needs about {need / MIB:,.0f} MiB ({detail or 'nothing to copy'}, "
            f"plus {reserve_mib} MiB kept free). Free space on the {machine} (`df -h`; old releases are under "
            "/opt/aula/releases; `sudo apt clean`; `sudo journalctl --vacuum-size=50M`)"
            + (" or use a larger card" if machine == "device" else "") + ". Nothing was copied")


# Run by the venv's python with the folder as argv[1]: a .pth file in site-packages puts it on sys.path.
_WRITE_PTH = ("import sys, sysconfig; p = sysconfig.get_path('purelib') + '/aula-release.pth'; "
              "open(p, 'w').write(sys.argv[1] + '\\n')")


def make_venv(remote: Remote, A: str, key: str, wh: Wheelhouse, python: str, release: Release, say: Say,
              system_site_packages: bool = False, path_entry: str = "", machine: str = "device") -> None:
    """<A>/venvs/<key> made on the host from the wheelhouse (copied there first); path_entry: a folder the venv
    puts on sys.path (a .pth file), for a service whose working directory is not the code's."""
    incoming = f"{A}/.incoming/wheelhouse-{wh.key}"
    remote.run('mkdir -p "$1"', incoming)
    took = remote.rsync(["-rt", "--partial", "--delete", "--chmod=ugo=rX,u+w", f"{wh.path}/",
                         f"{remote.target.rsync_host}:{incoming}/"], "the wheelhouse")
    say(f"wheelhouse copied to the {machine} in {took:.1f} s")
    t = time.monotonic()
    remote.run(
        'set -eu; V="$1/venvs/$2"; W="$3"; rm -rf "$V"; mkdir -p "$1/venvs"; '
        'if [ "$5" = yes ]; then "$4" -m venv --system-site-packages "$V"; else "$4" -m venv "$V"; fi; '
        '"$V/bin/python" -m pip install --disable-pip-version-check --no-index --find-links "$W" '
        '--ignore-installed --no-warn-script-location -q -r "$W/requirements.txt"; '
        'if [ -n "$6" ]; then "$V/bin/python" -c "$7" "$6"; fi; '
        '"$V/bin/python" -m pip freeze --all > "$V/.aula-freeze.txt" 2>/dev/null || true; '
        'chmod -R go+rX "$V"; touch "$V/.aula-venv-complete"; rm -rf "$W"',
        A, key, incoming, python, "yes" if system_site_packages else "no", path_entry, _WRITE_PTH,
        what="making the venv",
        timeout=3600)
    say(f"venv {A}/venvs/{key}: made on the {machine} from the wheelhouse in {time.monotonic() - t:.1f} s "
        f"({len(release.requirements)} requirements"
        + (", sees the system's python3-picamera2" if system_site_packages else "") + ")")


def copy_release(remote: Remote, A: str, release: Release, version: str, venv_key: str, link_from: str | None,
                 say: Say) -> None:
    """rsync the release's files to <A>/releases/.partial-<version>, then rename it into place (never half there)."""
    partial = f"{A}/releases/.partial-{version}"
    remote.run('mkdir -p "$1"', partial)
    with tempfile.NamedTemporaryFile("w", prefix="aula-files-", suffix=".txt") as listing:
        listing.write(release.file_list())
        listing.flush()
        args = ["-rlt", "--chmod=ugo=rX,u+w", f"--files-from={listing.name}"]
        if link_from:
            args.append(f"--link-dest={A}/releases/{link_from}")
        took = remote.rsync([*args, f"{release.source}/", f"{remote.target.rsync_host}:{partial}/"],
                            f"release {version}")
    remote.run('set -eu; A="$1"; V="$2"; P="$A/releases/.partial-$V"; ln -sfn "../../venvs/$3" "$P/.venv"; '
               'cat > "$P/.aula-release.json"; printf "%s\\n" "$V" > "$P/RELEASE"; shift 3; '
               'for pkg in "$@"; do "$P/.venv/bin/python" -m compileall -q "$P/$pkg" >/dev/null; done; '
               'rm -rf "$A/releases/$V"; mv -T "$P" "$A/releases/$V"',
               A, version, venv_key, *release.role.packages, input=release.manifest(venv_key),
               what=f"installing release {version}")
    say(f"release copied to {A}/releases/{version} in {took:.1f} s"
        + (f" (unchanged files linked from {link_from})" if link_from else ""))


def switch_current(remote: Remote, A: str, version: str, venv_key: str | None, links: tuple[str, ...]) -> None:
    """`current` and the unit's paths: each a new link renamed over the old one (atomic). With venv_key, the
    release's .venv is pointed at that venv first (a release already on the device may predate it)."""
    remote.run('set -eu; A="$1"; V="$A/releases/$2"; if [ -n "$3" ] && '
               '[ "$(readlink "$V/.venv")" != "../../venvs/$3" ]; then '
               'ln -sfn "../../venvs/$3" "$V/.venv.aula-new"; mv -T "$V/.venv.aula-new" "$V/.venv"; fi; '
               'ln -sfn "releases/$2" "$A/current.aula-new"; '
               'mv -T "$A/current.aula-new" "$A/current"; shift 3; for n in "$@"; do '
               'if [ "$(readlink "$A/$n" 2>/dev/null)" != "current/$n" ]; then '
               'ln -sfn "current/$n" "$A/$n.aula-new"; mv -T "$A/$n.aula-new" "$A/$n"; fi; done',
               A, version, venv_key or "", *links, what="switching current")


def remove_old_releases(remote: Remote, A: str, version: str, previous: str | None, keep_releases: int,
                        say: Say) -> None:
    """Keep the newest `keep_releases`, the current and the previous release; remove venvs no release uses."""
    listing = remote.run('cd "$1/releases" 2>/dev/null && for f in */.aula-release.json; do '
                         '[ -f "$f" ] && echo "$(stat -c %Y "$f") ${f%/.aula-release.json}"; done; true', A)
    names = [ln.split(" ", 1)[1] for ln in sorted(listing.splitlines(), reverse=True) if " " in ln]
    keep = {version, *([previous] if previous else []), *names[: max(keep_releases, 1)]}
    drop = [n for n in names if n not in keep]
    remote.run(
        'set -eu; A="$1"; shift; cd "$A/releases"; rm -rf .partial-*; for d in "$@"; do rm -rf "./$d"; done; '
        'used=$(for d in */; do if [ -L "$d.venv" ]; then basename "$(readlink "$d.venv")"; fi; done); '
        'if [ -d "$A/venvs" ]; then cd "$A/venvs"; for v in */; do v=${v%/}; [ -d "$v" ] || continue; '
        'echo "$used" | grep -qx "$v" || rm -rf "./$v"; done; fi; rm -rf "$A/.incoming"',
        A, *drop, what="removing old releases")
    if drop:
        say(f"removed old releases: {', '.join(drop)} (kept {len(keep)})")


# --- one device ------------------------------------------------------------------------------------------------

class _Flash:
    """The steps for one device; `say` prints for the technician."""

    def __init__(self, spec: DeviceSpec, release: Release, opts: FlashOptions, say: Say):
        self.spec, self.release, self.opts, self.say = spec, release, opts, say
        self.R = opts.root_for(spec.device)
        self.A = f"{self.R}/opt/aula"
        self.started = False  # whether this flash (re)started the unit

    def p(self, path: str) -> str:
        return self.R + path

    def run(self) -> FlashResult:
        t0 = time.monotonic()
        spec, opts, say, release = self.spec, self.opts, self.say, self.release
        say(f"flash {spec.device} ({spec.site}/{spec.room}) to {spec.host}"
            + (f", DEST_ROOT {self.R}" if self.R else ""))
        unit_text = release.unit_text()
        layout = tls_layout(unit_text, spec.device)
        config_text, picamera = render_config(spec, opts, layout)
        self.broker = parse_broker_url_from(config_text)
        certs = device_certs(spec, opts, layout) if parse_broker_url(self.broker).tls else []
        self.remote = Remote(spec.host, opts)  # after the checks here, which need no connection
        try:
            self.remote.connect()
            state = probe(self.remote, self.R, layout)
            return self._flash(state, config_text, picamera, certs, unit_text, t0)
        finally:
            self.remote.close()

    def _flash(self, state: DeviceState, config_text: str, picamera: bool, certs: list[CertFile], unit_text: str,
               t0: float) -> FlashResult:
        spec, opts, say, release, remote = self.spec, self.opts, self.say, self.release, self.remote
        raw, target = state.raw, state.target
        systemd = raw["systemd"] and not self.R
        say(f"device: {target.machine}, Python {target.python} ({raw['python']}), glibc {target.libc or '?'}, "
            f"systemd {'running' if raw['systemd'] else 'not running'}; "
            f"{raw['free_bytes'] / MIB:,.0f} MiB free under {raw['free_at']}")
        if not raw["rsync"]:
            raise FlashError(f"rsync is not installed on {spec.host.host}: `sudo apt install rsync` on the device")
        needed = release.requires_python
        if needed and tuple(int(x) for x in target.python_xy.split(".")) < needed:
            raise FlashError(f"the device's python3 is {target.python}; Aula needs Python >= "
                             f"{'.'.join(map(str, needed))} (Raspberry Pi OS or Debian 12 Bookworm or newer)")
        for name in COMPAT_LINKS:
            if raw["links"].get(name) == "other":
                raise FlashError(f"{self.A}/{name} is a folder or file from a manual install (docs/deployment.md); "
                                 f"move it aside on the device (`sudo mv /opt/aula /opt/aula.manual`) and flash again")
        if raw["links"].get("current") == "other":
            raise FlashError(f"{self.A}/current is not a link: move it aside on the device and flash again")

        if raw["user"] is None and not self.R:
            self._make_user()
            raw["user"] = self._user_ids()
        installed_as = state.release_with(release.content_hash)
        version = installed_as or release.version
        venv_key = release.venv_key(target, picamera)
        need_venv = venv_key not in raw["venvs"]
        if need_venv and not raw["venv_module"]:
            raise FlashError(f"python3-venv is not installed on {spec.host.host}: `sudo apt install python3-venv` on "
                             "the device (flash makes the device's venv with it)")
        need_release = installed_as is None
        previous = state.current
        release_changed = previous != version
        config_changed = (state.file("config") or {}).get("sha256") != _sha(config_text.encode())
        service_uid = (raw["user"] or {}).get("uid")
        certs_changed = [c for c in certs if not _same_file(state.file(_cert_slot(c)), c.data, c.mode,
                                                             service_uid if c.for_service else 0)]
        unit_changed = (state.file("unit") or {}).get("sha256") != _sha(unit_text.encode())
        links_ok = all(raw["links"].get(n) == f"link:current/{n}" for n in COMPAT_LINKS)
        say(f"release {version}: {len(release.files)} files, {release.total_bytes / MIB:.1f} MiB; "
            + ("already on the device" if installed_as else "new")
            + ("" if previous is None else ("; current" if not release_changed else f"; current is {previous}")))

        stopped = systemd and raw["active"] != "active"
        if stopped:
            say(f"aula-device is {raw['active'] or 'unknown'}: it is checked and started again")
        if not (release_changed or config_changed or certs_changed or unit_changed or not raw["enabled"]
                or not links_ok or need_venv or stopped):
            say(f"unchanged: release {version} is current; config, certificates and unit are as they should be; "
                "nothing to do")
            if systemd:
                online = self._watch(since_ms=None, want_health=False, timeout=min(opts.online_timeout, 30))
                if online is not None:
                    say(f"status on the broker: {online.status.state.value}")
            return FlashResult(spec.device, str(spec.host), True, "unchanged", f"{version} (nothing changed)",
                               time.monotonic() - t0)

        wheelhouse = self._wheelhouse(target, need_venv)
        self._check_space(raw, need_release, wheelhouse)
        if need_venv:
            self._venv(venv_key, wheelhouse, raw["python"], picamera)
        else:
            say(f"venv {self.A}/venvs/{venv_key}: present, reused")
        if need_release:
            self._copy_release(version, venv_key, previous if previous in raw["releases"] else None)
        owner = "aula:aula" if raw["user"] else ""
        if certs_changed:
            for c in certs:
                remote.put(self.p(c.remote), c.data, c.mode, owner if c.for_service else "")
            names = ", ".join(Path(c.remote).name for c in certs_changed)
            key = next(c for c in certs if c.remote.endswith(".key"))
            who = ("root (systemd hands the unit a copy: LoadCredential)" if not key.for_service
                   else "aula" if owner else "root: no user aula on the device")
            say(f"certificates: {names} -> {self.p(str(Path(key.remote).parent))}/ (key mode 0600, owner {who})")
        elif certs:
            say("certificates: unchanged")
        else:
            say("certificates: none (plain mqtt://; the fleet's broker takes TLS with client certificates only)")
        config = self.p("/etc/aula/device.yaml")
        if config_changed:
            remote.put(config + ".aula-new", config_text.encode(), "0644")
        if config_changed or release_changed or stopped:
            checked = config + (".aula-new" if config_changed else "")
            done = remote.run('cd "$1" && ./.venv/bin/python -m device validate-config "$2"',
                              f"{self.A}/releases/{version}", checked, check=False)
            if done.returncode != 0:
                remote.run('rm -f "$1"', config + ".aula-new")
                raise FlashError(f"the config for {spec.device} does not validate on the device with release {version}"
                                 f" (nothing was switched):\n  {_last_lines(done.stderr or done.stdout, 8, '  ')}\n"
                                 "fix the base config (BASE_CONFIG) or the arguments and flash again")
            say(f"config {config}: {'written, ' if config_changed else ''}validates on the device")
        else:
            say(f"config {config}: unchanged")

        # Releases with `device switch-release` switch themselves: the device checks the sha256 sums, switches,
        # runs its self-check and goes back on its own if that fails, whatever happens to this ssh session.
        on_device = "switch-release" in (release.source / "device" / "__main__.py").read_text(encoding="utf-8")
        if not on_device and (need_release or release_changed):
            self._verify_before_switch(version, previous)

        # From here on the device changes: remember how to go back.
        undo = _Undo(previous=previous if release_changed else None, config=config_changed and raw["files"]["config"]
                     is not None, unit=unit_changed and raw["files"]["unit"] is not None)
        was_active = raw["active"] == "active"
        if systemd and was_active:
            remote.run("systemctl stop aula-device.service", what="systemctl stop aula-device")
            say("stopped aula-device for the switch and the self-check")
        if on_device:
            self._switch_on_device(version, venv_key, previous, config_changed, systemd and was_active)
        else:
            if undo.config:
                remote.run('cp -p "$1" "$1.previous"', config)
            if config_changed:
                remote.run('mv -f "$1.aula-new" "$1"', config)
            self._switch(version, venv_key)
            say(f"current -> releases/{version}" + (f" (was {previous})" if release_changed and previous else
                                                    " (first release)" if previous is None else " (unchanged)"))
        try:
            if not on_device:
                self._self_check(version)
            self._unit(unit_text, unit_changed, undo, systemd, raw)
            online = self._start(systemd, raw)
        except BrokerUnreachable:
            raise  # the release is not to blame: it stays, and the message says what to fix
        except Exception as exc:
            reason = str(exc) if isinstance(exc, AulaError) else f"unexpected {type(exc).__name__}: {exc}"
            self._rollback(undo, reason, version, systemd, was_active)
            raise  # unreachable: _rollback raises
        self._cleanup(version, previous)
        detail = f"{version} installed" + (f", online in {online.seconds:.1f} s" if online else "")
        say(f"done in {time.monotonic() - t0:.1f} s: {detail}")
        return FlashResult(spec.device, str(spec.host), True, "installed", detail, time.monotonic() - t0)

    # steps

    def _wheelhouse(self, target: Target, need: bool) -> Wheelhouse | None:
        return wheelhouse_for(self.release, target, self.opts, self.say) if need else None

    def _check_space(self, raw: dict, need_release: bool, wh: Wheelhouse | None) -> None:
        check_space(raw, self.spec.host.host, self.release.total_bytes if need_release else 0, wh,
                    self.opts.reserve_mib)

    def _make_user(self) -> None:
        self.remote.run('set -e; useradd --system --no-create-home --home-dir /nonexistent '
                        '--shell /usr/sbin/nologin aula; for g in video audio; do '
                        'if getent group "$g" >/dev/null; then usermod -aG "$g" aula; fi; done',
                        what="creating the service user aula")
        self.say("created the service user aula (groups video, audio where they exist)")

    def _user_ids(self) -> dict | None:
        out = self.remote.run('id -u aula && id -g aula', check=False)
        if out.returncode != 0:
            return None
        uid, gid = out.stdout.split()
        return {"uid": int(uid), "gid": int(gid)}

    def _venv(self, key: str, wh: Wheelhouse, python: str, picamera: bool) -> None:
        make_venv(self.remote, self.A, key, wh, python, self.release, self.say, system_site_packages=picamera)

    def _copy_release(self, version: str, venv_key: str, link_from: str | None) -> None:
        copy_release(self.remote, self.A, self.release, version, venv_key, link_from, self.say)

    def _switch(self, version: str, venv_key: str | None = None) -> None:
        switch_current(self.remote, self.A, version, venv_key, COMPAT_LINKS)

    def _verify_before_switch(self, version: str, previous: str | None) -> None:
        """A release without `device switch-release`: its models are checked from here, before the switch."""
        done = self.remote.run('cd "$1" && ./.venv/bin/python -m device verify-models',
                               f"{self.A}/releases/{version}", check=False, timeout=600)
        lines = (done.stdout or "").strip().splitlines()
        if done.returncode != 0:
            bad = [ln.strip() for ln in lines if ln.startswith("FAIL") or ln.startswith("      ")]
            raise FlashError(f"release {version} does not match its manifest on the device (nothing was "
                             f"switched; current stays {previous or 'unset'}):\n  "
                             + "\n  ".join(bad + lines[-1:] or [_last_lines(done.stderr, 5)]))
        self.say(f"sha256 on the device before the switch: {lines[-1].split(': ', 1)[-1] if lines else 'ok'}")

    def _switch_on_device(self, version: str, venv_key: str, previous: str | None, config_changed: bool,
                          restart: bool) -> None:
        """`device switch-release` on the device; raise FlashError with its reason when it refused or went back."""
        config = self.p("/etc/aula/device.yaml")
        args = [self.A, version, "--venv", venv_key, "--config", config,
                *(a for n in COMPAT_LINKS for a in ("--link", n)),
                *(["--new-config", config + ".aula-new"] if config_changed else []),
                *(["--restart-unit", UNIT_NAME] if restart else [])]
        done = self.remote.run('cd "$1/releases/$2" && exec "$1/venvs/$4/bin/python" -m device switch-release "$@"',
                               *args, check=False, timeout=1200, what="switch-release")
        lines = (done.stdout or "").strip().splitlines()
        result = next((json.loads(ln[len("result: "):]) for ln in reversed(lines) if ln.startswith("result: ")), None)
        if result is None:
            raise FlashError(f"switch-release on the device gave no result (exit {done.returncode}); see "
                             f"{self.A}/switch.log there:\n  {_last_lines(done.stderr or done.stdout, 8, '  ')}")
        repeated = ("rolled back on the device", "FAIL  ")  # the error below says these
        for line in lines[:-1]:
            if not line.startswith(repeated):
                self.say(line)
        if result["result"] == "switched":
            return
        if result["result"] == "refused":
            bad = [ln.strip() for ln in lines if ln.startswith("FAIL")]
            raise FlashError(f"{result['reason']}:\n  " + "\n  ".join(bad or [result["reason"]]))
        if result["result"] == "rolled-back":
            raise FlashError(f"{result['reason']}\nrolled back on the device: {'; '.join(result['undone'])}"
                             f". Release {version} stays in {self.A}/releases/ for a look (and {self.A}/switch.log);"
                             " fix the cause and flash again")
        raise FlashError(f"{result['reason']}\n{self.A}/switch.log on the device has each step")

    def _self_check(self, version: str) -> None:
        config = self.p("/etc/aula/device.yaml")
        done = self.remote.run('cd "$1/current" && ./.venv/bin/python -m device verify-models', self.A, check=False,
                               timeout=600)
        lines = (done.stdout or "").strip().splitlines()
        if done.returncode != 0:
            bad = [ln.strip() for ln in lines if ln.startswith("FAIL") or ln.startswith("      ")]
            raise FlashError(f"self-check failed: verify-models on the device (exit {done.returncode}):\n  "
                             + "\n  ".join(bad + lines[-1:] or [_last_lines(done.stderr, 5)]))
        self.say(f"verify-models: {lines[-1].split(': ', 1)[-1] if lines else 'ok'}")
        # The broker is checked end to end instead, by the unit itself coming online: here, outside the unit, the
        # key may be a systemd credential that only the unit can read, and a broker that is down is no fault of
        # the release.
        no_broker = "--no-broker" in (self.release.source / "device" / "__main__.py").read_text(encoding="utf-8")
        done = self.remote.run('cd "$1/current" && ./.venv/bin/python -m device selftest --config "$2" --camera config'
                               ' $3', self.A, config, "--no-broker" if no_broker else "", check=False, timeout=600)
        table = (done.stdout or "").strip().splitlines()
        if done.returncode != 0:
            failed = [ln for ln in table if "  FAIL  " in ln]
            raise FlashError(f"self-check failed: selftest on the device (exit {done.returncode}):\n  "
                             + "\n  ".join(failed + table[-1:] or [_last_lines(done.stderr, 8, '  ')]))
        self.say("selftest:")
        for line in table:
            self.say(f"  {line}")

    def _unit(self, unit_text: str, changed: bool, undo: _Undo, systemd: bool, raw: dict) -> None:
        path = self.p(f"/etc/systemd/system/{UNIT_NAME}")
        if changed:
            if undo.unit:
                self.remote.run('cp -p "$1" "$1.previous"', path)
            self.remote.put(path, unit_text.encode(), "0644")
        missing = self.remote.run('for p in "$@"; do [ -e "$p" ] || echo "$p"; done',
                                  *(self.p(p) for p in unit_programs(unit_text))).split()
        if missing:
            raise FlashError(f"{UNIT_NAME} names {', '.join(missing)}, which the release does not provide on the "
                             "device; the unit and fleet/flash.py disagree on the layout under /opt/aula")
        if not raw["systemctl"]:
            raise FlashError(f"systemctl is not on {self.spec.host.host}: the unit cannot be enabled")
        if self.R:
            self.remote.run('systemctl --root="$1" enable "$2" 2>&1', self.R, UNIT_NAME, what="systemctl --root enable")
            how = f"enabled with systemctl --root={self.R}"
        elif systemd:
            self.remote.run('systemctl daemon-reload && systemctl enable "$1" 2>&1', UNIT_NAME, what="systemctl enable")
            how = "enabled"
        else:
            self.remote.run('systemctl --root=/ enable "$1" 2>&1', UNIT_NAME, what="systemctl enable")
            how = "enabled (offline: systemd is not running)"
        self.say(f"unit {path}: {'installed' if changed else 'unchanged'}, {how}")

    def _start(self, systemd: bool, raw: dict) -> Online | None:
        if self.R:
            self.say(f"not started: DEST_ROOT is {self.R}, not the device's /")
            return None
        if not systemd:
            self.say("not started: systemd is not running on the device (no /run/systemd/system); "
                     "it starts at the next boot")
            return None
        clock = self.remote.run('date +%s%3N', check=False).stdout.strip()
        since = int(clock) if clock.isdigit() else None  # the device's clock, as its status messages carry it
        self.remote.run('systemctl restart "$1"', UNIT_NAME, what="systemctl restart aula-device")
        self.started = True
        self.say(f"started aula-device; waiting up to {self.opts.online_timeout:.0f} s for {self.spec.topics.status} "
                 "to say online")
        try:
            online = self._watch(since, True, self.opts.online_timeout)
        except NotOnline as exc:
            journal = self.remote.run('journalctl -u "$1" -n 15 --no-pager -o cat 2>&1', UNIT_NAME, check=False)
            raise NotOnline(f"{exc}\n  journalctl -u aula-device (last lines):\n    "
                            + _last_lines(journal.stdout, 15, "    ")) from None
        if online is None:
            return None
        self.say(f"online after {online.seconds:.1f} s (status at {online.status.ts_ms} ms)")
        if online.health is not None:
            self.say(f"first health: {json.dumps(online.health, separators=(',', ':'))}")
        else:
            self.say(f"no health message within {self.opts.online_timeout:.0f} s (mqtt.health_interval_s, 30 s "
                     "by default)")
        return online

    def _watch(self, since_ms: int | None, want_health: bool, timeout: float) -> Online | None:
        account = watcher_account(self.opts, self.say)
        return watch_online(self.broker, self.opts.certs, account, self.spec.topics, timeout, since_ms, want_health)

    def _rollback(self, undo: _Undo, reason: str, version: str, systemd: bool, was_active: bool) -> None:
        config = self.p("/etc/aula/device.yaml")
        unit = self.p(f"/etc/systemd/system/{UNIT_NAME}")
        done = []
        if undo.previous:
            self._switch(undo.previous)
            done.append(f"current -> releases/{undo.previous}")
        if undo.config:
            self.remote.run('mv -f "$1.previous" "$1"', config)
            done.append("previous device.yaml restored")
        if undo.unit:
            self.remote.run('if [ -f "$1.previous" ]; then mv -f "$1.previous" "$1"; fi', unit)
            done.append("previous unit restored")
        undone = bool(undo.previous or undo.config or undo.unit)
        if systemd and undone and (was_active or self.started):
            self.remote.run('systemctl daemon-reload; systemctl restart "$1"', UNIT_NAME, check=False)
            done.append("aula-device restarted on it")
        if undone:
            raise FlashError(f"{reason}\nrolled back: {'; '.join(done)}. Release {version} stays in "
                             f"{self.A}/releases/ for a look; fix the cause and flash again")
        left = ("it runs as installed: see `journalctl -u aula-device` on the device" if self.started
                else "the unit was not started")
        raise FlashError(f"{reason}\nno previous release to go back to: {version} is installed and {left}; "
                         "fix the cause and flash again")

    def _cleanup(self, version: str, previous: str | None) -> None:
        remove_old_releases(self.remote, self.A, version, previous, self.opts.keep_releases, self.say)


@dataclass
class _Undo:
    previous: str | None
    config: bool
    unit: bool


def _cert_slot(c: CertFile) -> str:
    name = Path(c.remote).name
    return "ca" if name == "ca.crt" else "key" if name.endswith(".key") else "cert"


def _same_file(meta: dict | None, data: bytes, mode: str, uid: int | None) -> bool:
    return (meta is not None and meta["sha256"] == _sha(data) and meta["mode"] == mode
            and (uid is None or meta["uid"] == uid))


def parse_broker_url_from(config_text: str) -> str:
    return str((yaml.safe_load(config_text).get("mqtt") or {})["broker"])


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _wheelhouse_lock(key: str) -> threading.Lock:
    """One wheelhouse build per dependency set and platform, whichever device thread gets there first."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def flash_device(spec: DeviceSpec, release: Release, opts: FlashOptions, say: Say = print) -> FlashResult:
    """Flash one device; raise FlashError (or ConfigError) with what to fix."""
    return _Flash(spec, release, opts, say).run()


# --- the inventory and a fleet ---------------------------------------------------------------------------------

def spec_from_args(site: str | None, room: str | None, device: str | None, host: str | None,
                   inventory: Path | None) -> DeviceSpec:
    """One device from SITE, ROOM, DEVICE and HOST, or its row in the inventory (HOST overrides the row's)."""
    if inventory is not None:
        if not device:
            raise ConfigError("DEVICE is empty: which device of the inventory to flash")
        rows = {r.device: r for r in read_inventory(inventory)}
        row = rows.get(device)
        if row is None:
            raise ConfigError(f"{inventory} has no device {device!r} (it has: {', '.join(rows) or 'none'})")
        return spec_from_row(row, inventory, host)
    missing = [n for n, v in (("HOST", host), ("SITE", site), ("ROOM", room), ("DEVICE", device)) if not v]
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty: make flash "
                          "HOST=user@host SITE=.. ROOM=.. DEVICE=.. (or INVENTORY=fleet.csv DEVICE=..)")
    where = "the command line"
    return DeviceSpec(check_id(site, "SITE", where), check_id(room, "ROOM", where), check_id(device, "DEVICE", where),
                      SshTarget.parse(host), where)


def spec_from_row(row: DeviceRow, inventory: Path, host: str | None = None) -> DeviceSpec:
    where = f"{inventory}:{row.line}"
    text = host or row.host
    if not text:
        raise ConfigError(f"{where}: device {row.device!r} has no host: fill in the host column (user@address or "
                          "ssh://user@address:port)")
    try:
        target = SshTarget.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return DeviceSpec(row.site, row.room, row.device, target, where)


def flash_fleet(inventory: Path, release: Release, opts: FlashOptions, jobs: int = 4,
                out: Say = print, rows: list[DeviceRow] | None = None) -> list[FlashResult]:
    """Flash every device of the inventory (or `rows` of it), `jobs` at a time; one failure does not stop the
    others."""
    rows = read_inventory(inventory) if rows is None else rows
    lock = threading.Lock()
    width = max(len(r.device) for r in rows)

    def one(row: DeviceRow) -> FlashResult:
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            with lock:
                for part in line.splitlines():
                    out(f"[{row.device.ljust(width)}] {part}")

        t = time.monotonic()
        host = row.host or "-"
        try:
            spec = spec_from_row(row, inventory)
            result = flash_device(spec, release, opts, say)
        except AulaError as exc:
            say(f"FAILED: {exc}")
            return FlashResult(row.device, host, False, "failed", str(exc), time.monotonic() - t, lines)
        except Exception as exc:  # a bug must not stop the other devices; it is reported in the table
            say(f"FAILED: unexpected {type(exc).__name__}: {exc}")
            return FlashResult(row.device, host, False, "failed", f"unexpected {type(exc).__name__}: {exc}",
                               time.monotonic() - t, lines)
        result.lines, result.host = lines, host  # as the inventory writes it, like the failures' rows
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="flash") as pool:
        return list(pool.map(one, rows))


def summary_table(results: list[FlashResult]) -> list[str]:
    """Which devices succeeded, and why the others failed (first line of the reason)."""
    head = ("device", "host", "result", "time", "detail")
    rows = [(r.device, r.host, "ok" if r.ok and r.state == "installed" else r.state if r.ok else "FAILED",
             f"{r.seconds:.0f} s", r.detail.strip().splitlines()[0] if r.detail.strip() else "") for r in results]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
             for row in [head, *rows]]
    ok = sum(r.ok for r in results)
    lines.append(f"{len(results)} device(s): {sum(r.ok and r.state == 'installed' for r in results)} installed, "
                 f"{sum(r.ok and r.state == 'unchanged' for r in results)} unchanged, {len(results) - ok} failed")
    return lines
