"""The paho client set-up both ends share, and paho's log lines routed to our loggers at the level they deserve.

paho logs a lost connection ("failed to receive on socket: [Errno 104] Connection reset by peer") at ERROR.
For a classroom device a broker that goes away is routine: the events queue on disk and the health message
says so. Logged at ERROR it would raise a journald `err` entry, and alerts, every time Wi-Fi drops. Such
lines become WARNING. "Client is not connected", which paho repeats while it reconnects and once after a clean
`disconnect()`, becomes DEBUG. paho's other errors (for example an exception raised in one of our callbacks)
stay ERROR.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.common.broker_settings import BrokerConnection
from device.common.errors import ConfigError

_DOWNGRADES = (
    ("failed to receive on socket", logging.WARNING),
    ("timeout on socket", logging.WARNING),
    ("Client is not connected", logging.DEBUG),
)


class ConnectionLossIsAWarning(logging.Filter):
    """Downgrade paho's connection-loss records from ERROR (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR:
            msg = str(record.msg)
            for prefix, level in _DOWNGRADES:
                if msg.startswith(prefix):
                    record.levelno, record.levelname = level, logging.getLevelName(level)
                    return record.levelno >= _logger_level(record)
        return True


def _logger_level(record: logging.LogRecord) -> int:
    """The effective level of the logger that made the record (a downgraded record must pass it again)."""
    return logging.getLogger(record.name).getEffectiveLevel()


def paho_logger(name: str) -> logging.Logger:
    """Return the logger `name` for `client.enable_logger`, with socket loss logged as a warning."""
    log = logging.getLogger(name)
    if not any(isinstance(f, ConnectionLossIsAWarning) for f in log.filters):
        log.addFilter(ConnectionLossIsAWarning())
    return log


def new_client(
    conn: BrokerConnection,
    client_id: str,
    *,
    clean: bool,
    password: str | None,
    log_name: str,
    client_class: type[mqtt.Client] = mqtt.Client,
    **kwargs: Any,
) -> mqtt.Client:
    """A paho client for `conn`: protocol, session kind (3.1.1), logging, reconnect pacing, credentials and TLS.

    With MQTT 5 the session kind is chosen at connect time (`clean_start`); `kwargs` go to `client_class`.
    """
    v5 = conn.protocol == "5"
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        **({} if v5 else {"clean_session": clean}),
        **kwargs,
    )
    client.enable_logger(paho_logger(log_name))
    client.reconnect_delay_set(conn.reconnect_min_s, conn.reconnect_max_s)
    if conn.username:
        client.username_pw_set(conn.username, password)
    if conn.address.tls:
        tls = conn.tls
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"MQTT TLS files cannot be loaded: {exc}") from None
        client.tls_insecure_set(tls.insecure)
    return client


def bind_callbacks(client: mqtt.Client, owner: object, *names: str) -> None:
    """Set `client.on_<name>` to `owner._on_<name>` for each name (connect, disconnect, message, ...)."""
    for name in names:
        setattr(client, f"on_{name}", getattr(owner, f"_on_{name}"))
