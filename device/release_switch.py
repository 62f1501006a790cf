"""Switch the device to an installed release, on the device itself: check, switch, self-check, or go back.

`python -m device switch-release ROOT VERSION` runs from the new release (with its venv) under `ROOT`
(`/opt/aula`). In order:

1. every model file of `ROOT/releases/VERSION` is checked against its manifest's sha256 sums; on a mismatch
   nothing changes (exit 3);
2. a new config, if given, replaces the old one (kept as `<config>.previous`);
3. `current` (and the release's `.venv`, and the compatibility links beside `current`) point at the new release,
   each a new link renamed over the old one, so a power cut leaves one release or the other, never neither;
4. the installed tree's own self-check runs through `current`, as the unit will run it;
5. if it fails, the device goes back to the previous release and config by itself, restarts the unit when asked
   to, and exits 4 with the reason (also when there is nothing to go back to: a first install stays as it is).

The device does all of it without the technician's laptop: a hang-up of the ssh session that started it (SIGHUP,
or a closed stdout) does not stop it halfway. Every step is also appended to `ROOT/switch.log`, and the outcome
is written to `ROOT/switch.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REFUSED, CHECK_FAILED, STUCK = 3, 4, 5  # exit statuses; 4: rolled back where there was something to go back to
SELFTEST_TIMEOUT_S = 600


@dataclass
class SwitchPlan:
    """What to switch: the release folder `root/releases/version`, and what goes with it."""

    root: Path
    version: str
    venv: str | None = None  # point the release's .venv at root/venvs/<venv> first
    links: tuple[str, ...] = ()  # links beside `current` that point into it, e.g. ".venv" for the unit's paths
    config: Path | None = None  # the device's config, checked by the self-check
    new_config: Path | None = None  # moved over `config` with the switch, put back on a rollback
    restart_unit: str | None = None  # restarted after a rollback (the unit was running before the switch)
    selftest: tuple[str, ...] = ("--camera", "config", "--no-broker")


@dataclass
class _Log:
    path: Path

    def say(self, line: str) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
        except OSError:
            pass
        try:
            print(line, flush=True)
        except OSError:  # the ssh session that started this is gone: carry on, the log file has it
            pass


def point(link: Path, target: str) -> None:
    """Make `link` a symlink to `target` by renaming a new link over it (atomic; never a moment without one)."""
    if os.path.islink(link) and os.readlink(link) == target:
        return
    tmp = link.with_name(link.name + ".aula-new")
    if os.path.lexists(tmp):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def current_release(root: Path) -> str | None:
    """The release `root/current` points at, or None."""
    try:
        return Path(os.readlink(root / "current")).name
    except OSError:
        return None


def _switch_links(plan: SwitchPlan, version: str) -> None:
    release = plan.root / "releases" / version
    if plan.venv and version == plan.version:
        point(release / ".venv", f"../../venvs/{plan.venv}")
    point(plan.root / "current", f"releases/{version}")
    for name in plan.links:
        point(plan.root / name, f"current/{name}")


def _verify(release: Path) -> list[str]:
    from device.model_store import verify_all

    return [f"{path.name}: {problem}" for _, path, problem in verify_all(release / "models_tflite") if problem]


def _self_check(plan: SwitchPlan) -> tuple[bool, list[str]]:
    current = plan.root / "current"
    config = ["--config", str(plan.config)] if plan.config else []
    command = [str(current / ".venv" / "bin" / "python"), "-m", "device", "selftest", *config, *plan.selftest]
    try:
        done = subprocess.run(command, cwd=current, capture_output=True, text=True, timeout=SELFTEST_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, [f"the self-check did not run: {exc}"]
    lines = (done.stdout or "").strip().splitlines()
    if done.returncode == 0:
        return True, lines
    failed = [ln for ln in lines if "  FAIL  " in ln]
    tail = (done.stderr or "").strip().splitlines()[-6:]
    return False, [f"selftest exit {done.returncode}", *(failed + lines[-1:] if lines else tail)]


def _write_outcome(root: Path, outcome: dict) -> None:
    path = root / "switch.json"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def switch_release(plan: SwitchPlan) -> tuple[int, dict]:
    """Carry out `plan`; return (exit status, outcome). The outcome is also written to root/switch.json."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # finish (or go back) even if the session that started it ends
    root, version = plan.root, plan.version
    log = _Log(root / "switch.log")
    previous = current_release(root)
    outcome = {"to": version, "from": previous, "started": time.time()}

    def done(code: int, result: str, reason: str | None = None) -> tuple[int, dict]:
        outcome.update(result=result, reason=reason, finished=time.time(), current=current_release(root))
        _write_outcome(root, outcome)
        log.say(f"result: {json.dumps({k: v for k, v in outcome.items() if k not in ('started', 'finished')})}")
        return code, outcome

    release = root / "releases" / version
    if not (release / "models_tflite").is_dir():
        return done(REFUSED, "refused", f"{release} is not an installed release (no models_tflite/)")
    bad = _verify(release)
    if bad:
        for line in bad:
            log.say(f"FAIL  {line}")
        return done(REFUSED, "refused", f"release {version} does not match its manifest on the device (nothing was "
                                        f"switched; current stays {previous or 'unset'})")
    log.say(f"sha256: every model of release {version} matches its manifest")

    config_backup = None
    if plan.new_config is not None and plan.config is not None:
        if plan.config.exists():
            config_backup = plan.config.with_name(plan.config.name + ".previous")
            shutil.copy2(plan.config, config_backup)  # with its mode, as `cp -p`
        os.replace(plan.new_config, plan.config)
        log.say(f"config {plan.config}: the new one is in place" + (" (old one kept as .previous)"
                                                                    if config_backup else ""))
    _switch_links(plan, version)
    log.say(f"current -> releases/{version}" + (" (first release)" if previous is None else " (unchanged)"
                                                 if previous == version else f" (was {previous})"))

    ok, table = _self_check(plan)
    for line in table:
        log.say(f"  {line}")
    if ok:
        return done(0, "switched")
    failed = [" ".join(ln.split()) for ln in table if "FAIL" in ln]
    reason = f"self-check failed after the switch ({table[0]}): " + "; ".join(failed or table[1:] or ["no detail"])
    go_back = previous is not None and previous != version
    if not go_back and config_backup is None:
        return done(CHECK_FAILED, "failed",
                    f"{reason}; no previous release or config to go back to: release {version} stays current")
    undone = []
    try:
        if go_back:
            _switch_links(plan, previous)
            undone.append(f"current -> releases/{previous}")
        if config_backup is not None:
            os.replace(config_backup, plan.config)
            undone.append("previous device.yaml restored")
        if plan.restart_unit and Path("/run/systemd/system").is_dir():
            subprocess.run(["systemctl", "restart", plan.restart_unit], check=False, timeout=120,
                           stdin=subprocess.DEVNULL, capture_output=True)
            undone.append(f"{plan.restart_unit} restarted")
    except (OSError, subprocess.SubprocessError) as exc:
        return done(STUCK, "stuck", f"{reason}; going back failed ({'; '.join(undone) or 'nothing undone'}): {exc}")
    outcome["undone"] = undone
    log.say("rolled back on the device: " + "; ".join(undone))
    return done(CHECK_FAILED, "rolled-back", reason)
