"""Give the heap's free memory back to the kernel after a large, passing allocation.

CTranslate2 allocates tens of MiB of buffers for each 30 s Whisper window and frees them after the segment. glibc
keeps such freed blocks in the process's heap once its mmap threshold has grown, so a device that transcribes
keeps about 40 MiB more resident than it uses (docs/benchmarks.md). `trim()` calls glibc's `malloc_trim(0)`,
which returns free pages of every arena to the kernel; it takes about 1 ms. Elsewhere (another C library) it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)


@cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        logger.info("no malloc_trim in this C library: freed memory stays with the allocator")
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Return free heap memory to the kernel; False where the C library has no malloc_trim."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
