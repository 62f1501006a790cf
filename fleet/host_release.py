"""A release on a host over ssh, the steps that flash and server-install share: the host's probe, the space
check, the wheelhouse and the venv made from it, the release's copy, the switch of `current` and the removal of
old releases."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from typing import TYPE_CHECKING

from fleet.errors import FlashError
from fleet.release import Release, Target, Wheelhouse, prepare_wheelhouse
from fleet.ssh_remote import Remote, _last_lines

if TYPE_CHECKING:
    from fleet.flash import FlashOptions, Say

# A venv takes about 3.2x its wheels once unpacked (788 MB from 250 MB of wheels, the device extra on x86_64).
VENV_PER_WHEEL_BYTE = 3.5
MIB = 1024 * 1024


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


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _wheelhouse_lock(key: str) -> threading.Lock:
    """One wheelhouse build per dependency set and platform, whichever device thread gets there first."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


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
