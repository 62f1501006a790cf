"""faster-whisper without PyAV in memory, unless something uses it.

faster_whisper imports PyAV (`av`) at the top of its audio module, to decode audio files. The device only ever
hands it numpy samples, and PyAV's FFmpeg libraries cost about 16 MiB of resident memory, 4% of the device's
400 MB budget. `defer_av()`, called before faster_whisper is imported, puts a placeholder module in
`sys.modules["av"]`: the first time one of its attributes is used, the real PyAV is imported and answers, so
decoding a file still works.

The standard library's `importlib.util.LazyLoader` is not enough here: on Python 3.11 the import statement reads
the module's `__spec__`, and that already loads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

NAME = "av"


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute it lacks is asked for, then imports the real one."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def defer_av() -> None:
    """Put a placeholder for `av` in sys.modules unless it is imported already or not installed."""
    if NAME in sys.modules:
        return
    spec = importlib.util.find_spec(NAME)
    if spec is None:  # faster_whisper's own ImportError then names what is missing
        return
    placeholder = _Deferred(NAME)
    placeholder.__spec__ = spec
    sys.modules[NAME] = placeholder
