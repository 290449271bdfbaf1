"""Keep the CPU busy while a GPU computes: decode ahead, write behind.

:class:`Prefetch` runs an iterator (the decoder) in a thread, up to ``depth``
items ahead; :class:`WriteBehind` runs a consumer (the stem writers) in a thread
behind a bounded queue. Both re-raise the thread's error in the caller's thread
and :meth:`close` stops and joins the thread, so the caller can abort its
outputs knowing that nothing touches them any more (all-or-nothing outputs,
Ctrl-C). Queues are bounded, so memory stays bounded whatever the track length.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Prefetch", "WriteBehind"]

T = TypeVar("T")

_DONE = object()
#: How often a blocked thread looks whether it was told to stop (seconds).
_POLL_S = 0.1


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Generic[T]):
    """Iterate ``items`` in a daemon thread, ``depth`` items ahead of the consumer.

    Use as a context manager (or call :meth:`close`): leaving it stops the thread
    and waits for it, so ``items``' resources (an open decoder) can be closed.
    An exception raised by ``items`` is raised by ``next()`` in the consumer's
    thread, in order, after the items that came before it.
    """

    def __init__(self, items: Iterable[T], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._run, name="sepcli-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer
            self._put(_Failure(e))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_S)
        close = getattr(self._items, "close", None)
        if callable(close):  # a generator: run its finally blocks now, in this thread
            close()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteBehind(Generic[T]):
    """Call ``consume(item)`` for each :meth:`put` item, in order, in a daemon thread.

    :meth:`put` blocks when ``depth`` items wait, and raises the consumer's
    error (once it happened) in the caller's thread; :meth:`finish` waits until
    everything was consumed and raises that error too. :meth:`close` stops the
    thread without consuming the rest (for the error path).
    """

    def __init__(self, consume: Callable[[T], None], depth: int = 2) -> None:
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sepcli-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            try:
                self._consume(item)
            except BaseException as e:
                self._error = e
                return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        while True:
            self._raise()
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread has stopped")
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every item was consumed; raise the consumer's error if any."""
        while self._thread.is_alive():
            try:
                self._queue.put(_DONE, timeout=_POLL_S)
                break
            except queue.Full:
                self._raise()
        self._thread.join()
        self._raise()

    def close(self) -> None:
        """Stop the thread without consuming what waits, and wait for it (idempotent)."""
        self._stop.set()
        self._thread.join()
