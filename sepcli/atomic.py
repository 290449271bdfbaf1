"""Atomic file writes: a temporary file beside the target, then a rename.

Whatever fails in between (a full disk, Ctrl-C, a crash), the target is either
the complete new file or untouched. This is sepcli's one temp-file-and-rename
mechanism: archives, checkpoints, reports, logs, caches and registry copies use
:func:`atomic_path` / :func:`write_bytes` / :func:`write_text`; the streaming
audio writer (:class:`sepcli.audio.AudioWriter`), which must hold its temp files
open across many calls, uses the same pieces: :func:`create_temp`,
:func:`publish` and :func:`remove_quietly`.

Temp files are hidden and named ``.NAME.sepcli-XXXXXXXX<suffix>`` (8 random hex digits),
so folder scans skip them and a leftover one says what it was for.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from collections.abc import Iterator, MutableSequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "write_bytes",
    "write_text",
    "fsync_dir",
    "create_temp",
    "publish",
    "remove_quietly",
]

logger = logging.getLogger(__name__)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: In every temp name, so that a leftover is recognisably ours (``sepcli separate``
#: removes those of its outputs on the next run: :mod:`sepcli.cli.outputs`).
TEMP_MARK = "sepcli-"


def create_temp(
    target: str | os.PathLike[str], *, suffix: str = ".tmp", mode: int = 0o666
) -> tuple[Path, int]:
    """Create ``.NAME.sepcli-XXXXXXXX<suffix>`` beside ``target`` exclusively; return ``(path, fd)``.

    The file is created with ``O_EXCL`` (never an existing file) and ``mode``
    (less the umask); the caller owns the open descriptor. The folder must exist.

    Raises:
        OSError: the folder is missing or unwritable, or no free name was found.
    """
    target = Path(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{TEMP_MARK}{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", str(target.parent))


def publish(
    tmp: str | os.PathLike[str], target: str | os.PathLike[str], *, durable: bool = False
) -> None:
    """Rename the finished ``tmp`` over ``target``; with ``durable``, fsync the folder too.

    The data of ``tmp`` must already be flushed (and fsync'ed, for ``durable``).
    """
    os.replace(tmp, target)
    if durable:
        fsync_dir(Path(target).parent)


def remove_quietly(paths: MutableSequence[Path]) -> None:
    """Delete the temp files in ``paths`` (missing ones are fine) and empty the list."""
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:  # pragma: no cover - nothing else to do
            logger.warning("could not remove temp file %s: %s", p, e)
    del paths[:]


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place.

    The temporary file exists (empty) when the block starts; the block writes
    it. On an exception (including ``KeyboardInterrupt``) it is removed and the
    target is left as it was. With ``durable`` the data and the rename are
    fsync'ed. The new file gets the usual mode (``0666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = create_temp(path)
    os.close(fd)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        publish(tmp, path, durable=durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)
