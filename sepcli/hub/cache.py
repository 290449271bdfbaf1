"""The model cache on disk: where files live, hashing, and a cross-process lock.

Layout (``ROOT`` from :func:`cache_root`)::

    ROOT/models/<name>/<key>/<filename>        a verified file (key: cache_key)
    ROOT/models/<name>/<key>/<filename>.verified.json  its stamp (see below)
    ROOT/models/<name>/<key>/<filename>.part   an unfinished download (resumable)
    ROOT/models/<name>/<key>/.lock             held while a process fills <key>/
    ROOT/registries/<hash>.json                copies of remote registries

``key`` is derived from the registry's SHA-256, so when an entry's hash changes
the old file is never reused.

The cache is checked, not trusted. Each file has a stamp written (atomically)
when its bytes were last hashed: the SHA-256 and the file's size, ``mtime_ns``,
``ctime_ns`` and inode at that moment. A file whose stat no longer matches its
stamp is hashed again before use (:func:`stamp_is_current`). ``ctime`` is in the
list because nobody can set it: a file rewritten in place with its old size and
its ``mtime`` put back by ``os.utime`` still gets a new ``ctime`` and is hashed
again. A stamp only saves the hashing; it never vouches for bytes on its own
(the expected hash comes from the registry, or for a converted archive, from the
stamp written when sepcli converted it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from filelock import FileLock

from sepcli.atomic import write_text
from sepcli.hashing import sha256_file  # re-exported: hub users hash with it

if TYPE_CHECKING:
    from sepcli.hub.registry import ModelEntry

__all__ = [
    "cache_root",
    "model_root",
    "entry_dir",
    "entry_path",
    "part_path",
    "sha256_file",
    "file_lock",
    "stamp_path",
    "read_stamp",
    "write_stamp",
    "stamp_is_current",
]

#: Attempts to lock a path whose folder another process removes meanwhile.
_LOCK_TRIES = 100


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``SEPCLI_CACHE``, else the platform user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SEPCLI_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("sepcli", appauthor=False))


def model_root(root: Path, name: str) -> Path:
    """``ROOT/models/<name>``: every cached version of one model."""
    return root / "models" / name


def entry_dir(root: Path, entry: ModelEntry) -> Path:
    """``ROOT/models/<name>/<cache_key>``."""
    return model_root(root, entry.name) / entry.cache_key


def entry_path(root: Path, entry: ModelEntry) -> Path:
    """The file :func:`sepcli.hub.resolve_model` returns for a downloaded entry:
    the archive itself for ``sepcli`` entries, the converted archive otherwise."""
    if entry.format == "sepcli":
        return entry_dir(root, entry) / entry.files[0].filename
    return entry_dir(root, entry) / f"{entry.name}.sepcli"


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folders if needed) until the block ends.

    :class:`filelock.FileLock`: ``flock`` on POSIX, which the kernel releases when
    the process dies, so a killed download never leaves the cache locked;
    ``msvcrt`` on Windows. The holder may delete the lock file and its empty
    folders before releasing (see :func:`sepcli.hub.load.ensure_model`): a waiter
    notices that the file it locked is gone (filelock checks that the locked inode
    is still linked) and locks the path afresh, recreating the folders.
    """
    for _ in range(_LOCK_TRIES):
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path)
        try:
            lock.acquire()
        except FileNotFoundError:  # the holder removed the empty folder while we waited
            continue
        try:
            yield
        finally:
            lock.release()
        return
    raise OSError(f"{path}: could not lock (its folder keeps disappearing)")


#: The stat fields a stamp records; any change means "hash the file again".
_STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")


def stamp_path(path: Path) -> Path:
    """``<file>.verified.json``: what the file's bytes hashed to, and its stat then."""
    return path.with_name(path.name + ".verified.json")


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}  # fmt: skip


def read_stamp(path: Path) -> dict[str, object] | None:
    """The stamp of ``path`` as a dict, or None when it is missing or unreadable."""
    try:
        data = json.loads(stamp_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None


def write_stamp(path: Path, sha256: str, st: os.stat_result | None = None) -> None:
    """Record that ``path`` hashed to ``sha256`` when its stat was ``st`` (taken
    before hashing, so a change during the hashing shows next time); atomic."""
    st = st if st is not None else path.stat()
    write_text(stamp_path(path), json.dumps({"sha256": sha256, **_stat_fields(st)}) + "\n")


def stamp_is_current(path: Path, sha256: str) -> bool:
    """True when ``path`` has a stamp for ``sha256`` and its size, times and inode
    are still those the stamp recorded (no hashing)."""
    stamp = read_stamp(path)
    if stamp is None or stamp.get("sha256") != sha256:
        return False
    try:
        now = _stat_fields(path.stat())
    except OSError:
        return False
    return all(stamp.get(key) == now[key] for key in _STAT_FIELDS)
