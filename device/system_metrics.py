"""Host figures for the health message: CPU load, temperature, memory, without extra dependencies."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """Return the instruction-set flags /proc/cpuinfo lists (x86 `flags`, Arm `Features`); empty if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_temperature_c() -> float | None:
    """Return the SoC temperature in degrees C (Pi and Jetson expose thermal zones), or None."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def rss_mb() -> float:
    """Return this process's resident memory in MiB (current, from /proc; peak as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_rss_mb() -> float:
    """Return this process's peak resident memory in MiB.

    VmHWM from /proc belongs to this program's own memory map. getrusage's ru_maxrss, the fallback, survives
    execve, so it can report the peak of whatever process forked and then exec'd this one (a large test runner).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory_available_mb() -> float | None:
    """Return the host's available memory in MiB, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


RELEASE_FILE = Path(__file__).resolve().parent.parent / "RELEASE"


def release_version() -> str | None:
    """The installed release (the RELEASE file `make flash` writes at the tree's root), or None in a checkout."""
    try:
        text = RELEASE_FILE.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:64] if text and text.isprintable() else None


def host_metrics() -> dict:
    """Return CPU load, temperature and memory figures, and the installed release."""
    load1, load5, _ = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_load_1m": round(load1, 2),
        "cpu_load_5m": round(load5, 2),
        "cpu_count": os.cpu_count(),
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_temp_c": cpu_temperature_c(),
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "mem_available_mb": memory_available_mb(),
        "release": release_version(),
    }
