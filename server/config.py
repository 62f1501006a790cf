"""Server settings: broker, database, HTTP, retention, summaries; strict, every field documented."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from device.common.broker_settings import BrokerConnection
from device.common.config_loader import StrictModel, load_yaml_model
from server.health_trend import TREND_SAMPLES


def _default_client_id() -> str:
    # Fixed per machine, so the broker keeps this instance's persistent session across restarts.
    return f"aula-server-{socket.gethostname()}"[:64]


def parse_database_url(url: str) -> tuple[str, str]:
    """Return (kind, target): ('sqlite', path) or ('postgresql', conninfo URL); ValueError says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("database URL is empty; expected sqlite:///path or postgresql://host/db")
    url = url.strip()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute (SQLAlchemy's rule)
        if not path:
            raise ValueError("sqlite URL has no path; write sqlite:///relative.db or sqlite:////absolute.db")
        return "sqlite", path
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        if parts.password:
            # A password in a URL ends up in process lists and logs.
            raise ValueError("database URL must not carry a password; set database.password_env")
        return "postgresql", url
    raise ValueError(f"database URL {url!r} is not supported; use sqlite:///path or postgresql://user@host:port/db")


def parse_listen(value: str) -> tuple[str, int]:
    """Parse `HOST:PORT` (IPv6 as `[::1]:8080`)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {value!r} must be HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


class ServerMqttConfig(BrokerConnection):
    """How the server reaches the broker and subscribes to the devices' topics."""

    client_id: str = Field(
        default_factory=_default_client_id,
        description="MQTT client id; fixed per instance so the broker keeps its session (and queued events) "
        "while the server restarts. Two instances must not share one.",
    )
    persistent_session: bool = Field(
        True, description="Keep the broker-side session (clean_start/clean_session false), so nothing is lost."
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, le=2**32 - 1, description="MQTT 5: how long the broker keeps the session while away."
    )
    shared_group: str | None = Field(
        None,
        description="Subscribe to events and health as $share/<group>/... so instances with the same group split "
        "the load; each instance then also follows all events with a QoS 0 live feed for its dashboards.",
    )
    ack_after_commit: bool = Field(
        True,
        description="Acknowledge each QoS 1 event only after its batch is committed, so a crash loses nothing; "
        "the broker redelivers what was not acknowledged.",
    )
    receive_maximum: int = Field(
        2000,
        ge=20,
        le=65535,
        description="MQTT 5: most unacknowledged events the broker may send at once (with 3.1.1 the broker's "
        "max_inflight_messages decides).",
    )

    @field_validator("client_id", "shared_group")
    @classmethod
    def _level(cls, value: str | None, info) -> str | None:
        if value is not None and (
            not value or len(value) > 64 or any(c in value for c in "/+#$") or not value.isprintable()
        ):
            raise ValueError(f"{info.field_name} must be 1-64 printable characters without '/', '+', '#' or '$'")
        return value


class DatabaseConfig(StrictModel):
    """Where events, aggregates, users and sessions are stored."""

    url: str = Field(
        "sqlite:///aula-server.sqlite3",
        description="sqlite:///relative/path, sqlite:////absolute/path (e.g. sqlite:////var/lib/aula/server.sqlite3), "
        "or postgresql://user@host:port/db.",
    )
    password_env: str | None = Field(None, description="PostgreSQL: environment variable that holds the password.")
    batch_max: int = Field(1000, ge=1, le=20_000, description="Most messages written in one transaction.")
    queue_max: int = Field(
        50_000,
        ge=100,
        description="Most messages waiting for the writer; when full, intake waits (and the broker buffers).",
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "normal",
        description="SQLite synchronous mode: normal survives a process crash, full also a power cut (an fsync "
        "per batch).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_database_url(value)
        return value.strip()

    @property
    def kind(self) -> str:
        return parse_database_url(self.url)[0]


class HttpConfig(StrictModel):
    """The dashboard and JSON API."""

    listen: str = Field(
        "127.0.0.1:8080", description="HOST:PORT to serve on; other machines reach it through TLS (docs/server.md)."
    )
    tls_certfile: Path | None = Field(
        None, description="PEM certificate chain: serve HTTPS itself (uvicorn's ssl_certfile), without a proxy."
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile (uvicorn's ssl_keyfile).")
    secure_cookies: bool = Field(
        False,
        description="Mark the session cookie Secure for loopback clients on plain HTTP too (clients on other "
        "machines always get a Secure cookie).",
    )
    insecure_http_login: bool = Field(
        False,
        description="Allow logins over plain HTTP from other machines (a closed test network only: passwords and "
        "cookies then cross the network readable). Off: such a login is refused with a message about TLS.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-For/-Proto headers are trusted (uvicorn's option)."
    )
    metrics_token_env: str | None = Field(
        None,
        description="Environment variable holding a token for /metrics (sent as `Authorization: Bearer <token>`); "
        "without one, /metrics answers loopback clients only (a Prometheus on the same host).",
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="Login sessions expire after this many hours.")
    login_backoff_s: float = Field(
        1.0, gt=0, le=60, description="After a failed login, that client address waits this long before trying the "
        "same user name again; each further failure doubles the wait."
    )
    login_backoff_max_s: float = Field(300.0, gt=0, le=86400, description="Longest wait after failed logins.")
    login_address_factor: int = Field(
        10, ge=1, le=1000, description="A client address also waits (with the same doubling) after this many times "
        "as many failures across all user names."
    )
    login_table_size: int = Field(
        10_000, ge=100, le=10_000_000, description="Most (address, user name) and address entries remembered; the "
        "least recently failed is forgotten first."
    )
    content_security_policy: str = Field(
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        description="Content-Security-Policy header of every response; all assets are local.",
    )
    sse_ping_s: float = Field(
        15.0, gt=0, le=300, description="Seconds between keep-alive comments on a stream, and between checks that "
        "its caller may still watch (session, token, account and room access); a stream that fails one ends."
    )
    sse_queue: int = Field(
        2000, ge=10, description="Most events buffered per stream client; a slow client loses the oldest."
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("http.tls_certfile and http.tls_keyfile go together")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class IntakeConfig(StrictModel):
    """Which event times the server believes, and how much any sender can make it hold or write."""

    max_age_s: float = Field(
        3 * 24 * 3600.0, gt=0, description="Events whose window started longer ago than this are refused (too_old); "
        "a device's offline queue keeps events as long by default (mqtt.queue.max_age_s)."
    )
    max_ahead_s: float = Field(
        300.0, ge=0, le=24 * 3600, description="Events whose window ends further in the future than this are "
        "refused (future): they would pin a room's current mood and escape retention."
    )
    # Bounds on what senders can make the server hold; a message over a bound is refused and counted by reason.
    new_devices_per_site: int = Field(
        200, ge=1, description="Most unassigned devices tracked per site; a message from a further unknown device "
        "of that site is refused (unknown_device) until one is assigned or forgotten (new_device_ttl_s)."
    )
    new_devices_total: int = Field(
        5000, ge=1, description="Most unassigned devices tracked over all sites (site ids are chosen by senders too)."
    )
    new_device_ttl_s: float = Field(
        86_400.0, gt=0, description="A never-assigned device not heard from for this long is forgotten: removed "
        "from memory and from the devices table (its stored events stay and count if it comes back and is assigned)."
    )
    device_rate_per_s: float = Field(
        100.0, gt=0, description="Messages per second one device may send on average (a token bucket); more is "
        "refused (rate_limited). A device sends a backlog at mqtt.drain_rate, 50 events/s by default."
    )
    device_burst: int = Field(
        2000, ge=1, description="Messages one device may send at once above device_rate_per_s (the bucket's size)."
    )
    unassigned_events_max: int = Field(
        500_000, ge=0, description="Most raw events stored from devices not assigned to a room; beyond it their "
        "events are refused (unassigned_full). About 0.7 KiB each."
    )
    quarantine_max: int = Field(
        10_000, ge=0, description="Most events kept in quarantine (a newer schema than this release reads, for "
        "`python -m server replay-quarantine` after an upgrade); beyond it they are refused (quarantine_full)."
    )


class RetentionConfig(StrictModel):
    """How long raw events are kept; aggregates are what the dashboard reads."""

    raw_days: float = Field(
        30.0, gt=0, description="Raw events (and quarantined ones) received longer ago than this are deleted; "
        "the server's clock decides, not the event's window times."
    )
    aggregate_days: float | None = Field(None, gt=0, description="Aggregates older than this are deleted; none: kept.")
    sweep_interval_s: float = Field(3600.0, gt=0, description="Seconds between retention sweeps (one at start).")


class DevicesConfig(StrictModel):
    """Device registration and liveness."""

    auto_assign: bool = Field(
        False,
        description="Assign a new device at once to the room whose site and room ids match its topic, when that "
        "room exists; otherwise it waits as `new` for an admin.",
    )
    stale_after_s: float = Field(
        120.0, gt=0, description="An online device silent for this long is shown offline ('no messages')."
    )
    refresh_s: float = Field(
        10.0, gt=0, description="Seconds between reloads of device assignments (made by other instances)."
    )


class FleetConfig(StrictModel):
    """The fleet page's health trends and the alerts for devices that stay offline or degraded."""

    alert_after_s: float = Field(
        300.0, gt=0, le=7 * 86400, description="Alert when a device has been offline or degraded this long."
    )
    check_interval_s: float = Field(10.0, ge=1, le=3600, description="Seconds between alert checks.")
    trend_samples: int = Field(
        TREND_SAMPLES, ge=2, le=10_000, description="Health messages kept per device for the trends (in the database)."
    )


class SummaryConfig(StrictModel):
    """Retained per-room summaries on aula/v1/<site>/<room>/summary."""

    enabled: bool = Field(True, description="Publish room summaries.")
    interval_s: float = Field(2.0, ge=0.5, le=3600, description="At most one summary per room this often.")
    window_s: float = Field(30.0, gt=0, le=3600, description="The summary covers windows that started this recently.")


class ServerConfig(StrictModel):
    """The whole server configuration."""

    mqtt: ServerMqttConfig = Field(default_factory=ServerMqttConfig, description="Broker and subscriptions.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="Storage.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Dashboard and API.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="Raw event retention.")
    intake: IntakeConfig = Field(
        default_factory=IntakeConfig, description="Which event times are believed; bounds on what senders can cost."
    )
    devices: DevicesConfig = Field(default_factory=DevicesConfig, description="Device registration.")
    summaries: SummaryConfig = Field(default_factory=SummaryConfig, description="Room summaries over MQTT.")
    fleet: FleetConfig = Field(default_factory=FleetConfig, description="Fleet trends and alerts.")
    current_window_s: float = Field(
        30.0, gt=0, le=3600, description="The `current` value of a room merges windows that started this recently."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


def load_server_config(path: str | Path | None, overrides: dict | None = None) -> ServerConfig:
    """Load the server config from YAML (defaults when None); errors name the file, line and key."""
    return load_yaml_model(ServerConfig, path, overrides)


def database_url_arg(value: str) -> str:
    """argparse `type=` for `--database`."""
    try:
        parse_database_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def listen_arg(value: str) -> str:
    """argparse `type=` for `--http`."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value
