"""Errors the device raises for bad input; each message names the thing and the fix."""


class AulaError(Exception):
    """Base class for errors a technician should read."""


class ModelError(AulaError):
    """A model file is missing, corrupt, or does not match its manifest."""


class BackendUnavailable(AulaError):
    """An inference runtime or capture library is not installed on this machine."""


class SourceError(AulaError):
    """A camera, video file, image folder or microphone cannot be opened or read."""


class ConfigError(AulaError):
    """A configuration file is invalid."""
