"""What every capture source shares: the plugin base (config, registry, pacing wake-up) and the capture thread."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError

from device.errors import AulaError, ConfigError

logger = logging.getLogger(__name__)


class Source(ABC):
    """A backend chosen from config by `type_key`: open, read until None (finite sources), close.

    Each kind (frames, audio) subclasses this once and gives itself its own `registry`; each backend
    then registers itself by defining `type_key` and a `Config` whose `type` field names the same key.
    """

    type_key: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    registry: ClassVar[dict[str, type[Source]]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        key = cls.__dict__.get("type_key")
        if not key:
            return
        # The config's discriminator must name the same backend, or building from config would pick the wrong class.
        field = cls.Config.model_fields.get("type")
        if field is None or field.default != key:
            raise TypeError(f"{cls.__name__}.Config needs a field type: Literal[{key!r}] = {key!r}")
        cls.registry[key] = cls

    def __init__(self, config: BaseModel):
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        # Set by interrupt() so pacing sleeps end at once when a capture thread is stopped.
        self._wake = threading.Event()

    @classmethod
    def available(cls) -> bool:
        """Return whether this backend's library imports here."""
        return True

    @property
    def paced(self) -> bool:
        """True when data arrives at its own rate (a camera, a microphone, a real-time replay); False when a
        replay yields data as fast as it is read, so a consumer may pull it synchronously."""
        return True

    @property
    def name(self) -> str:
        """Short human label for logs."""
        return self.type_key

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raise SourceError or BackendUnavailable with the fix."""

    @abstractmethod
    def read(self) -> Any:
        """Return the next item, or None at the end of a finite source."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def interrupt(self) -> None:
        """Cut short any pacing sleep in read() (called from another thread)."""
        self._wake.set()

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def parse_config(adapter: TypeAdapter, data: dict[str, Any], what: str) -> BaseModel:
    """Validate a plain mapping (e.g. from YAML) into the backend config its `type` names."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} config: {exc}") from exc


def build_from_config(base: type[Source], adapter: TypeAdapter, config: BaseModel | dict[str, Any], what: str,
                      **kwargs: Any) -> Source:
    """Make the backend of `base` that a config (or a plain mapping) names; kwargs go to its constructor."""
    if isinstance(config, dict):
        config = parse_config(adapter, config, what)
    key = getattr(config, "type", None)
    cls = base.registry.get(key)
    if cls is None:
        raise ConfigError(f"unknown {what} type {key!r}; choose one of {sorted(base.registry)}")
    return cls(config, **kwargs)


class Sink(Protocol):
    """Where captured items go: a latest-frame slot or an audio ring buffer (both drop, never block)."""

    def put(self, item: Any) -> None: ...

    def close(self) -> None: ...


class SourceThread:
    """Reads `source` (open/read/close/interrupt) in a daemon thread into `sink` until stopped or ended.

    Errors are kept in `error` for the owner to report once; they are never re-raised on this thread.
    """

    kind = "source"

    def __init__(self, source, sink: Sink):
        self.source = source
        self.sink = sink
        self.error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{source.name}", daemon=True)

    def start(self):
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """True once a finite source ran out."""
        return self._ended

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to finish and join it; return whether it stopped within timeout."""
        self._stop.set()
        self.source.interrupt()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            # A driver stuck in a blocking read; the daemon thread dies with the process.
            logger.warning("%s thread for %s did not stop within %.1f s", self.kind, self.source.name, timeout)
            return False
        return True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        count = 0
        try:
            self.source.open()
            while not self._stop.is_set():
                item = self.source.read()
                if self._stop.is_set():
                    break  # a read cut short by stop() is not the end of the stream
                if item is None:
                    self._ended = True
                    logger.info("%s %s ended after %d reads", self.kind, self.source.name, count)
                    break
                count += 1
                self.sink.put(item)
        except Exception as exc:  # kept for the owner to report once; never re-raised here
            self.error = exc
            if isinstance(exc, AulaError):
                logger.error("%s %s failed: %s", self.kind, self.source.name, exc)
            else:
                logger.exception("%s %s crashed", self.kind, self.source.name)
        finally:
            try:
                # Closed on this thread: OpenCV, libcamera and PortAudio handles are not safe to release mid-read.
                self.source.close()
            except Exception:  # closing must not mask the original error
                logger.exception("closing %s %s failed", self.kind, self.source.name)
            self.sink.close()
