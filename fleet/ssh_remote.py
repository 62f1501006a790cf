"""One host over ssh and rsync: the `[user@]host` target, one multiplexed connection that runs commands as root
(sudo -n for another user), and ssh's failures turned into what the technician should do."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device.common.errors import ConfigError
from fleet.errors import FlashError

if TYPE_CHECKING:
    from fleet.flash import FlashOptions


@dataclass(frozen=True)
class SshTarget:
    """`[user@]host`, or `ssh://[user@]host[:port]` (inventory host column or HOST=)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str, port: int | None = None) -> SshTarget:
        raw = text.strip()
        if not raw:
            raise ConfigError("the ssh host is empty: HOST=user@host or ssh://user@host:port")
        if raw.startswith("ssh://"):
            m = re.fullmatch(r"ssh://(?:([^@/]+)@)?(\[[0-9A-Fa-f:.]+\]|[^:/@\[\]]+)(?::(\d+))?/?", raw)
            if not m:
                raise ConfigError(f"ssh host {raw!r} is not ssh://[user@]host[:port]")
            user, host, p = m.group(1), m.group(2).strip("[]"), m.group(3)
            return cls(host, user, int(p) if p else port)
        user, _, host = raw.rpartition("@")
        if not host or any(c in host for c in "/ ") or ("@" in user):
            raise ConfigError(f"ssh host {raw!r} is not [user@]host; for a port use ssh://user@host:port")
        return cls(host.strip("[]"), user or None, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def rsync_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        return self.destination + (f" port {self.port}" if self.port else "")


def ssh_failure(stderr: str, target: SshTarget, opts: FlashOptions) -> FlashError:
    """Turn ssh's stderr (exit 255) into what the technician should do."""
    text = stderr.strip()
    port = target.port or 22
    if "Could not resolve hostname" in text:
        return FlashError(f"cannot resolve the host name {target.host!r}: check the name in HOST or the inventory, "
                          "or use the device's IP address")
    if "Connection refused" in text:
        return FlashError(f"cannot reach {target.host}: connection refused on port {port}. Is the device on and "
                          "running sshd (`sudo systemctl enable --now ssh` on it), and is the port right?")
    if any(s in text for s in ("timed out", "No route to host", "Network is unreachable", "Host is unreachable")):
        reason = next(s for s in ("timed out", "No route to host", "Network is unreachable", "Host is unreachable")
                      if s in text)
        return FlashError(f"cannot reach {target.host} (port {port}): {reason.lower()} after up to "
                          f"{opts.connect_timeout} s. Check that the device is powered and on this network "
                          f"(`ping {target.host}`) and that the address is right")
    if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
        where = opts.known_hosts or "~/.ssh/known_hosts"
        forget = f"ssh-keygen -R {target.host}" + ("" if opts.known_hosts is None else f" -f {where}")
        return FlashError(f"the host key of {target.host} does not match {where}. If the device was reinstalled, "
                          f"remove its old key (`{forget}`) and flash again; if not, stop: something else answers "
                          "at that address")
    if "Permission denied" in text or "Too many authentication failures" in text:
        key = f"the key {opts.identity}" if opts.identity else "your ssh keys (ssh-agent, ~/.ssh/id_*)"
        user = target.user or "your user name"
        return FlashError(f"{target.destination} refused {key} (permission denied). Put your public key on the "
                          f"device (`ssh-copy-id {target.destination}`), or pass the right one with SSH_KEY=..., "
                          f"and check the user ({user}) is allowed to log in")
    last = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return FlashError(f"ssh to {target} failed: {last[-1] if last else 'no message'}")


def _space_error(text: str) -> bool:
    return "No space left on device" in text or "Errno 28" in text


class Remote:
    """One device over one multiplexed ssh connection; commands run as root (sudo -n for another user)."""

    def __init__(self, target: SshTarget, opts: FlashOptions):
        self.target, self.opts = target, opts
        self._dir = tempfile.mkdtemp(prefix="aula-ssh-")
        self.control = f"{self._dir}/c"
        self.sudo: list[str] = []
        self._master = False

    def ssh_options(self) -> list[str]:
        o = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.opts.connect_timeout}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", f"ControlPath={self.control}"]
        if self.opts.known_hosts is not None:
            o += ["-o", f"UserKnownHostsFile={self.opts.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        else:
            o += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.opts.identity is not None:
            o += ["-i", str(self.opts.identity), "-o", "IdentitiesOnly=yes"]
        if self.target.port:
            o += ["-p", str(self.target.port)]
        return o

    def connect(self) -> None:
        """Open the shared connection (the error, if any, says why) and find out whether sudo is needed."""
        if shutil.which("ssh") is None:
            raise FlashError("ssh is not installed here (`sudo apt install openssh-client`)")
        with tempfile.TemporaryFile(mode="w+") as err:
            # -f: ssh backgrounds itself once logged in; its stderr goes to a file, not a pipe that it would
            # hold open for as long as the shared connection lives.
            try:
                done = subprocess.run(["ssh", "-M", "-N", "-f", "-o", "ControlPersist=600", *self.ssh_options(),
                                       self.target.destination], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=self.opts.connect_timeout * 3 + 15)
            except subprocess.TimeoutExpired:
                raise FlashError(f"cannot reach {self.target}: no answer within {self.opts.connect_timeout * 3 + 15} s"
                                 f" (check `ping {self.target.host}`)") from None
            err.seek(0)
            if done.returncode != 0:
                raise ssh_failure(err.read(), self.target, self.opts)
        self._master = True
        uid = self.run("id -u", raw=True).strip()
        if uid != "0":
            check = self.run("sudo -n true", check=False, raw=True)
            if check.returncode != 0:
                raise FlashError(f"{self.target.destination} is not root and cannot use sudo without a password: "
                                 f"log in as root@{self.target.host}, or allow passwordless sudo for that user")
            self.sudo = ["sudo", "-n"]

    def _command(self, script: str, args: tuple[str, ...]) -> str:
        return shlex.join([*self.sudo, "sh", "-c", script, "sh", *args])

    def run(self, script: str, *args: str, input: bytes | str | None = None, check: bool = True,
            timeout: float = 600, raw: bool = False, what: str | None = None):
        """Run `script` with `sh -c` on the device (arguments as $1...), as root. With check, return its stdout
        or raise FlashError; without, return the CompletedProcess (text). raw: as the login user, no sudo."""
        data = input.encode() if isinstance(input, str) else input
        remote = shlex.join([*([] if raw else self.sudo), "sh", "-c", script, "sh", *args])
        cmd = ["ssh", *self.ssh_options(), self.target.destination, remote]
        try:
            done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout,
                                  stdin=None if data is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{what or 'a command'} on {self.target} did not finish within {timeout:.0f} s") from None
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        if done.returncode == 255 and not out and (err.startswith("ssh:") or "Permission denied" in err
                                                   or "Connection" in err or not err.strip()):
            raise ssh_failure(err or "the connection was lost", self.target, self.opts)
        if not check:
            return subprocess.CompletedProcess(cmd, done.returncode, out, err)
        if done.returncode != 0:
            text = (err or out).strip()
            if _space_error(text):
                raise FlashError(f"the device {self.target.host} ran out of space during {what or 'a command'}: "
                                 f"{_last_lines(text, 3)}; free space there (`df -h`) and flash again")
            raise FlashError(f"{what or 'a command'} failed on {self.target} (exit {done.returncode}):\n"
                             f"  {_last_lines(text, 12, indent='  ')}")
        return out

    def put(self, path: str, data: bytes, mode: str = "0644", owner: str = "") -> None:
        """Write a file on the device atomically, created with a private mode before it is renamed into place."""
        self.run('set -eu; p="$1"; t="$p.aula-tmp"; mkdir -p "$(dirname "$p")"; (umask 077; cat > "$t"); '
                 'chmod "$2" "$t"; if [ -n "$3" ]; then chown "$3" "$t"; fi; mv -f "$t" "$p"',
                 path, mode, owner, input=data, what=f"writing {path}")

    def rsync(self, args: list[str], what: str, timeout: float = 3600) -> float:
        if shutil.which("rsync") is None:
            raise FlashError("rsync is not installed here (`sudo apt install rsync`)")
        cmd = ["rsync", "-e", shlex.join(["ssh", *self.ssh_options()])]
        if self.sudo:
            cmd += ["--rsync-path", "sudo -n rsync"]
        t = time.monotonic()
        try:
            done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FlashError(f"copying {what} to {self.target} took longer than {timeout:.0f} s") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            if _space_error(text):
                raise FlashError(f"the device {self.target.host} ran out of space while copying {what}; free space "
                                 "there (`df -h`; old releases are under /opt/aula/releases) and flash again")
            raise FlashError(f"copying {what} to {self.target} failed (rsync exit {done.returncode}):\n"
                             f"  {_last_lines(text, 8, indent='  ')}")
        return time.monotonic() - t

    def close(self) -> None:
        if self._master:
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={self.control}", self.target.destination],
                           capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
            self._master = False
        shutil.rmtree(self._dir, ignore_errors=True)


def _last_lines(text: str, n: int, indent: str = "") -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return f"\n{indent}".join(lines[-n:]) if lines else "(no output)"
