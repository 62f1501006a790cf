"""Watch the broker until a device's retained status says `online`, then for its first health message."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device.common.broker_settings import BrokerAddress, parse_broker_url
from device.contract import DeviceTopics, HealthMessage, StatusMessage
from fleet.errors import BrokerUnreachable, FlashError, NotOnline

if TYPE_CHECKING:
    from fleet.flash import FlashOptions, Say


@dataclass
class Online:
    status: StatusMessage
    health: dict | None
    seconds: float


def watch_online(broker: str, certs: Path, account: str, topics: DeviceTopics, timeout: float,
                 since_ms: int | None = None, want_health: bool = True) -> Online:
    """Wait until the device's retained status is `online` (newer than since_ms, device clock), then for its first
    health message; subscribe with `account`'s certificate from the certificates' folder."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise FlashError("paho-mqtt is not installed here, so the broker cannot be watched: `make setup` "
                         "(EXTRAS with device or server)") from None
    address: BrokerAddress = parse_broker_url(broker)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"aula-flash-{account}", protocol=mqtt.MQTTv5)
    if address.tls:
        ca, crt, key = (Path(certs) / "ca.crt", Path(certs) / "clients" / f"{account}.crt",
                        Path(certs) / "clients" / f"{account}.key")
        for path in (ca, crt, key):
            if not path.is_file():
                raise FlashError(f"{path} is missing: watching the broker needs the account {account}'s certificate "
                                 "(`make certs`), or pass WATCH_AS=<an account with read access>")
        client.tls_set(ca_certs=str(ca), certfile=str(crt), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
    cond = threading.Condition()
    state: dict = {"connected": None, "gone": None, "status": [], "health": []}

    def on_connect(c, u, flags, rc, props):
        with cond:
            state["connected"] = rc
            cond.notify_all()
        if not rc.is_failure:
            c.subscribe([(topics.status, 1), (topics.health, 0)])

    def on_disconnect(c, u, flags, rc, props):
        with cond:
            state["gone"] = rc
            cond.notify_all()

    def on_message(c, u, msg):
        with cond:
            state["status" if msg.topic == topics.status else "health"].append((time.monotonic(), msg.payload))
            cond.notify_all()

    client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
    where = f"the broker {address.url}"
    t0 = time.monotonic()
    try:
        client.connect(address.host, address.port, keepalive=30)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerUnreachable(f"{where} presented a certificate that {certs}/ca.crt does not verify "
                                f"({exc.verify_message}); is BROKER the name in the broker's certificate "
                                "(make certs BROKER_HOSTS=...)?") from None
    except ssl.SSLError as exc:
        raise BrokerUnreachable(f"TLS with {where} failed ({exc.reason or exc}); is it the fleet's broker "
                                "(`make broker-setup`) and is BROKER's port the TLS listener?") from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise BrokerUnreachable(f"{where} is down or unreachable ({exc.strerror or type(exc).__name__}): is "
                                "Mosquitto running there (`systemctl status mosquitto`, `make broker-setup`) and "
                                "is the port open? The device is installed; flash again once the broker is up to "
                                "see it come online") from None
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach {where}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        deadline = t0 + timeout
        with cond:
            cond.wait_for(lambda: state["connected"] is not None or state["gone"] is not None, 15)
            rc = state["connected"]
            if rc is None or rc.is_failure:
                why = rc or state["gone"] or "no answer within 15 s"
                raise BrokerUnreachable(f"{where} refused the watcher account {account} ({why}): check that "
                                        "account is in the broker's ACL (`make broker-setup`) and not revoked")
            online_at = None
            while True:
                if state["gone"] is not None:
                    raise BrokerUnreachable(f"{where} closed the watcher's connection ({state['gone']}). The broker "
                                            "keeps one connection per account: if a running server uses "
                                            f"{account}, watch with an account of its own (WATCH_AS=<name>)")
                statuses = _parsed(StatusMessage, state["status"])
                if online_at is None:
                    fresh = [s for s in statuses if since_ms is None or s.ts_ms >= since_ms]
                    if fresh and fresh[-1].state.value == "online":
                        online_at = time.monotonic()
                        status = fresh[-1]
                if online_at is not None:
                    healths = [json.loads(p) for p, h in zip([p for _, p in state["health"]],
                                                              _parsed(HealthMessage, state["health"], keep=True),
                                                              strict=True)
                               if h is not None and (since_ms is None or h.ts_ms >= since_ms)]
                    if healths or not want_health:
                        return Online(status, healths[0] if healths else None, time.monotonic() - t0)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                cond.wait(min(left, 0.5))
            if online_at is not None:
                return Online(status, None, time.monotonic() - t0)
            last = statuses[-1] if statuses else None
            if last is None:
                seen = "no status message at all"
            elif since_ms is not None and last.ts_ms < since_ms:
                seen = f"only an older status ({last.state.value}) from before the restart"
            else:
                seen = f"its status is {last.state.value}" + (f": {last.reason}" if last.reason else "")
            raise NotOnline(f"{topics.status} did not turn online within {timeout:.0f} s; {seen}")
    finally:
        client.disconnect()
        client.loop_stop()


def _parsed(kind, received: list, keep: bool = False) -> list:
    """Messages of the contract's type; one that does not parse is left out (None in its place with keep)."""
    out = []
    for _, payload in received:
        try:
            out.append(kind.from_payload(payload))
        except (ValueError, KeyError, TypeError):
            if keep:
                out.append(None)
    return out


def watcher_account(opts: FlashOptions, say: Say) -> str:
    if opts.watch_as:
        return opts.watch_as
    if (Path(opts.certs) / "clients" / "aula-flash.crt").is_file():
        return "aula-flash"
    say("note: watching as aula-server. The broker makes a certificate's name its client id, so while flash watches, "
        "a running server with that account is disconnected and reconnects; make an account for flash "
        "(run make certs and make broker-setup again: they make the read-only monitor account aula-flash)")
    return "aula-server"
