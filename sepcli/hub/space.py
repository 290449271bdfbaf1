"""Disk space: check before a download, and what the cache holds.

:func:`check_free_space` raises :class:`DiskSpaceError` (a
:class:`~sepcli.errors.DownloadError`, exit code 5) in one line naming what is
needed and where, before any byte is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sepcli.errors import DownloadError

__all__ = ["DiskSpaceError", "MARGIN_BYTES", "check_free_space", "folder_size", "human_size"]

#: Kept free beyond what a download needs (logs, temp files, the converted archive's metadata).
MARGIN_BYTES = 64 * 1024 * 1024


class DiskSpaceError(DownloadError):
    """Not enough free disk space for a download (checked before it starts)."""


def human_size(num: int | None) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as download sizes are given)."""
    if num is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num >= scale:
            return f"{num / scale:.1f} {unit}"
    return f"{num} B"


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (where the bytes will land)."""
    folder = folder.expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``folder``'s disk has ``needed`` bytes
    (plus :data:`MARGIN_BYTES`) free. ``what`` names the download (``model 'x'``)."""
    if needed <= 0:
        return
    free = shutil.disk_usage(_existing(folder)).free
    if free < needed + MARGIN_BYTES:
        raise DiskSpaceError(
            f"not enough disk space for {what}: needs {human_size(needed)} in {folder}, "
            f"{human_size(free)} free there (free some with 'sepcli models prune', or use --cache-dir)"
        )


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (a file: its size; missing: 0)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
