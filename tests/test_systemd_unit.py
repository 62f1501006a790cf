"""The device's systemd unit: required directives, hardening, and systemd's own verifier."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "aula-device.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_unit_has_notify_watchdog_restart_and_ordering():
    u = _unit()
    svc, unit = u["Service"], u["Unit"]
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "always" and "StartLimitBurst" in unit and "StartLimitIntervalSec" in unit
    assert "network-online.target" in unit["After"] and "network-online.target" in unit["Wants"]
    assert svc["RestartPreventExitStatus"] == "2"  # config errors do not crash-loop
    assert "device run" in svc["ExecStart"] and "validate-config" in svc["ExecStartPre"]


def test_unit_is_hardened_with_only_the_state_directory_writable():
    svc = _unit()["Service"]
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict" and svc["PrivateTmp"] == "yes"
    assert svc["StateDirectory"] == "aula" and "ReadWritePaths" not in svc
    assert set(svc["SupplementaryGroups"].split()) == {"video", "audio"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/aula/.venv/bin/python", sys.executable))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
