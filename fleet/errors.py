"""The errors of a flash, a server install and the checks over ssh: each message says what to fix."""

from __future__ import annotations

from device.common.errors import AulaError


class FlashError(AulaError):
    """A flash failed; the message tells the technician what to fix."""


class BrokerUnreachable(FlashError):
    """The broker cannot be reached or refuses the watcher: not the release's fault, so no rollback."""


class NotOnline(FlashError):
    """The device did not report `online` in time."""
