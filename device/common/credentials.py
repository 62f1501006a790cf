"""Broker password from the environment or a systemd credential, and a log filter that redacts it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from device.common.broker_settings import BrokerConnection
from device.common.errors import ConfigError

REDACTED = "***"


def resolve_password(config: BrokerConnection, environ: dict[str, str] | None = None) -> str | None:
    """Return the broker password named by the config; errors name where it was looked for, never the value."""
    env = os.environ if environ is None else environ
    if config.password_env:
        value = env.get(config.password_env)
        if not value:
            raise ConfigError(f"password_env names ${config.password_env}, but it is not set in the environment")
        return value
    if config.password_credential:
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"password_credential {config.password_credential!r} needs $CREDENTIALS_DIRECTORY; run under systemd "
                f"with LoadCredential={config.password_credential}:<file>"
            )
        path = Path(directory) / config.password_credential
        try:
            # A trailing newline comes from `echo` or an editor; it is never part of the password.
            value = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read credential {path} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"credential {path} is empty")
        return value
    return None


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in `text` with ***."""
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that removes registered secrets from messages and tracebacks."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._secrets: set[str] = {s for s in secrets if s}

    def add(self, secret: str) -> None:
        if secret:
            self._secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        clean = redact(message, self._secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        return True


_filter = RedactingFilter()


def install_redaction(secret: str, logger: logging.Logger | None = None) -> RedactingFilter:
    """Redact `secret` in everything the handlers of `logger` (default: root) write; returns the shared filter.

    The filter goes on handlers, not loggers: a logger's own filters skip records propagated from its children.
    Call it after logging is configured; handlers added later need `handler.addFilter(the returned filter)`.
    """
    _filter.add(secret)
    for handler in (logger or logging.getLogger()).handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)
    return _filter
