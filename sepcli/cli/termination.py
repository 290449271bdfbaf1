"""SIGTERM and SIGHUP handled like Ctrl-C.

SIGTERM is what ``kill``, ``timeout`` and SLURM send at a limit; SIGHUP what a
closed terminal or a dropped SSH session sends. Python's default for both
kills the process at once, so no ``finally`` block runs and the hidden temp
files of the track being written stay behind. While a command runs, either
signal raises :class:`Terminated` (a ``KeyboardInterrupt``, so every clean-up
path written for Ctrl-C runs) and the CLI exits ``128 + signal number`` (143
for SIGTERM, 129 for SIGHUP), the status a shell reports for a process killed
by that signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "EXIT_TERMINATED", "sigterm_raises"]

EXIT_TERMINATED = 128 + signal.SIGTERM
#: The signals turned into :class:`Terminated` (SIGHUP does not exist on Windows).
_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s
)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """``128 + signal number``: 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


def _raise(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (main
    thread only; elsewhere, and where signals cannot be set, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for s in _SIGNALS:
            previous[s] = signal.signal(s, _raise)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters
        for s, handler in previous.items():
            signal.signal(s, handler)
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
