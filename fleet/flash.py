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
The ssh connection is in fleet/ssh_remote.py, the steps shared with server-install (the host's probe, the venv,
the release's copy, the switch and the clean-up) in fleet/host_release.py, the watch on the broker in
fleet/online_watch.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from device.common.broker_settings import parse_broker_url
from device.common.errors import AulaError, ConfigError
from device.contract import DeviceTopics
from fleet.errors import BrokerUnreachable, FlashError, NotOnline
from fleet.host_release import (
    MIB,
    check_space,
    copy_release,
    make_venv,
    probe_host,
    remove_old_releases,
    switch_current,
    wheelhouse_for,
)
from fleet.inventory import DeviceRow, check_id, read_inventory
from fleet.online_watch import Online, watch_online, watcher_account
from fleet.release import DEFAULT_WHEELHOUSE_CACHE, Release, Target, Wheelhouse
from fleet.ssh_remote import Remote, SshTarget, _last_lines

UNIT_NAME = "aula-device.service"
# The links that make systemd/aula-device.service's paths (/opt/aula/.venv/bin/python, WorkingDirectory=/opt/aula
# and `-m device`) follow `current`.
COMPAT_LINKS = (".venv", "device", "models_tflite", "docs")
Say = Callable[[str], None]


# --- what to flash where ------------------------------------------------------------------------------------

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


# --- what is on the device ----------------------------------------------------------------------------------

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
            self._switch_on_device(version, venv_key, config_changed, systemd and was_active)
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

    def _switch_on_device(self, version: str, venv_key: str, config_changed: bool, restart: bool) -> None:
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
