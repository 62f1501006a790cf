"""device/heap_trim.py: glibc's malloc_trim gives freed heap memory back, and a C library without it is no error."""

import ctypes
import sys

import pytest

from device import heap_trim
from device.system_metrics import rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_freed_heap_pages():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 4,000 blocks of 16 KiB (below the mmap threshold: they come from the heap), touched, then all but the last
    # freed: the last one pins the heap's top, so only malloc_trim can hand the freed pages back
    blocks = [libc.malloc(16384) for _ in range(4000)]
    for b in blocks:
        ctypes.memset(b, 1, 16384)
    for b in blocks[:-1]:
        libc.free(b)
    before = rss_mb()
    assert heap_trim.trim() is True
    assert before - rss_mb() > 30  # of the 62 MiB freed
    libc.free(blocks[-1])


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap_trim, "_malloc_trim", lambda: None)
    assert heap_trim.trim() is False
