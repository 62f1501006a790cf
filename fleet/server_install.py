"""Install the Aula aggregation server on a host over ssh: a versioned release, its venv, server.yaml, the TLS
files, the service user, the state directory and the hardened unit; then start it and wait for /healthz.

On the host (every path below is under DEST_ROOT, `/` on a real server):

    /opt/aula/releases/<version>/        server/, device/{contract,common}, systemd/, docs/, RELEASE, .aula-release.json
    /opt/aula/venvs/<key>/               the `server` extra, made on the host from a wheelhouse prepared here; its
                                         aula-release.pth puts /opt/aula/current on sys.path (the unit runs
                                         `python -m server` from the state directory, not from the code)
    /opt/aula/current                    -> releases/<version>
    /opt/aula/{.venv,server,docs}        -> current/...  (the paths systemd/aula-server.service names)
    /etc/aula/server.yaml                CONFIG, or a minimal one for BROKER; validated on the host by the release
    /etc/aula/certs/{ca.crt,server.crt,server.key}   mqtts:// only; the key 0600 root:root (LoadCredential=)
    /var/lib/aula-server                 the state directory (StateDirectory=), 0750, the user aula-server's
    /etc/systemd/system/aula-server.service, enabled, and started where systemd runs

The release, venv, switch and clean-up steps are flash's (fleet/host_release.py); a server and a device cannot share one
/opt/aula. A second run with the same release and config changes nothing and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from device.common.broker_settings import parse_broker_url
from device.common.errors import ConfigError
from fleet.errors import FlashError
from fleet.flash import CertFile, FlashOptions, Say, TlsLayout, _sha, tls_layout, unit_programs
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
from fleet.release import SERVER, Release, Target
from fleet.ssh_remote import Remote, SshTarget, _last_lines

UNIT_NAME = "aula-server.service"
USER = "aula-server"
CONFIG_PATH = "/etc/aula/server.yaml"
STATE_DIR = "/var/lib/aula-server"
LINKS = (".venv", "server", "docs")


@dataclass
class ServerOptions:
    """What to install besides the release; the connection, DEST_ROOT and wheelhouse options are flash's."""

    broker: str | None = None
    config: Path | None = None
    account: str = "aula-server"  # the server's certificate in CERTS/clients/
    health_timeout: float = 60.0


# --- here, before connecting ----------------------------------------------------------------------------------

def render_config(server: ServerOptions, layout: TlsLayout) -> tuple[str, bool]:
    """/etc/aula/server.yaml: CONFIG with BROKER and the installed TLS files set in it, or a minimal one for BROKER;
    and whether the broker is mqtts://."""
    cfg: dict = {}
    if server.config is not None:
        try:
            cfg = yaml.safe_load(server.config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read CONFIG {server.config}: {exc}") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"CONFIG {server.config} must be a mapping of server config keys (docs/server.md)")
    mqtt = dict(cfg.get("mqtt") or {})
    broker = server.broker or mqtt.get("broker")
    if not broker:
        raise ConfigError("BROKER is empty and CONFIG names no mqtt.broker: the broker's URL as the server reaches "
                          "it, e.g. BROKER=mqtts://mqtt.school.lan:8883")
    try:
        address = parse_broker_url(str(broker))
    except ValueError as exc:
        raise ConfigError(f"BROKER: {exc}") from None
    mqtt["broker"] = address.url
    if address.tls:
        tls = dict(mqtt.get("tls") or {})
        tls.update(ca_file=layout.ca, cert_file=layout.cert, key_file=layout.key_in_config)
        mqtt["tls"] = tls
    cfg["mqtt"] = mqtt
    if server.config is None:  # database.url's default is relative to the working directory: say where it is
        cfg["database"] = {"url": f"sqlite:///{STATE_DIR}/aula-server.sqlite3"}
    text = ("# Written by `make server-install` (python -m fleet server-install); a new install replaces it.\n"
            "# Every key: /opt/aula/docs/server.md\n" + yaml.safe_dump(cfg, sort_keys=False))
    return text, address.tls


def server_certs(certs: Path, account: str, layout: TlsLayout) -> list[CertFile]:
    """The CA and the server's certificate and key from the certificates' folder (`make certs`)."""
    folder = Path(certs)
    paths = {"ca": folder / "ca.crt", "cert": folder / "clients" / f"{account}.crt",
             "key": folder / "clients" / f"{account}.key"}
    for name, path in paths.items():
        if not path.is_file():
            hint = ("run `make certs INVENTORY=fleet.csv BROKER_HOSTS=...` first" if name == "ca" else
                    f"run `make certs` (it makes the server account {account}), or name the account with "
                    "SERVER_ACCOUNT=")
            raise ConfigError(f"{path} is missing: {hint} (CERTS={folder})")
    return [CertFile(layout.ca, paths["ca"].read_bytes(), "0644", False),
            CertFile(layout.cert, paths["cert"].read_bytes(), "0644", False),
            CertFile(layout.key, paths["key"].read_bytes(), "0600", False)]


def health_url(config_text: str) -> str:
    """Where /healthz answers on the host itself: http.listen, with a wildcard address as loopback."""
    http = (yaml.safe_load(config_text) or {}).get("http") or {}
    host, _, port = str(http.get("listen", "127.0.0.1:8080")).rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    scheme = "https" if http.get("tls_certfile") else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/healthz"


# --- on the host ------------------------------------------------------------------------------------------------

# Run with the installed venv's python: $1 the URL, $2 seconds; prints the answer or exits 1 with the last error.
_WAIT_HEALTH = r"""
import json, ssl, sys, time, urllib.error, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
context = ssl._create_unverified_context()  # the host's own certificate, asked on loopback
last = "no answer"
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as r:
            print(r.read().decode()); sys.exit(0)
    except urllib.error.HTTPError as exc:
        last = "HTTP %s: %s" % (exc.code, exc.read().decode(errors="replace")[:300])
    except OSError as exc:
        last = str(exc)
    time.sleep(0.5)
print(last, file=sys.stderr); sys.exit(1)
"""


def _same(meta: dict | None, data: bytes, mode: str) -> bool:
    return meta is not None and meta["sha256"] == _sha(data) and meta["mode"] == mode and meta["uid"] == 0


class ServerInstall:
    """The steps for one host; `say` prints for the technician."""

    def __init__(self, host: SshTarget, release: Release, opts: FlashOptions, server: ServerOptions, say: Say):
        self.host, self.release, self.opts, self.server, self.say = host, release, opts, server, say
        self.R = opts.root
        self.A = f"{self.R}/opt/aula"

    def p(self, path: str) -> str:
        return self.R + path

    def run(self) -> str:
        """Install or confirm the server; return 'installed' or 'unchanged'. FlashError says what to fix."""
        t0 = time.monotonic()
        self.say(f"server-install to {self.host}" + (f", DEST_ROOT {self.R}" if self.R else ""))
        unit_text = self.release.unit_text()
        layout = tls_layout(unit_text, "server", UNIT_NAME)
        config_text, tls = render_config(self.server, layout)
        certs = server_certs(self.opts.certs, self.server.account, layout) if tls else []
        self.remote = Remote(self.host, self.opts)
        try:
            self.remote.connect()
            raw = probe_host(self.remote, "host", self.R, USER, UNIT_NAME, CONFIG_PATH,
                             ("/etc/aula/certs/ca.crt", layout.key[: -len(".key")] + ".crt", layout.key),
                             STATE_DIR, ("current", *LINKS))
            return self._install(raw, config_text, certs, unit_text, t0)
        finally:
            self.remote.close()

    def _install(self, raw: dict, config_text: str, certs: list[CertFile], unit_text: str, t0: float) -> str:
        say, release, remote = self.say, self.release, self.remote
        target = Target(raw["machine"], raw["python_version"], raw.get("libc", ""))
        systemd = raw["systemd"] and not self.R
        say(f"host: {target.machine}, Python {target.python}, systemd {'running' if raw['systemd'] else 'not running'};"
            f" {raw['free_bytes'] / MIB:,.0f} MiB free under {raw['free_at']}")
        self._check_host(raw, target)
        links, releases = raw["links"], raw["releases"]
        current = links["current"][len("link:releases/"):] if (links["current"] or "").startswith(
            "link:releases/") else None
        installed_as = next((n for n, i in sorted(releases.items()) if i.get("content_hash") == release.content_hash
                             and i.get("role") == "server"), None)
        version = installed_as or release.version
        venv_key = release.venv_key(target, False)
        need_venv = venv_key not in raw["venvs"]
        changed = {
            "release": current != version, "venv": need_venv,
            "config": (raw["files"]["config"] or {}).get("sha256") != _sha(config_text.encode()),
            "certificates": [c for c in certs if not _same(raw["files"][_slot(c)], c.data, c.mode)],
            "unit": (raw["files"]["unit"] or {}).get("sha256") != _sha(unit_text.encode()),
            "links": not all(links.get(n) == f"link:current/{n}" for n in LINKS),
            "enabled": not raw["enabled"], "state directory": not raw["state_dir"],
            "user": raw["user"] is None and not self.R, "stopped": systemd and raw["active"] != "active",
        }
        say(f"release {version}: {len(release.files)} files, {release.total_bytes / MIB:.1f} MiB; "
            + ("already on the host" if installed_as else "new")
            + ("" if current is None else "; current" if current == version else f"; current is {current}"))
        if not any(changed.values()):
            say(f"unchanged: release {version} is current; config, certificates, unit and state directory are as "
                "they should be; nothing to do")
            if systemd:
                say(f"healthz: {self._health(config_text, 15)}")
            return "unchanged"

        wh = wheelhouse_for(release, target, self.opts, say) if need_venv else None
        check_space(raw, self.host.host, 0 if installed_as else release.total_bytes, wh, self.opts.reserve_mib,
                    machine="host")
        if wh is not None:
            make_venv(remote, self.A, venv_key, wh, raw["python"], release, say, path_entry=f"{self.A}/current",
                      machine="host")
        else:
            say(f"venv {self.A}/venvs/{venv_key}: present, reused")
        if not installed_as:
            copy_release(remote, self.A, release, version, venv_key, current if current in releases else None, say)
        if changed["user"]:
            remote.run(f'set -e; getent group {USER} >/dev/null || groupadd --system {USER}; useradd --system '
                       f'--gid {USER} --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {USER}',
                       what=f"creating the service user {USER}")
            say(f"created the system user {USER}")
        elif self.R and raw["user"] is None:
            say(f"user {USER}: not created (DEST_ROOT is {self.R}, not the host's /)")
        self._state_dir(raw, changed["state directory"])
        self._certs(certs, changed["certificates"])
        self._config(config_text, version, changed["config"])
        switch_current(remote, self.A, version, venv_key, LINKS)
        say(f"current -> releases/{version}" + ("" if not changed["release"] else
                                                 f" (was {current})" if current else " (first release)"))
        self._unit(unit_text, changed["unit"], systemd)
        if systemd:
            done = remote.run(f"systemctl restart {UNIT_NAME} 2>&1", check=False, timeout=120)
            if done.returncode != 0:
                raise FlashError(f"systemctl restart {UNIT_NAME} failed: {_last_lines(done.stdout, 3)}\n"
                                 f"  journalctl -u aula-server (last lines):\n    {self._journal()}\n"
                                 "fix what it says (often the config or the broker's certificates) and run "
                                 "server-install again")
            say(f"started aula-server; waiting up to {self.server.health_timeout:.0f} s for /healthz")
            say(f"healthz: {self._health(config_text, self.server.health_timeout)}")
        elif self.R:
            say(f"not started: DEST_ROOT is {self.R}, not the host's /")
        else:
            say("not started: systemd is not running on the host (no /run/systemd/system); it starts at the next boot")
        remove_old_releases(remote, self.A, version, current, self.opts.keep_releases, say)
        say(f"done in {time.monotonic() - t0:.1f} s: release {version} installed")
        return "installed"

    def _check_host(self, raw: dict, target: Target) -> None:
        host = self.host.host
        if not raw["rsync"]:
            raise FlashError(f"rsync is not installed on {host}: `sudo apt install rsync` there")
        needed = self.release.requires_python
        if needed and tuple(int(x) for x in target.python_xy.split(".")) < needed:
            raise FlashError(f"the host's python3 is {target.python}; Aula needs Python >= "
                             f"{'.'.join(map(str, needed))} (Debian 12 Bookworm, Ubuntu 24.04 or newer)")
        if not raw["venv_module"]:
            raise FlashError(f"python3-venv is not installed on {host}: `sudo apt install python3-venv` there")
        if not raw["systemctl"]:
            raise FlashError(f"systemctl is not on {host}: the server is installed as a systemd service")
        current = raw["links"]["current"] or ""
        role = raw["releases"].get(current[len("link:releases/"):], {}).get("role", "device") if current else None
        if role not in (None, "server"):
            raise FlashError(f"{host} runs an Aula {role} release ({self.A}/{current[5:]}): a server and a device "
                             "cannot share /opt/aula; install the server on another machine")
        for name in ("current", *LINKS):
            if raw["links"].get(name) == "other":
                raise FlashError(f"{self.A}/{name} is a folder or file from a manual install: move /opt/aula aside "
                                 "on the host (`sudo mv /opt/aula /opt/aula.manual`) and run server-install again")

    def _state_dir(self, raw: dict, missing: bool) -> None:
        path = self.p(STATE_DIR)
        owner = f"{USER}:{USER}" if raw["user"] is not None or not self.R else ""
        self.remote.run('set -e; mkdir -p "$1"; chmod 0750 "$1"; if [ -n "$2" ]; then chown "$2" "$1"; fi',
                        path, owner, what=f"creating {path}")
        if missing:
            self.say(f"state directory {path}: created (0750{', ' + owner if owner else ''})")

    def _certs(self, certs: list[CertFile], changed: list[CertFile]) -> None:
        if not certs:
            self.say("certificates: none (plain mqtt://; the fleet's broker takes TLS with client certificates only)")
            return
        if not changed:
            self.say("certificates: unchanged")
            return
        for c in certs:
            self.remote.put(self.p(c.remote), c.data, c.mode)
        key = next(c for c in certs if c.remote.endswith(".key"))
        self.say(f"certificates: {', '.join(Path(c.remote).name for c in changed)} -> "
                 f"{self.p(str(Path(key.remote).parent))}/ (key mode 0600, owner root: systemd hands the unit a copy, "
                 "LoadCredential=)")

    def _config(self, text: str, version: str, changed: bool) -> None:
        """Written as server.yaml.aula-new, validated by the new release on the host, then renamed into place."""
        path = self.p(CONFIG_PATH)
        checked = path + (".aula-new" if changed else "")
        if changed:
            self.remote.put(checked, text.encode(), "0644")
        # From the release's folder, so that `-m server` is the new release's even before `current` points at it.
        done = self.remote.run('cd "$1" && ./.venv/bin/python -m server validate-config --config "$2"',
                               f"{self.A}/releases/{version}", checked, check=False, timeout=120)
        if done.returncode != 0:
            self.remote.run('rm -f "$1"', path + ".aula-new")
            raise FlashError(f"the server config does not validate on the host with release {version} (nothing was "
                             f"switched):\n  {_last_lines(done.stderr or done.stdout, 8, '  ')}\n"
                             "fix CONFIG (docs/server.md lists every key) or BROKER and run server-install again")
        if changed:
            self.remote.run('mv -f "$1.aula-new" "$1"', path)
        self.say(f"config {path}: {'written, ' if changed else 'unchanged, '}validates on the host")

    def _unit(self, unit_text: str, changed: bool, systemd: bool) -> None:
        path = self.p(f"/etc/systemd/system/{UNIT_NAME}")
        if changed:
            self.remote.put(path, unit_text.encode(), "0644")
        missing = self.remote.run('for p in "$@"; do [ -e "$p" ] || echo "$p"; done',
                                  *(self.p(p) for p in unit_programs(unit_text))).split()
        if missing:
            raise FlashError(f"{UNIT_NAME} names {', '.join(missing)}, which the release does not provide on the "
                             "host; the unit and fleet/server_install.py disagree on the layout under /opt/aula")
        if self.R:
            self.remote.run('systemctl --root="$1" enable "$2" 2>&1', self.R, UNIT_NAME, what="systemctl --root enable")
            how = f"enabled with systemctl --root={self.R}"
        elif systemd:
            self.remote.run(f"systemctl daemon-reload && systemctl enable {UNIT_NAME} 2>&1", what="systemctl enable")
            how = "enabled"
        else:
            self.remote.run(f"systemctl --root=/ enable {UNIT_NAME} 2>&1", what="systemctl enable")
            how = "enabled (offline: systemd is not running)"
        self.say(f"unit {path}: {'installed' if changed else 'unchanged'}, {how}")

    def _health(self, config_text: str, timeout: float) -> str:
        url = health_url(config_text)
        done = self.remote.run('"$1/.venv/bin/python" -c "$2" "$3" "$4"', self.A, _WAIT_HEALTH, url, str(timeout),
                               check=False, timeout=timeout + 30)
        if done.returncode == 0:
            return done.stdout.strip()
        raise FlashError(f"the server did not answer {url} within {timeout:.0f} s ({done.stderr.strip()[-300:]});\n"
                         f"  journalctl -u aula-server (last lines):\n    {self._journal()}\n"
                         "fix what it says (often the config or the broker's certificates) and run server-install "
                         "again")

    def _journal(self) -> str:
        journal = self.remote.run(f"journalctl -u {UNIT_NAME} -n 20 --no-pager -o cat 2>&1", check=False)
        return _last_lines(journal.stdout, 20, "    ")


def _slot(c: CertFile) -> str:
    name = Path(c.remote).name
    return "ca" if name == "ca.crt" else "key" if name.endswith(".key") else "cert"


def install_server(host: SshTarget, release: Release, opts: FlashOptions, server: ServerOptions,
                   say: Say = print) -> str:
    """Install the server on one host; 'installed' or 'unchanged'; FlashError or ConfigError says what to fix."""
    if release.role != SERVER:
        raise ConfigError("server-install needs the server's release (build_release(source, SERVER))")
    return ServerInstall(host, release, opts, server, say).run()
