"""`make rollout`: a release to a chosen group of devices (by id, by room, or a share of the fleet).

Each chosen device is flashed as `make flash` does (fleet/flash.py): the device checks the release's sha256
sums before the switch, and a device whose self-check fails after the switch goes back to its previous release.
Devices outside the group are not contacted at all. VERSION is a git ref (a tag or commit) exported into
artifacts/rollout/<ref>/ with `git archive`, or the working tree when it is empty.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from pathlib import Path

from device.common.errors import ConfigError
from fleet.inventory import DeviceRow

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "artifacts" / "rollout"


def _stable(device: str) -> str:
    return hashlib.sha256(device.encode()).hexdigest()


def select_devices(rows: list[DeviceRow], devices: list[str] | None = None, rooms: list[str] | None = None,
                   percent: float | None = None) -> list[DeviceRow]:
    """The group: named devices, the devices of named rooms (`room` or `site/room`), and/or a share of the rest.

    A percentage picks by a hash of the device id, so 10% today and 25% tomorrow is the same 10% plus more, and
    never depends on the order of the inventory. Naming a device or room the inventory lacks is an error.
    """
    if not (devices or rooms or percent):
        raise ConfigError("choose the devices: DEVICES=pi-1,pi-2, ROOMS=room101 (or site/room), or PERCENT=10")
    by_id = {r.device: r for r in rows}
    chosen: dict[str, DeviceRow] = {}
    for name in devices or []:
        if name not in by_id:
            raise ConfigError(f"DEVICES: {name!r} is not in the inventory (it has: {', '.join(by_id)})")
        chosen[name] = by_id[name]
    for room in rooms or []:
        hits = [r for r in rows if room in (r.room, f"{r.site}/{r.room}")]
        if not hits:
            raise ConfigError(f"ROOMS: no device of the inventory is in {room!r}")
        chosen.update((r.device, r) for r in hits)
    if percent:
        if not 0 < percent <= 100:
            raise ConfigError(f"PERCENT must be more than 0 and at most 100, not {percent:g}")
        ranked = sorted(rows, key=lambda r: _stable(r.device))
        chosen.update((r.device, r) for r in ranked[:math.ceil(len(rows) * percent / 100)])
    return [r for r in rows if r.device in chosen]  # inventory order


def export_ref(ref: str, source: Path = ROOT) -> Path:
    """A clean tree of `ref` (what git tracks at that commit), made once per commit."""
    found = subprocess.run(["git", "-C", str(source), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise ConfigError(f"VERSION {ref!r} is not a tag or commit of {source} ({found.stderr.strip()})")
    commit = found.stdout.strip()
    out = EXPORTS / commit[:12]
    if (out / "device" / "__main__.py").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(source), "archive", commit], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, capture_output=True)
    archive.wait()
    if archive.returncode or untar.returncode:
        raise ConfigError(f"cannot export {ref}: {untar.stderr.decode(errors='replace').strip()}")
    tmp.rename(out)
    return out
