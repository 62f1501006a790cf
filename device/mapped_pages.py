"""Drop a model file's mapped pages from this process once the runtime has copied what it needs from them.

LiteRT maps a .tflite file into memory, and when the interpreter is built XNNPACK packs the weights of the
matrix products into buffers of its own. The mapped pages it read for that stay resident, and count in the
process's RSS, though nothing reads them again: about 12 MiB for the text model. `release(path)` calls
`madvise(MADV_DONTNEED)` on each read-only mapping of the file. The kernel drops those pages from the process;
a page that is read again (an embedding row that the Gather op looks up) comes back from the page cache with
the same bytes, since the mapping is read-only. Outside Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

MADV_DONTNEED = 4
MAPS = Path("/proc/self/maps")


@cache
def _madvise():
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def read_only_mappings(path: str | Path, maps: Path = MAPS) -> list[tuple[int, int]]:
    """(start, end) of each mapping of `path` in this process that is not writable."""
    target = os.path.realpath(path)
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    spans = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target and "w" not in fields[1]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            spans.append((start, end))
    return spans


def release(path: str | Path) -> int:
    """Drop the resident pages of `path`'s read-only mappings; the number of bytes advised (0 where none)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    done = 0
    for start, end in read_only_mappings(path):
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
        else:
            logger.info("madvise on %s failed: %s", path, os.strerror(ctypes.get_errno()))
    return done
