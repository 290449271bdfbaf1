"""Freeing the model cache: what ``sepcli models prune`` deletes.

The cache keeps ``ROOT/models/<name>/<key>/`` per model version
(:mod:`sepcli.hub.cache`). Pruning deletes what no current registry entry uses:

* a ``<name>`` folder whose name is no longer in the registry (``orphan``);
* a ``<key>`` folder that is not the entry's current cache key, left by an
  earlier hash of the same name (``stale``);
* in a current ``<key>`` folder: an unfinished download (``*.part``) and
  downloads kept after a failed conversion (``src/``) (``partial``), only with
  ``partial=True``, since the next download resumes from them.

A folder another process holds the lock of (a download in progress) is skipped.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from sepcli.hub.registry import ModelEntry
from sepcli.hub.space import folder_size

__all__ = ["PruneItem", "prune_cache"]


@dataclass(frozen=True)
class PruneItem:
    """One thing pruning deletes (or would, with ``dry_run``)."""

    path: Path
    reason: str
    size: int


@contextlib.contextmanager
def _unlocked(folder: Path):
    """Yield True while we hold ``folder``'s lock without waiting (False: someone has it)."""
    lock_path = folder / ".lock"
    if not lock_path.exists():
        yield True
        return
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune_cache(
    root: Path, entries: Iterable[ModelEntry], *, partial: bool = False, dry_run: bool = False
) -> list[PruneItem]:
    """Delete (unless ``dry_run``) what no entry of ``entries`` uses under
    ``root/models``; returns what was (or would be) deleted."""
    current = {e.name: e.cache_key for e in entries if e.builtin is None}
    models = root / "models"
    items: list[PruneItem] = []
    if not models.is_dir():
        return items
    for name_dir in sorted(p for p in models.iterdir() if p.is_dir()):
        key = current.get(name_dir.name)
        for key_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
            found: list[PruneItem] = []
            if key is None:
                found = [PruneItem(key_dir, "orphan: not in the registry", folder_size(key_dir))]
            elif key_dir.name != key:
                found = [PruneItem(key_dir, "stale: an earlier version", folder_size(key_dir))]
            elif partial:
                leftovers = [*key_dir.glob("*.part"), key_dir / "src"]
                found = [PruneItem(p, "partial: unfinished download", folder_size(p))
                         for p in leftovers if p.exists()]  # fmt: skip
            if not found:
                continue
            with _unlocked(key_dir) as free:
                if not free:
                    continue  # a download in progress
                for item in found:
                    if not dry_run:
                        _delete(item.path)
                    items.append(item)
        if not dry_run:
            with contextlib.suppress(OSError):
                name_dir.rmdir()  # only when empty
    return items
