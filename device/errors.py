"""Errors the device raises for bad input; each message names the thing and the fix."""

from device.common.errors import AulaError, ConfigError

__all__ = ["AulaError", "BackendUnavailable", "ConfigError", "ModelError", "SourceError", "StorageError"]


class ModelError(AulaError):
    """A model file is missing, corrupt, or does not match its manifest."""


class BackendUnavailable(AulaError):
    """An inference runtime or capture library is not installed on this machine."""


class SourceError(AulaError):
    """A camera, video file, image folder or microphone cannot be opened or read."""


class StorageError(AulaError):
    """Local storage cannot be used right now (a full or read-only disk, a locked file); it may clear by itself."""
