"""A device release, built on the technician's machine: what is shipped, its version, and its dependency set.

The version is `git describe --always --dirty` plus a short hash of the shipped files' contents (paths, exec bits
and bytes), so the same content always gives the same hash. The dependency set is the project's base
dependencies plus the `device` extra (pyproject.toml). Devices with the same dependency set, CPU and Python share
one venv, built from a wheelhouse that this module prepares with pip on the technician's machine (for the device's
platform) and caches under artifacts/wheelhouse/<key>/, so that a second flash downloads nothing and the device
never needs the internet.

The server's release (SERVER: server/, the device's contract and shared layer, its unit, the `server` extra) is
built the same way for `make server-install` (fleet/server_install.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device.common.errors import AulaError
from device.common.files import sha256_of

ROOT = Path(__file__).resolve().parent.parent
# What a device needs, relative to the source tree; an entry that is missing there is left out.
SHIPPED = ("device", "models_tflite", "systemd/aula-device.service", "pyproject.toml", "docs/deployment.md",
           "docs/hardening.md", "docs/device.example.yaml", "docs/flash.md")
UNIT = "systemd/aula-device.service"


@dataclass(frozen=True)
class ReleaseRole:
    """What one kind of machine runs: the shipped entries, its unit, its pyproject extra and its packages."""

    name: str
    shipped: tuple[str, ...]
    unit: str
    extra: str
    packages: tuple[str, ...]  # compiled on the target; the first one's __main__.py marks a source tree


DEVICE = ReleaseRole("device", SHIPPED, UNIT, "device", ("device",))
# The server imports of the device only the contract and the shared layer (the import contracts in pyproject.toml).
SERVER = ReleaseRole("server", ("server", "device/__init__.py", "device/contract", "device/common",
                                "systemd/aula-server.service", "pyproject.toml", "docs/server.md", "docs/hardening.md",
                                "docs/deployment.md"),
                     "systemd/aula-server.service", "server", ("server", "device"))
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
WHEELHOUSE_MARKER = ".aula-wheelhouse.json"
DEFAULT_WHEELHOUSE_CACHE = ROOT / "artifacts" / "wheelhouse"


class ReleaseError(AulaError):
    """The release or its wheelhouse cannot be built here; the message says what to fix."""


@dataclass(frozen=True)
class ShippedFile:
    path: str  # relative to the source tree, with /
    size: int
    executable: bool
    sha256: str


@dataclass(frozen=True)
class Target:
    """The device's platform, as the device reports it."""

    machine: str  # uname -m: aarch64, x86_64, armv7l
    python: str  # X.Y.Z of the device's python3
    libc: str = ""  # glibc version, e.g. 2.36 ("" if unknown)

    @property
    def python_xy(self) -> str:
        return ".".join(self.python.split(".")[:2])


def short_hash(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:length]


def _git(source: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _is_git_root(source: Path) -> bool:
    top = _git(source, "rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == source.resolve()


def _listed(source: Path, shipped: tuple[str, ...] = SHIPPED) -> list[str]:
    """The shipped files: in a git checkout, tracked and untracked but not ignored; elsewhere every file."""
    entries = [e for e in shipped if (source / e).exists()]
    if _is_git_root(source):
        out = _git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *entries)
        if out is not None:
            return sorted({p for p in out.split("\0") if p and (source / p).is_file()
                           and not (source / p).is_symlink() and not p.endswith(_SKIP_SUFFIXES)})
    found: list[str] = []
    for entry in entries:
        top = source / entry
        if top.is_file():
            found.append(entry)
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in files:
                path = Path(folder) / name
                if name.endswith(_SKIP_SUFFIXES) or path.is_symlink():
                    continue
                found.append(path.relative_to(source).as_posix())
    return sorted(found)


def device_requirements(source: Path, extra_name: str = "device") -> tuple[str, ...]:
    """The device's dependency set (or another role's): the project's dependencies plus its extra, from
    pyproject.toml."""
    path = source / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ReleaseError(f"cannot read the dependencies from {path}: {exc}") from None
    extra = project.get("optional-dependencies", {}).get(extra_name)
    if extra is None:
        raise ReleaseError(f"{path} has no `{extra_name}` extra under [project.optional-dependencies]")
    return tuple(dict.fromkeys(r.strip() for r in [*project.get("dependencies", []), *extra] if r.strip()))


@dataclass(frozen=True)
class Release:
    """One build of what a device runs: the files, their content hash, the version and the dependency set."""

    source: Path
    files: tuple[ShippedFile, ...]
    content_hash: str
    describe: str
    requirements: tuple[str, ...]
    role: ReleaseRole = DEVICE

    @property
    def version(self) -> str:
        return f"{self.describe}-{self.content_hash[:12]}"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def requires_python(self) -> tuple[int, ...] | None:
        """The lowest Python X.Y that pyproject.toml's requires-python allows (>=X.Y), if it says."""
        try:
            spec = tomllib.loads((self.source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return None
        m = re.search(r">=\s*(\d+)\.(\d+)", str(spec.get("requires-python", "")))
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def requirements_hash(self) -> str:
        return short_hash(*sorted(self.requirements))

    def venv_key(self, target: Target, system_site_packages: bool) -> str:
        """The name of the device's venv for this dependency set: shared by every release that has the same."""
        return short_hash(*sorted(self.requirements), target.machine, target.python_xy,
                          "system-site-packages" if system_site_packages else "isolated")

    def wheelhouse_key(self, target: Target) -> str:
        return short_hash(*sorted(self.requirements), target.machine, target.python_xy, target.libc)

    def file_list(self) -> str:
        """The list rsync's --files-from reads."""
        return "".join(f"{f.path}\n" for f in self.files)

    def unit_text(self) -> str:
        path = self.source / self.role.unit
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReleaseError(f"cannot read the systemd unit {path}: {exc.strerror or exc}") from None

    def manifest(self, venv_key: str) -> str:
        """.aula-release.json in the installed release."""
        return json.dumps({"version": self.version, "role": self.role.name, "content_hash": self.content_hash,
                           "describe": self.describe,
                           "files": len(self.files), "bytes": self.total_bytes, "venv": venv_key,
                           "requirements": list(self.requirements)}, indent=2) + "\n"


def _describe(source: Path) -> str:
    out = _git(source, "describe", "--always", "--dirty") if _is_git_root(source) else None
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", out.strip()) if out and out.strip() else "nogit"
    return text[:40]  # the version stays within the 64 characters the device reports (device/system_metrics.py)


def build_release(source: Path = ROOT, role: ReleaseRole = DEVICE) -> Release:
    """Read the shipped files of `source` (a checkout or a copy of one) for `role` and hash them."""
    source = Path(source).resolve()
    main = f"{role.packages[0]}/__main__.py"
    if not (source / main).is_file():
        raise ReleaseError(f"{source} is not an Aula source tree (no {main})")
    paths = _listed(source, role.shipped)
    if role == DEVICE and not any(p.startswith("models_tflite/") for p in paths):
        raise ReleaseError(f"{source}/models_tflite has no files: the device cannot run without its models")
    if role.unit not in paths:
        raise ReleaseError(f"{source}/{role.unit} is missing")
    files = []
    digest = hashlib.sha256()
    for rel in paths:
        path = source / rel
        st = path.stat()
        f = ShippedFile(rel, st.st_size, bool(st.st_mode & 0o111), sha256_of(path))
        files.append(f)
        digest.update(f"{f.path}\0{int(f.executable)}\0{f.sha256}\n".encode())
    return Release(source, tuple(files), digest.hexdigest(), _describe(source),
                   device_requirements(source, role.extra), role)


# --- the wheelhouse -------------------------------------------------------------------------------------------

def local_target() -> Target:
    libc = platform.libc_ver()
    return Target(platform.machine(), platform.python_version(), libc[1] if libc[0] == "glibc" else "")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def same_platform(target: Target, here: Target | None = None) -> bool:
    """Whether wheels chosen for this machine also run on the device: same CPU, same Python X.Y, and a glibc at
    least as new as this machine's (a wheel built or picked here may need this machine's glibc)."""
    here = here or local_target()
    return (here.machine == target.machine and here.python_xy == target.python_xy
            and bool(here.libc) and bool(target.libc)
            and _version_tuple(target.libc) >= _version_tuple(here.libc))


def platform_tags(target: Target) -> list[str]:
    """pip --platform values for a device: manylinux tags from its glibc down to 2.17, then manylinux2014."""
    arch = {"armv7l": "armv7l", "armv8l": "armv7l"}.get(target.machine, target.machine)
    glibc = _version_tuple(target.libc) if target.libc else (2, 17)
    minor = glibc[1] if len(glibc) > 1 and glibc[0] == 2 else 17
    tags = [f"manylinux_2_{m}_{arch}" for m in range(max(minor, 17), 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


@dataclass(frozen=True)
class Wheelhouse:
    path: Path
    key: str
    cached: bool
    files: int
    bytes: int
    source_builds: tuple[str, ...]  # sdists the device builds itself (no wheel for its platform)


def _pip(args: list[str], log: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"`{' '.join(cmd[2:6])} ...` took longer than {timeout:.0f} s") from None
    log.append(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return done


def _pip_failure(done: subprocess.CompletedProcess, what: str) -> ReleaseError:
    lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "WARNING: Location" not in ln]
    tail = "\n  ".join(lines[-6:])
    return ReleaseError(f"{what} failed (pip exit {done.returncode}):\n  {tail}\nThe device's wheelhouse is made on "
                        "this machine: it needs the package index (or pip's cache holding the packages), and for a "
                        "package without a wheel a compiler and its headers (PyAudio: portaudio19-dev)")


def _pinned(requirements_file: Path, log: list[str]) -> list[str]:
    """The dependency set resolved for this machine, as name==version (pip's dry-run report)."""
    with tempfile.TemporaryDirectory(prefix="aula-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        done = _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                     "-r", str(requirements_file)], log)
        if done.returncode != 0:
            raise _pip_failure(done, "resolving the device's dependencies")
        data = json.loads(report.read_text())
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in data.get("install", []))


def _download_for(target: Target, requirements_file: Path, out: Path, log: list[str]) -> list[str]:
    """Another CPU or Python: the set is resolved here and each pinned package fetched as a wheel for the device;
    one that has no such wheel comes as an sdist, which pip builds on the device (needs a compiler there)."""
    pins = _pinned(requirements_file, log)
    binary = ["download", "--no-deps", "--only-binary=:all:", "--dest", str(out), "--implementation", "cp",
              "--python-version", target.python_xy, "--abi", f"cp{target.python_xy.replace('.', '')}"]
    for tag in platform_tags(target):
        binary += ["--platform", tag]
    if _pip([*binary, *pins], log).returncode == 0:
        return []
    sources: list[str] = []
    for pin in pins:  # find the ones without a wheel for the device
        if _pip([*binary, pin], log).returncode == 0:
            continue
        done = _pip(["download", "--no-deps", "--no-binary=:all:", "--dest", str(out), pin], log)
        if done.returncode != 0:
            raise _pip_failure(done, f"downloading {pin} for {target.machine}")
        sources.append(pin)
    if sources:  # pip builds them on the device, offline: its build backend must be in the wheelhouse too
        done = _pip(["download", "--only-binary=:all:", "--dest", str(out), "setuptools", "wheel"], log)
        if done.returncode != 0:
            raise _pip_failure(done, "downloading setuptools and wheel")
    return sources


def prepare_wheelhouse(release: Release, target: Target, cache: Path = DEFAULT_WHEELHOUSE_CACHE,
                       say: Callable[[str], None] = print) -> Wheelhouse:
    """The device's wheels for the release's dependency set, from the cache or made now (and then cached)."""
    key = release.wheelhouse_key(target)
    final = Path(cache) / key
    marker = final / WHEELHOUSE_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        return Wheelhouse(final, key, True, *_size(final), tuple(info.get("source_builds", ())))
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReleaseError(f"cannot create the wheelhouse cache {cache}: {exc.strerror or exc}") from None
    work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=cache))
    log: list[str] = []
    t = time.monotonic()
    try:
        reqs = work / "requirements.txt"
        reqs.write_text("".join(f"{r}\n" for r in release.requirements))
        if same_platform(target):
            say(f"wheelhouse: pip wheel for this machine's platform ({target.machine}, Python {target.python_xy})")
            done = _pip(["wheel", "--wheel-dir", str(work), "-r", str(reqs)], log)
            if done.returncode != 0:
                raise _pip_failure(done, "pip wheel for the device's dependencies")
            sources: list[str] = []
        else:
            say(f"wheelhouse: pip download for {target.machine}, Python {target.python_xy}, glibc "
                f"{target.libc or 'unknown'} (this machine: {local_target().machine}, Python "
                f"{local_target().python_xy})")
            sources = _download_for(target, reqs, work, log)
        (work / WHEELHOUSE_MARKER).write_text(json.dumps({
            "key": key, "requirements": list(release.requirements), "machine": target.machine,
            "python": target.python_xy, "libc": target.libc, "source_builds": sources,
            "made_s": round(time.monotonic() - t, 1)}, indent=2) + "\n")
        (work / "pip.log").write_text("\n".join(log))
        try:
            work.rename(final)
        except OSError:  # another flash made it meanwhile
            if not marker.is_file():
                raise
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    info = json.loads(marker.read_text())
    return Wheelhouse(final, key, False, *_size(final), tuple(info.get("source_builds", ())))


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    return len(files), sum(p.stat().st_size for p in files)
