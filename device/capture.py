"""One capture thread for every source kind: reads a source and hands each item to a sink, never waiting."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from device.errors import AulaError

logger = logging.getLogger(__name__)


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
