"""Hand freed memory back to the OS, so a worker that served large messages shrinks afterwards.

glibc raises its mmap threshold to the size of the largest block freed (up to 32 MB): after one
large message, later ones are served from the heap, whose freed pages mostly stay in the RSS. A
fixed threshold keeps large buffers in their own mappings (unmapped on free); trim() returns what
is left free at the top of the heap and in the arenas. Both are no-ops where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_large_buffers() -> None:
    """Call once per process, before serving: large blocks get (and give back) their own mappings."""
    if libc := _glibc():
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Return free heap memory to the OS (a few ms on a large heap: call after large requests only)."""
    if libc := _glibc():
        libc.malloc_trim(0)
