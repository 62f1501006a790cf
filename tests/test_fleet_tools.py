"""The fleet inventory and the certificate authority of `python -m fleet` (make certs, revoke-cert)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from device.common.errors import ConfigError
from fleet.broker_config import Feed, check_accounts, read_feeds
from fleet.certs import CertificateAuthority
from fleet.inventory import read_inventory

ROOT = Path(__file__).resolve().parent.parent


def _csv(tmp_path: Path, text: str, name: str = "fleet.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_inventory_reads_rows_and_skips_blank_lines_and_comments(tmp_path):
    rows = read_inventory(_csv(tmp_path, "site,room,device,host\n\nschool1,r1,pi-1,aula@10.0.0.5\n"
                                         "# school1,r2,pi-old,\nschool1,r2,pi-2,\n"))
    assert [(r.device, r.host, r.line) for r in rows] == [("pi-1", "aula@10.0.0.5", 3), ("pi-2", None, 5)]


@pytest.mark.parametrize(("text", "message"), [
    ("site,room\nschool1,r1\n", ":1: the header must name the columns"),
    ("site,room,device,colour\nschool1,r1,pi-1,red\n", ":1: unknown column(s) colour"),
    ("site,room,device\nschool1,r1,pi-1\nschool1,r2,pi/2\n", ":3: device 'pi/2' must be"),
    ("site,room,device\nschool1,r1,pi-1\nschool1,,pi-2\n", ":3: room is empty"),
    ("site,room,device\nschool1,r1,pi-1\nschool1,r2,pi-1\n", ":3: device 'pi-1' is already on line 2"),
    ("site,room,device\nschool1,r1,pi-1,extra\n", ":2: more fields than the header"),
    ("site,room,device\n", "no devices"),
])
def test_a_bad_inventory_row_is_an_error_naming_its_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        read_inventory(_csv(tmp_path, text))
    assert message in str(err.value)


def test_feeds_group_rooms_and_names_must_not_collide(tmp_path):
    feeds = read_feeds(_csv(tmp_path, "feed,site,room\nhall,s1,r1\nhall,s1,r2\n", "feeds.csv"))
    assert feeds == [Feed("hall", (("s1", "r1"), ("s1", "r2")))]
    devices = read_inventory(_csv(tmp_path, "site,room,device\ns1,r1,hall\n"))
    with pytest.raises(ConfigError, match="used twice"):
        check_accounts(devices, ["aula-server"], feeds)


def test_certificates_are_made_once_and_kept(tmp_path):
    ca = CertificateAuthority(tmp_path / "certs")
    ca.broker(["mqtt.school.lan", "10.0.0.5"])
    ca.client("pi-1", "device")
    ca.write_crl()
    assert len(ca.report.created) == 3
    key = (tmp_path / "certs" / "clients" / "pi-1.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    before = {p.name: p.read_bytes() for p in (tmp_path / "certs").rglob("*") if p.is_file()}

    again = CertificateAuthority(tmp_path / "certs")
    again.broker(["mqtt.school.lan", "10.0.0.5"])
    again.client("pi-1", "device")
    again.write_crl()
    assert again.report.created == [] and again.report.renewed == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "certs").rglob("*") if p.is_file()} == before

    # A new broker address re-issues the broker's certificate on the same key.
    third = CertificateAuthority(tmp_path / "certs")
    third.broker(["mqtt.school.lan", "10.0.0.6"])
    assert third.report.renewed == ["broker mqtt.school.lan (its names changed)"]
    assert (tmp_path / "certs" / "broker.key").read_bytes() == before["broker.key"]
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "certs" / "ca.crt"), "-crl_check",
                             "-CRLfile", str(tmp_path / "certs" / "crl.pem"),
                             str(tmp_path / "certs" / "clients" / "pi-1.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_revoking_moves_the_key_aside_and_a_new_run_makes_a_new_one(tmp_path):
    ca = CertificateAuthority(tmp_path / "c")
    ca.client("pi-1", "device")
    old_key = (tmp_path / "c" / "clients" / "pi-1.key").read_bytes()
    serial = ca.revoke("pi-1")
    assert not (tmp_path / "c" / "clients" / "pi-1.key").exists()
    revoked = next((tmp_path / "c" / "revoked").glob("pi-1-*.crt"))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "c" / "ca.crt"), "-crl_check",
                             "-CRLfile", str(tmp_path / "c" / "crl.pem"), str(revoked)], capture_output=True, text=True)
    assert verify.returncode != 0 and "revoked" in (verify.stdout + verify.stderr)
    fresh = CertificateAuthority(tmp_path / "c")
    fresh.client("pi-1", "device")
    assert (tmp_path / "c" / "clients" / "pi-1.key").read_bytes() != old_key
    assert serial in fresh.revoked_serials()
    with pytest.raises(ConfigError, match="no certificate for 'nobody'"):
        fresh.revoke("nobody")


def test_the_cli_says_what_to_fix(tmp_path):
    bad = _csv(tmp_path, "site,room,device\ns1,r1,pi-1\ns1,r1,pi-1\n")
    out = subprocess.run([sys.executable, "-m", "fleet", "certs", "--dir", str(tmp_path / "c"), "--broker-host",
                          "localhost", "--inventory", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{bad}:3: device 'pi-1' is already on line 2" in out.stderr
    assert "Traceback" not in out.stderr
    none = subprocess.run([sys.executable, "-m", "fleet", "broker-config", "--certs", str(tmp_path / "none"), "--out",
                           str(tmp_path / "b"), "--inventory", str(_csv(tmp_path, "site,room,device\ns1,r1,pi-1\n"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "run `make certs` first" in none.stderr
