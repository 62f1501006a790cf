"""paho's log lines, routed to our loggers at the level they deserve.

paho logs a lost connection ("failed to receive on socket: [Errno 104] Connection reset by peer") at ERROR.
For a classroom device a broker that goes away is routine: the events queue on disk and the health message
says so. Logged at ERROR it would raise a journald `err` entry, and alerts, every time Wi-Fi drops. Such
lines become WARNING. "Client is not connected", which paho repeats while it reconnects and once after a clean
`disconnect()`, becomes DEBUG. paho's other errors (for example an exception raised in one of our callbacks)
stay ERROR.
"""

from __future__ import annotations

import logging

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
