"""Errors both ends raise for bad input; each message names the thing and the fix."""


class AulaError(Exception):
    """Base class for errors a technician should read."""


class ConfigError(AulaError):
    """A configuration file is invalid."""
