"""The device's and the server's systemd units: required directives, hardening, systemd's own checks, and a run of
each service under the unit's restrictions.

systemd is not PID 1 on the machines these tests run on, so the units cannot be started for real (no systemd-run,
no systemd-nspawn). `systemd-analyze verify` and `systemd-analyze security --offline=true` check the files; the
confined runs below apply what of each unit can be applied without systemd, the way systemd 252 applies it, and run
the service's own ExecStartPre and ExecStart lines under it:

- seccomp filters built with libseccomp, as systemd builds them: SystemCallFilter= (with the groups as this
  systemd-analyze lists them), SystemCallErrorNumber=, SystemCallArchitectures=native, MemoryDenyWriteExecute=,
  RestrictAddressFamilies=, RestrictNamespaces=;
- NoNewPrivileges=, an empty CapabilityBoundingSet=, a non-root user (nobody, with the unit's supplementary groups
  where they exist), UMask=;
- a private mount namespace: ProtectSystem=strict (every mount read-only but the state directory), PrivateTmp=,
  ProtectHome= (an empty /home and /root, with the Python installation mounted back when it lives there),
  ProtectProc= and ProcSubset= (a new /proc with hidepid= and subset=), ProtectKernelTunables= (/proc/sys and /sys
  read-only);
- NOTIFY_SOCKET and WATCHDOG_USEC, as systemd sets them for Type=notify with WatchdogSec=.

Not applied here: DevicePolicy=/DeviceAllow= and MemoryMax= (cgroups this machine's own tooling manages; there is no
camera or sound card here either), PrivateDevices=, PrivateUsers=, LockPersonality=, RestrictRealtime=,
LoadCredential= and the rest of what needs systemd. docs/hardening.md says what that leaves unverified.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from server.testing import wait_for_broker
from tests.mosquitto import broker_factory_fixture, free_port, mosquitto_fixture  # noqa: F401 (pytest fixtures)
from tests.system_deps import require_system_dep

ROOT = Path(__file__).resolve().parent.parent
DEVICE_UNIT = ROOT / "systemd" / "aula-device.service"
SERVER_UNIT = ROOT / "systemd" / "aula-server.service"
UNITS = [DEVICE_UNIT, SERVER_UNIT]
MAX_EXPOSURE = 2.5
INSTALLED_PYTHON = "/opt/aula/.venv/bin/python"


def _analyze() -> str:
    return require_system_dep(
        shutil.which("systemd-analyze"), "systemd-analyze is not installed; `apt-get install systemd` to check units"
    )


def _directives(unit: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; unlike configparser, repeated keys (DeviceAllow=, ...) are all kept."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        sections[section].setdefault(key.strip(), []).append(value.strip())
    return sections


def _service(unit: Path) -> dict[str, str]:
    """The [Service] section, the last value of each key."""
    return {key: values[-1] for key, values in _directives(unit)["Service"].items()}


# ------------------------------------------------------------------------------------------------ the unit files


def test_device_unit_has_notify_watchdog_restart_and_ordering():
    d = _directives(DEVICE_UNIT)
    svc, unit = _service(DEVICE_UNIT), {k: v[-1] for k, v in d["Unit"].items()}
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main" and int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "always" and "StartLimitBurst" in unit and "StartLimitIntervalSec" in unit
    assert "network-online.target" in unit["After"] and "network-online.target" in unit["Wants"]
    assert svc["RestartPreventExitStatus"] == "2"  # config errors do not crash-loop
    assert "device run" in svc["ExecStart"] and "validate-config" in svc["ExecStartPre"]
    assert svc["User"] == "aula" and set(svc["SupplementaryGroups"].split()) == {"video", "audio"}


def test_server_unit_runs_the_server_with_its_config_check():
    svc, unit = _service(SERVER_UNIT), {k: v[-1] for k, v in _directives(SERVER_UNIT)["Unit"].items()}
    assert svc["ExecStart"] == f"{INSTALLED_PYTHON} -m server --config /etc/aula/server.yaml"
    assert svc["ExecStartPre"] == f"{INSTALLED_PYTHON} -m server validate-config --config /etc/aula/server.yaml"
    # The server sends no sd_notify messages, so it is no Type=notify service and has no watchdog.
    assert not any("NOTIFY_SOCKET" in p.read_text() for p in (ROOT / "server").rglob("*.py"))
    assert svc["Type"] == "simple" and "WatchdogSec" not in svc
    assert svc["Restart"] == "on-failure" and "StartLimitBurst" in unit and "network-online.target" in unit["After"]
    # Exit status 2 also means "database unreachable", which a restart can fix: not a RestartPreventExitStatus.
    assert "RestartPreventExitStatus" not in svc
    assert svc["User"] == "aula-server" and svc["StateDirectory"] == "aula-server"
    # database.url's default is relative (sqlite:///aula-server.sqlite3): the working directory is the state directory.
    from server.config import DatabaseConfig

    assert DatabaseConfig().url == "sqlite:///aula-server.sqlite3"
    assert svc["WorkingDirectory"] == "/var/lib/aula-server"


# What both units share; each value was chosen in docs/hardening.md.
COMMON = {
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "", "RestrictSUIDSGID": "yes",
    "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateMounts": "yes", "UMask": "0077",
    "MemoryMax": "1G", "DevicePolicy": "closed", "RemoveIPC": "yes", "KeyringMode": "private",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes", "ProtectProc": "invisible",
    "LockPersonality": "yes", "RestrictRealtime": "yes", "RestrictNamespaces": "yes",
    "SystemCallArchitectures": "native", "SystemCallErrorNumber": "EPERM",
}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_unit_is_hardened_with_only_the_state_directory_writable(unit):
    svc, every = _service(unit), _directives(unit)["Service"]
    assert {k: svc.get(k) for k in COMMON} == COMMON
    assert "ReadWritePaths" not in svc and svc["StateDirectory"] in ("aula", "aula-server")
    assert every["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    name = "device" if unit == DEVICE_UNIT else "server"
    assert every["LoadCredential"] == [f"mqtt-client.key:/etc/aula/certs/{name}.key"]


def test_device_unit_allows_the_camera_and_sound_devices_and_keeps_what_the_device_needs():
    svc, every = _service(DEVICE_UNIT), _directives(DEVICE_UNIT)["Service"]
    assert set(every["DeviceAllow"]) == {"char-video4linux rw", "char-media rw", "char-dma_heap rw", "char-alsa rw"}
    assert svc["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    # Left off, each with its reason in the unit and in docs/hardening.md: the device needs its devices (and their
    # groups), /proc/loadavg and friends, and CTranslate2 (Whisper) writes executable code at run time.
    for key in ("PrivateDevices", "PrivateUsers", "ProcSubset", "MemoryDenyWriteExecute"):
        assert key not in svc, key
        assert f"{key}= is off" in DEVICE_UNIT.read_text(), key


def test_server_unit_has_no_devices_no_other_users_and_no_writable_code():
    svc = _service(SERVER_UNIT)
    assert svc["PrivateDevices"] == "yes" and "DeviceAllow" not in svc
    assert svc["PrivateUsers"] == "yes" and svc["ProcSubset"] == "pid" and svc["MemoryDenyWriteExecute"] == "yes"
    assert svc["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_unit_documentation_exists_in_the_tree(unit):
    urls = " ".join(_directives(unit)["Unit"]["Documentation"]).split()
    assert urls
    for url in urls:
        assert url.startswith("file:///opt/aula/"), url  # the tree is installed at /opt/aula (WorkingDirectory)
        assert (ROOT / url.removeprefix("file:///opt/aula/")).is_file(), url


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_systemd_analyze_security_rates_the_unit_at_most_2_5(unit):
    out = subprocess.run(
        [_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, encoding="utf-8", errors="replace",
    )
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+) (\w+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


def _verify(path: Path) -> list[str]:
    out = subprocess.run([_analyze(), "verify", "--man=no", str(path)], capture_output=True, text=True)
    # systemd-analyze verify exits 0 even for unknown keys and values it cannot parse; it names the file in those
    # lines. Offline it resolves no users and reads no LoadCredential= sources, so those need no stand-ins here.
    return [line for line in (out.stdout + out.stderr).splitlines() if path.name in line or out.returncode != 0]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    # The same file with the installed venv's python replaced by this one, so verify finds the executables.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_PYTHON, sys.executable))
    assert _verify(copy) == []
    # The check can fail: a misspelt value is reported.
    broken = tmp_path / "broken" / unit.name
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("ProtectProc=invisible", "ProtectProc=invisble"))
    assert any("invisble" in line for line in _verify(broken))


# ------------------------------------------------------------------------------- running under the restrictions

CLONE_NEW = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
             "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000, "time": 0x00000080}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
# statvfs flags that mount(2) takes back unchanged on a remount (ST_* == MS_* for these).
KEEP_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | 16 | 64 | 1024 | 2048 | 4096
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
SCMP_ACT_ALLOW, SCMP_ACT_KILL_PROCESS = 0x7FFF0000, 0x80000000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
CONFINE_ENV = "AULA_TEST_CONFINE"


def _scmp_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run([_analyze(), "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True)
    groups: dict[str, list[str]] = {}
    name = None
    for line in out.stdout.splitlines():
        if line.startswith("@"):
            name = line.strip()
            groups[name] = []
        elif name and line.startswith("    ") and not line.strip().startswith("#"):
            groups[name].append(line.strip())
    return groups


def _expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        names |= _expand(groups[item], groups) if item.startswith("@") else {item}
    return names


def _plan(unit: Path) -> dict:
    """What of `unit` the confined run applies, in a form the launcher (another process) reads from JSON."""
    svc, every = _service(unit), _directives(unit)["Service"]
    allowed: set[str] | None = None
    groups = _syscall_groups()
    for value in every.get("SystemCallFilter", []):
        names = _expand(value.lstrip("~").split(), groups)
        if value.startswith("~"):
            assert allowed is not None, "a deny list alone is not emulated"
            allowed -= names
        else:
            allowed = (allowed or set()) | names
    families = svc.get("RestrictAddressFamilies")
    err = svc.get("SystemCallErrorNumber")
    supplementary = [grp.getgrnam(g).gr_gid for g in svc.get("SupplementaryGroups", "").split() if _group_exists(g)]
    nobody = pwd.getpwnam("nobody")
    proc_opts = []
    if svc.get("ProtectProc", "default") != "default":
        proc_opts.append(f"hidepid={svc['ProtectProc']}")
    if svc.get("ProcSubset") == "pid":
        proc_opts.append("subset=pid")
    return {
        "syscalls": sorted(allowed) if allowed is not None else None,
        "syscall_action": _scmp_errno(getattr(errno, err)) if err else SCMP_ACT_KILL_PROCESS,
        "mdwe": svc.get("MemoryDenyWriteExecute") == "yes",
        "families": [getattr(socket, f) for f in families.split()] if families else None,
        "restrict_namespaces": svc.get("RestrictNamespaces") == "yes",
        "no_new_privs": svc.get("NoNewPrivileges") == "yes",
        "drop_capabilities": svc.get("CapabilityBoundingSet") == "",
        "umask": int(svc.get("UMask", "0022"), 8),
        "uid": nobody.pw_uid, "gid": nobody.pw_gid, "groups": supplementary,
        "protect_system": svc.get("ProtectSystem") == "strict",
        "private_tmp": svc.get("PrivateTmp") == "yes",
        "protect_home": svc.get("ProtectHome") == "yes",
        "protect_kernel_tunables": svc.get("ProtectKernelTunables") == "yes",
        "proc_opts": ",".join(proc_opts) or None,
        "python_prefix": sys.base_prefix,
    }


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = [None if v is None else str(v).encode() for v in (source, target, fstype)]
    _check(libc.mount(*enc, flags, data.encode() if data else None), f"mount {source} {target} {fstype} {flags:#x}")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        points.append(point)
    return points


def _remount_read_only(libc, point: str) -> None:
    flags = os.statvfs(point).f_flag & KEEP_FLAGS
    _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mounts(plan: dict, libc) -> None:
    """The unit's file-system view, in a private mount namespace (the host's mounts stay as they are)."""
    _check(libc.unshare(CLONE_NEW["mnt"]), "unshare(CLONE_NEWNS)")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    # Directories to mount back later, held open before anything covers them.
    binds = [(os.open(src, os.O_PATH | os.O_DIRECTORY), dst, rw) for src, dst, rw in plan["binds"]]
    homes, tmps = ["/home", "/root"], ["/tmp", "/var/tmp"]
    # The Python and the checkout (code and venv) stand for /opt/aula: where they lie under a folder the unit
    # hides (a checkout in /tmp or /root), they are mounted back at the same place, read-only like /opt.
    keep = [(os.open(p, os.O_PATH | os.O_DIRECTORY), p) for p in dict.fromkeys([plan["python_prefix"], *plan["keep"]])
            if any(_under(p, h) for h in homes + tmps)]

    def mount_back(under: str) -> None:
        for fd, path in keep:
            if _under(path, under):
                os.makedirs(path, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND)

    if plan["protect_system"]:
        for point in _mount_points():
            if not any(_under(point, api) for api in ("/proc", "/sys", "/dev")):
                _remount_read_only(libc, point)
    if plan["private_tmp"]:
        for tmp in tmps:
            _mount(libc, "tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
            mount_back(tmp)
    if plan["protect_home"]:
        for home in homes:
            # systemd mounts an inaccessible directory; 0755 here, so the Python under /root can be reached.
            _mount(libc, "tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
            mount_back(home)
            _mount(libc, None, home, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd, dst, rw in binds:
        os.makedirs(dst, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", dst, None, MS_BIND)
        # A bind mount keeps the read-only flag of the mount it comes from: set what the unit gives it.
        _mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | (0 if rw else MS_RDONLY) | MS_NOSUID | MS_NODEV)
    if plan["proc_opts"] is not None:
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, plan["proc_opts"])
    if plan["protect_kernel_tunables"]:
        if Path("/proc/sys").is_dir():
            _mount(libc, "/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
            _remount_read_only(libc, "/proc/sys")
        for point in _mount_points():
            if _under(point, "/sys"):
                _remount_read_only(libc, point)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


class _Seccomp:
    """One libseccomp filter (as systemd builds its filters), for the native architecture only."""

    lib = None

    def __init__(self, default_action: int):
        if _Seccomp.lib is None:
            lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
            lib.seccomp_init.restype = ctypes.c_void_p
            lib.seccomp_init.argtypes = [ctypes.c_uint32]
            lib.seccomp_rule_add_array.argtypes = [
                ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
            lib.seccomp_load.argtypes = [ctypes.c_void_p]
            lib.seccomp_release.argtypes = [ctypes.c_void_p]
            lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
            _Seccomp.lib = lib
        self.ctx = self.lib.seccomp_init(default_action)

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture (e.g. mmap2, setuid32)
            return
        array = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(cmps), array)
        if rc != 0:
            raise OSError(-rc, f"seccomp rule for {name}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load")


def _seccomp(plan: dict) -> None:
    # The order systemd loads them in: the system call filter last, as it may refuse seccomp() itself.
    eperm = _scmp_errno(errno.EPERM)
    if plan["mdwe"]:
        f = _Seccomp(SCMP_ACT_ALLOW)
        prot_exec, prot_write, shm_exec = 4, 2, 0o100000
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, prot_exec | prot_write, prot_exec | prot_write))
        f.rule(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, prot_exec, prot_exec))
        f.rule(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, prot_exec, prot_exec))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, shm_exec, shm_exec))
        f.load()
    if plan["families"] is not None:
        f = _Seccomp(SCMP_ACT_ALLOW)
        refuse = _scmp_errno(errno.EAFNOSUPPORT)
        for family in range(64):
            if family not in plan["families"]:
                f.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
        f.rule(refuse, "socket", (0, SCMP_CMP_GT, 63, 0))
        f.load()
    if plan["restrict_namespaces"]:
        f = _Seccomp(SCMP_ACT_ALLOW)
        f.rule(_scmp_errno(errno.ENOSYS), "clone3")  # its flags cannot be inspected: glibc falls back to clone
        f.rule(eperm, "setns")
        for flag in CLONE_NEW.values():
            f.rule(eperm, "unshare", (0, SCMP_CMP_MASKED_EQ, flag, flag))
            f.rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        f.load()
    if plan["syscalls"] is not None:
        f = _Seccomp(plan["syscall_action"])
        for name in plan["syscalls"]:
            f.rule(SCMP_ACT_ALLOW, name)
        f.load()


def exec_confined() -> None:
    """The launcher: runs as root in a fresh process, applies the plan in $AULA_TEST_CONFINE, then execs."""
    plan = json.loads(os.environ.pop(CONFINE_ENV))
    libc = _libc()
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    _mounts(plan, libc)
    if plan["drop_capabilities"]:
        for cap in range(last_cap + 1):
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    os.setgroups(plan["groups"])
    os.setresgid(plan["gid"], plan["gid"], plan["gid"])
    os.setresuid(plan["uid"], plan["uid"], plan["uid"])  # leaving uid 0 clears the capability sets
    os.umask(plan["umask"])
    if plan["no_new_privs"]:
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    os.chdir(plan["cwd"])
    env = dict(plan["env"])
    if "WATCHDOG_USEC" in env:
        env["WATCHDOG_PID"] = str(os.getpid())  # exec keeps the pid: the service's main process
    _seccomp(plan)
    os.execve(plan["argv"][0], plan["argv"], env)


def _require_confinement() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the confined run needs root on Linux (a private mount namespace, then a switch to nobody)")
    require_system_dep(ctypes.util.find_library("seccomp"), "libseccomp is missing; `apt-get install libseccomp2`")
    _analyze()


def _confined(plan: dict, argv: list[str], cwd: str, binds: list[tuple[str, str, bool]], env: dict[str, str],
              **popen) -> subprocess.Popen:
    spec = {**plan, "argv": argv, "cwd": cwd, "binds": binds, "keep": [str(ROOT)],
            "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent", **env}}
    launcher = "import sys; sys.path.insert(0, sys.argv[1]); from tests.test_systemd_unit import exec_confined; " \
               "exec_confined()"
    return subprocess.Popen([sys.executable, "-c", launcher, str(ROOT)], cwd=ROOT,
                            env={**os.environ, CONFINE_ENV: json.dumps(spec)}, **popen)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """communicate(), but a run that does not end in time is killed and its output shown."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        wrote = f"{(out or '')[-3000:]}\n{(err or '')[-3000:]}"
        raise AssertionError(f"no exit within {timeout} s; it wrote:\n{wrote}") from None


def _unit_command(unit: Path, key: str, replacements: dict[str, str]) -> list[str]:
    line = _service(unit)[key]
    for old, new in replacements.items():
        line = line.replace(old, new)
    return shlex.split(line)


PROBE = r"""
import errno, json, mmap, os, socket, sys
def attempt(f):
    try:
        f()
        return 0
    except OSError as exc:
        return exc.errno
mask = os.umask(0)
os.umask(mask)
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print(json.dumps({
    "uid": os.getuid(), "umask": mask, "cap_eff": int(status["CapEff"], 16), "cap_bnd": int(status["CapBnd"], 16),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "write_tree": attempt(lambda: open(os.path.join(sys.argv[1], "probe.tmp"), "w")),
    "write_state": attempt(lambda: open(os.path.join(sys.argv[2], "probe.tmp"), "w").close()),
    "write_tmp": attempt(lambda: open("/tmp/probe.tmp", "w").close()),
    "packet_socket": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
    "netlink_socket": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()),
    "wx_memory": attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    "setuid": attempt(lambda: os.setuid(os.getuid())),
    "loadavg": attempt(lambda: open("/proc/loadavg").read()),
    "init_environ": attempt(lambda: open("/proc/1/environ").read()),
    "root_home": sorted(os.listdir("/root")),
}))
"""


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_the_confined_run_applies_the_units_restrictions(unit, tmp_path):
    """The launcher confines what it says it does, so the runs below are not vacuous."""
    _require_confinement()
    plan, svc = _plan(unit), _service(unit)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, plan["uid"], plan["gid"])
    argv = [sys.executable, "-c", PROBE, str(ROOT), "/tmp/state"]
    proc = _confined(plan, argv, "/", [(str(state), "/tmp/state", True)], {},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _finish(proc, 60)
    assert proc.returncode == 0, err
    probe = json.loads(out)
    families = svc["RestrictAddressFamilies"].split()
    assert probe == {
        "uid": plan["uid"], "umask": 0o077, "cap_eff": 0, "cap_bnd": 0, "no_new_privs": "1",
        "write_tree": errno.EROFS, "write_state": 0, "write_tmp": 0,
        "packet_socket": errno.EAFNOSUPPORT,
        # Raw netlink sockets need no privilege for NETLINK_ROUTE.
        "netlink_socket": 0 if "AF_NETLINK" in families else errno.EAFNOSUPPORT,
        "wx_memory": errno.EPERM if svc.get("MemoryDenyWriteExecute") == "yes" else 0,
        "setuid": errno.EPERM,  # @privileged is refused with SystemCallErrorNumber=EPERM
        "loadavg": errno.ENOENT if svc.get("ProcSubset") == "pid" else 0,
        "init_environ": errno.ENOENT,  # ProtectProc=invisible: other users' processes are not there
        # ProtectHome=yes: nothing of root's home but the Python this test runs on, mounted back when it lives there.
        "root_home": [Path(plan["python_prefix"]).parts[2]] if _under(plan["python_prefix"], "/root") else [],
    }
    assert (state / "probe.tmp").stat().st_mode & 0o777 == 0o600


def _notify_socket() -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"aula-test-notify-{secrets.token_hex(6)}"
    sock.bind("\0" + name)  # abstract: reachable from another mount namespace
    sock.setblocking(False)
    return sock, "@" + name


def _datagrams(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def _final_figures(log: str) -> dict:
    line = [ln for ln in log.splitlines() if "final figures: " in ln][-1]
    return json.loads(line.split("final figures: ", 1)[1])


def _memory_max_mb(unit: Path) -> float:
    value = _service(unit)["MemoryMax"]
    return float(value[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024}[value[-1]]


def _assert_private_files(folder: Path) -> None:
    """What the service wrote is its own (the folder itself has StateDirectoryMode=)."""
    assert any(folder.iterdir())
    for path in folder.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)} (UMask=0077)"


def _service_dirs(tmp_path: Path, plan: dict, config_name: str, config: str) -> tuple[Path, Path]:
    """The unit's state directory (owned by its user, StateDirectoryMode=0750) and /etc/aula with its config."""
    state, etc = tmp_path / "state", tmp_path / "etc"
    state.mkdir()
    etc.mkdir()
    os.chown(state, plan["uid"], plan["gid"])
    state.chmod(0o750)
    (etc / config_name).write_text(config)
    etc.chmod(0o755)
    (etc / config_name).chmod(0o644)
    return state, etc


def _exec_start_pre(plan: dict, unit: Path, replace: dict, cwd: str, binds: list, env: dict) -> None:
    check = _confined(plan, _unit_command(unit, "ExecStartPre", replace), cwd, binds, env,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = _finish(check, 120)
    assert check.returncode == 0, out


def test_the_device_runs_under_its_units_restrictions(mosquitto, tmp_path):
    """ExecStartPre and ExecStart of aula-device.service, confined, on the bundled sample with every path on."""
    _require_confinement()
    plan = _plan(DEVICE_UNIT)
    state, etc = _service_dirs(
        tmp_path, plan, "device.yaml",
        f"mqtt: {{broker: '{mosquitto.url}', site: test-school, room: room-7, device_id: pi-7}}\n")
    binds = [(str(state), "/tmp/aula-state", True), (str(etc), "/tmp/aula-etc", False)]
    replace = {INSTALLED_PYTHON: sys.executable, "/etc/aula/device.yaml": "/tmp/aula-etc/device.yaml"}
    env = {"STATE_DIRECTORY": "/tmp/aula-state", "PYTHONUNBUFFERED": "1"}
    _exec_start_pre(plan, DEVICE_UNIT, replace, str(ROOT), binds, env)

    notify, address = _notify_socket()
    with notify:
        argv = [*_unit_command(DEVICE_UNIT, "ExecStart", replace), "--fast"]  # the replay ends by itself
        run = _confined(plan, argv, str(ROOT), binds, {**env, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, log = _finish(run, 300)
        messages = _datagrams(notify)
    assert run.returncode == 0, log[-4000:]
    figures = _final_figures(log)
    assert figures["windows_emitted"] >= 6 and figures["publisher"]["acked"] == figures["publisher"]["queued"] > 0
    assert figures["vision"]["fault"] is None and figures["audio"]["fault"] is None, figures
    assert figures["models"]["transcriber"] == "whisper" and set(figures["models"]) >= {"face_emotion", "face_detector"}
    # The words path: with MemoryDenyWriteExecute=yes every transcription failed here (CTranslate2's oneDNN).
    audio = figures["audio"]
    assert audio["transcriber_errors"] == 0 and audio["segments_transcribed"] > 0 and audio["text_utterances"] > 0
    assert figures["host"]["cpu_load_1m"] is not None and figures["host"]["mem_available_mb"] is not None
    assert figures["host"]["peak_rss_mb"] < _memory_max_mb(DEVICE_UNIT) / 2
    assert any("READY=1" in m for m in messages) and any("WATCHDOG=1" in m for m in messages), messages
    assert (state / "mqtt-queue.sqlite3").is_file()
    _assert_private_files(state)


def test_the_server_runs_under_its_units_restrictions(mosquitto, tmp_path):
    """ExecStartPre and ExecStart of aula-server.service, confined: it serves, stores in its state directory and
    stops on SIGTERM."""
    _require_confinement()
    plan = _plan(SERVER_UNIT)
    port = free_port()
    state, etc = _service_dirs(
        tmp_path, plan, "server.yaml",
        f"mqtt: {{broker: '{mosquitto.url}', client_id: aula-confined}}\nhttp: {{listen: '127.0.0.1:{port}'}}\n")
    binds = [(str(state), "/tmp/aula-server-state", True), (str(etc), "/tmp/aula-etc", False)]
    replace = {INSTALLED_PYTHON: sys.executable, "/etc/aula/server.yaml": "/tmp/aula-etc/server.yaml"}
    env = {"STATE_DIRECTORY": "/tmp/aula-server-state", "PYTHONUNBUFFERED": "1"}
    cwd = "/tmp/aula-server-state"  # WorkingDirectory=/var/lib/aula-server, the state directory
    _exec_start_pre(plan, SERVER_UNIT, replace, cwd, binds, env)

    run = _confined(plan, _unit_command(SERVER_UNIT, "ExecStart", replace), cwd, binds, env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = wait_for_broker(f"http://127.0.0.1:{port}/healthz", run)
        assert health is not None and health["broker_connected"] and health["database"] == "ok", health
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as response:
            assert response.status == 200 and b"<form" in response.read()
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=float(_service(SERVER_UNIT)["TimeoutStopSec"]))
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=10)
    # uvicorn re-raises SIGTERM once it has shut down, as it does unconfined; systemd counts an exit by SIGTERM as
    # clean (systemd.service, SuccessExitStatus=).
    assert run.returncode in (0, -signal.SIGTERM), out[-4000:]
    assert "Application shutdown complete" in out
    # database.url's default, relative to WorkingDirectory: the state directory.
    assert (state / "aula-server.sqlite3").is_file(), sorted(p.name for p in state.iterdir())
    _assert_private_files(state)
