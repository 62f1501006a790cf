"""The self-check's checks of what lies outside the models: the microphone's level, the broker with the device's
own credentials, and the clock. Each returns a one-line detail or raises with what to fix."""

from __future__ import annotations

import math
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import numpy as np

# Before this the wall clock is surely not set (a Pi without an RTC starts from its image's date or 1970).
CLOCK_FLOOR = 1767225600  # 2026-01-01T00:00:00Z


def microphone_level(config, seconds: float = 1.0) -> str:
    """Read about `seconds` from the configured microphone and report its level in dBFS."""
    from device.audio import build_audio_source

    if config is None:
        return "off (no microphone configured)"
    source = build_audio_source(config)
    source.open()
    chunks, got, t0 = [], 0, time.monotonic()
    try:
        while got < seconds * 16000 and time.monotonic() - t0 < seconds + 3:
            chunk = source.read()
            if chunk is None:
                break
            chunks.append(chunk.samples)
            got += len(chunk.samples)
    finally:
        source.close()
    assert got, f"no audio from the {config.type} microphone within {seconds + 3:.0f} s"
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0
    rms = float(np.sqrt(np.mean(samples**2)))
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    assert level > -90, f"{config.type}: {got / 16000:.1f} s of digital silence; is the microphone muted or unplugged?"
    return f"{config.type}: {got / 16000:.1f} s, level {level:.0f} dBFS"


def broker_reachable(mqtt, password: str | None, timeout: float = 5.0) -> str:
    """Reach the broker with the device's own TLS files or user name.

    With client certificates (mqtts://) the check is the TLS handshake with the device's certificate: the broker
    refuses an unknown or revoked certificate there. It sends no MQTT CONNECT, because the broker makes the
    certificate's name the client id, and a second session under it would take over the running service's.
    With a user name and password it logs in under `<device_id>-selftest`, with a clean session and no will.
    """
    address = mqtt.address
    t0 = time.perf_counter()
    try:
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        raise OSError(f"broker {address.url} is unreachable ({exc.strerror or exc}); check the address, the "
                      "network and that the broker runs") from None
    with raw:
        if address.tls:
            tls = mqtt.tls
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            context.check_hostname = not tls.insecure
            for f in (tls.ca_file, tls.cert_file, tls.key_file):
                if f is not None and not Path(f).is_file():
                    raise OSError(f"{f} is missing or unreadable; the broker cannot be checked without it")
            if tls.cert_file:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            try:
                with context.wrap_socket(raw, server_hostname=address.host) as conn:
                    conn.settimeout(timeout)
                    # TLS 1.3 reports a refused client certificate on the first read, not in the handshake.
                    conn.sendall(b"\xc0\x00")  # PINGREQ before CONNECT: the broker closes the connection
                    try:
                        conn.recv(1)
                    except TimeoutError:
                        pass
                    version = conn.version()
            except ssl.SSLError as exc:
                raise OSError(f"broker {address.url} refused the TLS handshake ({exc.reason or exc}); check "
                              "the CA file, the device's certificate and key, and that it is not revoked") from None
            ms = (time.perf_counter() - t0) * 1000
            who = "with the device's certificate" if tls.cert_file else "without a client certificate"
            return f"{address.url}: {version} handshake {who} accepted in {ms:.0f} ms (no MQTT login: see docs)"
    if not mqtt.username:
        return f"{address.url}: TCP connect in {(time.perf_counter() - t0) * 1000:.0f} ms (anonymous, no login tried)"
    return _login(mqtt, password, timeout, t0)


def _login(mqtt, password: str | None, timeout: float, t0: float) -> str:
    import threading

    from device.common.paho_client import new_client

    done, result = threading.Event(), {}

    def on_connect(client, userdata, flags, reason, properties):
        result["reason"] = reason
        done.set()

    client = new_client(mqtt, f"{mqtt.device_id}-selftest"[:64], clean=True, password=password,
                        log_name=f"{__name__}.paho")
    client.on_connect = on_connect
    client.connect_async(mqtt.address.host, mqtt.address.port, keepalive=10)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise OSError(f"broker {mqtt.address.url} did not answer the login within {timeout:.0f} s")
        reason = result["reason"]
        if reason.is_failure:
            raise OSError(f"broker {mqtt.address.url} refused the login as {mqtt.username!r}: {reason}")
    finally:
        client.disconnect()
        client.loop_stop()
    return f"{mqtt.address.url}: logged in as {mqtt.username!r} in {(time.perf_counter() - t0) * 1000:.0f} ms"


def clock_synchronised(now: float | None = None) -> str:
    """The wall clock is set, and NTP says it is synchronised where systemd can tell."""
    now = time.time() if now is None else now
    assert now >= CLOCK_FLOOR, (f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}: it is not set; "
                                "check the network time (NTP) before the device runs")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if Path("/run/systemd/timesync/synchronized").exists():
        return f"{stamp}, NTP synchronised (systemd-timesyncd)"
    if shutil.which("timedatectl") and Path("/run/systemd/system").is_dir():
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip() in ("yes", "no"):
            assert out.stdout.strip() == "yes", f"{stamp}, but NTP is not synchronised (timedatectl)"
            return f"{stamp}, NTP synchronised (timedatectl)"
    return f"{stamp}, set; whether NTP is synchronised is unknown here (no systemd)"
