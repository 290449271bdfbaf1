"""SIGTERM handled like Ctrl-C: the signal ``kill``, ``timeout`` and SLURM send at a limit.

Python's default for SIGTERM kills the process at once, so no ``finally``
block runs and the hidden temp files of the track being written stay behind.
While a command runs, SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``,
so every clean-up path written for Ctrl-C runs) and the CLI exits 143
(128 + 15), the status a shell reports for a process killed by SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "EXIT_TERMINATED", "sigterm_raises"]

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only;
    elsewhere, and where signals cannot be set, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
