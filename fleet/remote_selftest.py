"""`make selftest HOST=..`: the device's self-check over ssh, as a pass/fail table.

It runs the installed release's `python -m device selftest` with the installed config. Outside the unit the
broker key is not at the credential path the config names, so the check is given the installed files
(/etc/aula/certs: ca.crt, device.crt, device.key, the key readable by root). A running `aula-device` holds the
camera, so it is stopped for the check and started again afterwards; the technician is told.
"""

from __future__ import annotations

from fleet.errors import FlashError
from fleet.flash import FlashOptions, Say
from fleet.ssh_remote import Remote, SshTarget

UNIT = "aula-device.service"


def remote_selftest(host: str, opts: FlashOptions, say: Say = print) -> int:
    """Run the self-check on `host`; return its exit status (0: every check passed)."""
    target = SshTarget.parse(host)
    root = opts.root
    remote = Remote(target, opts)
    try:
        remote.connect()
        installed = remote.run('[ -x "$1/opt/aula/current/.venv/bin/python" ] && echo yes || echo no', root).strip()
        if installed != "yes":
            raise FlashError(f"no Aula release is installed on {target.host} ({root or ''}/opt/aula/current): "
                             "flash it first (make flash)")
        running = (not root and remote.run("[ -d /run/systemd/system ] && systemctl is-active " + UNIT
                                           + " || true", check=False).stdout.strip() == "active")
        if running:
            say(f"{UNIT} is running: stopped for the check (it holds the camera), started again after it")
            remote.run(f"systemctl stop {UNIT}", what=f"systemctl stop {UNIT}")
        try:
            certs = f"{root}/etc/aula/certs"
            done = remote.run('cd "$1/opt/aula/current" && T=""; [ -r "$3/device.key" ] && T="--tls-dir=$3"; '
                              './.venv/bin/python -m device selftest --config "$2" --camera config $T',
                              root, f"{root}/etc/aula/device.yaml", certs, check=False, timeout=600)
        finally:
            if running:
                remote.run(f"systemctl start {UNIT}", what=f"systemctl start {UNIT}")
        for line in (done.stdout or "").rstrip().splitlines():
            say(line)
        if done.returncode not in (0, 1):
            say((done.stderr or "").strip()[-2000:])
        return done.returncode
    finally:
        remote.close()
