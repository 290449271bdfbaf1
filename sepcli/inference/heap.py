"""Give freed heap memory back to the operating system during a long separation.

glibc keeps freed memory in its heaps. A model that allocates and frees tens of
megabytes of activations per chunk, among small objects that live longer, leaves
the heap fragmented, and the resident size creeps up chunk after chunk over a
long track (HT-Demucs at the published size: a few MB per chunk in a loop of
segments). ``malloc_trim(0)`` returns the free pages of every arena; done after
a chunk it costs nothing measurable next to the chunk and keeps the high-water
mark flat (docs/benchmarks.md, "HT-Demucs"). Elsewhere (macOS, Windows, musl)
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer"]


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


class HeapTrimmer:
    """Callable: ``malloc_trim(0)`` at most once per ``interval`` seconds.

    The interval keeps a model with millisecond chunks from trimming thousands
    of times a second; a chunk of a large model takes seconds, so it trims after
    every chunk.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = float("-inf")
        self.trims = 0

    @property
    def available(self) -> bool:
        return _TRIM is not None

    def __call__(self) -> None:
        if _TRIM is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            _TRIM(0)
            self.trims += 1
            self._last = time.monotonic()
