"""What every benchmark prints first: the CPU model and its relevant flags, the date and the commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from device.system_metrics import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
_RELEVANT = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
             "asimddp", "i8mm")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": [f for f in _RELEVANT if f in flags],
        "date": datetime.date.today().isoformat(),
        "commit": commit,
    }


def banner(info: dict) -> str:
    flags = ", ".join(info["flags"]) or "none of the int8/bf16 dot-product flags"
    return f"CPU: {info['cpu']} ({info['cores']} cores; {flags}); {info['date']}, commit {info['commit']}"


def write_artifact(name: str, data: dict) -> Path:
    """Write a benchmark's figures as JSON to artifacts/<name>; return the path."""
    import json

    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    path = out / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
