"""The scripted module of a data archive, cached per archive SHA-256.

Scripting a family module takes about a second (more for the big ones), so the
first load of a format-2 archive stores the result in the user's cache
(``SEPCLI_CACHE`` or the platform's, under ``scripted/``) as
``<sha256>-torch<version>-sepcli<version>.pt``. A later load of the same bytes
finds it by hash. The cache is a TorchScript file that sepcli wrote for this
user, and trusted only as that: a file or folder another user owns or may
write is ignored (never trusted across users), a file is found only by the
hash of the archive it was scripted from, and writes are atomic (a temporary
file, then a rename, mode 0600 in a 0700 folder).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from pathlib import Path

import torch

__all__ = ["cache_folder", "cached_path", "load_cached", "store"]

logger = logging.getLogger(__name__)


def cache_folder() -> Path:
    """``$SEPCLI_CACHE/scripted`` or the platform user cache's ``sepcli/scripted``."""
    env = os.environ.get("SEPCLI_CACHE", "").strip()
    if env:
        return Path(env).expanduser() / "scripted"
    import platformdirs

    return Path(platformdirs.user_cache_dir("sepcli", appauthor=False)) / "scripted"


def cached_path(digest: str) -> Path:
    from sepcli import __version__

    tag = re.sub(r"[^A-Za-z0-9.]", "_", f"torch{torch.__version__}-sepcli{__version__}")
    return cache_folder() / f"{digest}-{tag}.pt"


def _private(path: Path) -> bool:
    """Owned by this user and writable by no one else."""
    try:
        st = path.stat()
    except OSError:
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    return not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load_cached(digest: str, device: torch.device) -> torch.jit.ScriptModule | None:
    """The cached scripted module of the archive whose SHA-256 is ``digest``, or
    ``None`` (absent, not private to this user, or unreadable)."""
    path = cached_path(digest)
    if not (path.is_file() and _private(path) and _private(path.parent)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # a damaged cache file: rebuild it
        logger.info("ignoring cached module %s: %s", path, exc)
        return None
    return module


def store(digest: str, module: torch.jit.ScriptModule) -> None:
    """Cache ``module`` (on the CPU) for the archive ``digest``; a cache that cannot
    be written is only logged."""
    from sepcli import atomic

    path = cached_path(digest)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp:
            os.chmod(tmp, 0o600)
            torch.jit.save(module, str(tmp))
    except (OSError, RuntimeError) as exc:
        logger.info("could not cache the scripted module at %s: %s", path, exc)
