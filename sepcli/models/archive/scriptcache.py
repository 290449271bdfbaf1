"""The scripted module of a data archive, cached per archive SHA-256 (and the
archive hashes and format-1 audit verdicts that spare a load the work again).

Scripting a family module takes about a second (more for the big ones), so the
first load of a format-2 archive stores the result in the user's cache
(``SEPCLI_CACHE`` or the platform's, under ``scripted/``) as
``<sha256>-torch<version>-sepcli<version>.pt``. A later load of the same bytes
finds it by hash. The cache is a TorchScript file that sepcli wrote for this
user, and trusted only as that: a file or folder another user owns or may
write is ignored (never trusted across users), a file is found only by the
hash of the archive it was scripted from, and writes are atomic (a temporary
file, then a rename, mode 0600 in a 0700 folder).

Hashing a 170 MB archive costs as much as loading it, so the hash of an archive
is remembered with the file's identity (path, size, inode, device, mtime and
ctime; ctime cannot be set back by a user): a file whose identity changed is
hashed again. Format-1 archives that passed the audit of
:mod:`sepcli.models.archive.audit` are remembered by hash the same way, so the
audit (seconds for HT-Demucs) runs once per archive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import warnings
from pathlib import Path

import torch

__all__ = [
    "cache_folder",
    "cached_path",
    "load_cached",
    "store",
    "known_digest",
    "remember_digest",
    "audited",
    "remember_audit",
]

logger = logging.getLogger(__name__)


def cache_folder() -> Path:
    """``$SEPCLI_CACHE/scripted`` or the platform user cache's ``sepcli/scripted``."""
    env = os.environ.get("SEPCLI_CACHE", "").strip()
    if env:
        return Path(env).expanduser() / "scripted"
    import platformdirs

    return Path(platformdirs.user_cache_dir("sepcli", appauthor=False)) / "scripted"


def _make_folder(folder: Path) -> None:
    """``folder`` and the cache folder above it, private to this user (0700)."""
    top = cache_folder()
    top.parent.mkdir(parents=True, exist_ok=True)
    for part in (top, folder):
        part.mkdir(mode=0o700, exist_ok=True)


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
        _make_folder(path.parent)
        with atomic.atomic_path(path) as tmp:
            os.chmod(tmp, 0o600)
            torch.jit.save(module, str(tmp))
    except (OSError, RuntimeError) as exc:
        logger.info("could not cache the scripted module at %s: %s", path, exc)


def _identity(path: Path, st: os.stat_result) -> dict[str, object]:
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "ino": st.st_ino,
        "dev": st.st_dev,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _memo_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_folder() / "hashes" / f"{key}.json"


def known_digest(path: Path, st: os.stat_result) -> str | None:
    """The SHA-256 remembered for ``path`` if the file (``st``, from the descriptor
    it is read through) is unchanged since, else ``None``."""
    memo = _memo_path(path)
    try:
        if not (_private(memo) and _private(memo.parent) and _private(memo.parent.parent)):
            return None
        data = json.loads(memo.read_text(encoding="utf-8"))
        digest = data.pop("sha256")
        if data != _identity(path, st):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def remember_digest(path: Path, st: os.stat_result, digest: str) -> None:
    """Remember that ``path``, as ``st`` describes it, hashes to ``digest``."""
    from sepcli import atomic

    memo = _memo_path(path)
    try:
        _make_folder(memo.parent)
        with atomic.atomic_path(memo) as tmp:
            os.chmod(tmp, 0o600)
            tmp.write_text(json.dumps({**_identity(path, st), "sha256": digest}))
    except OSError as exc:
        logger.info("could not remember the hash of %s: %s", path, exc)


def _verdict_path(digest: str) -> Path:
    return cached_path(digest).parent / "audited" / (cached_path(digest).stem + ".ok")


def audited(digest: str) -> bool:
    """Whether the format-1 archive of SHA-256 ``digest`` passed the audit before
    (with this torch and sepcli)."""
    verdict = _verdict_path(digest)
    return (
        verdict.is_file()
        and _private(verdict)
        and _private(verdict.parent)
        and _private(verdict.parent.parent)
    )


def remember_audit(digest: str) -> None:
    from sepcli import atomic

    verdict = _verdict_path(digest)
    try:
        _make_folder(verdict.parent)
        with atomic.atomic_path(verdict) as tmp:
            os.chmod(tmp, 0o600)
            tmp.write_text(digest + "\n")
    except OSError as exc:
        logger.info("could not record the audit of %s: %s", digest, exc)
