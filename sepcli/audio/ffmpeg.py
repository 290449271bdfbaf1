"""Finding the ffmpeg and ffprobe executables, and reading their error output.

The ffmpeg executable is looked up on ``PATH`` unless ``SEPCLI_FFMPEG`` names it
(an empty value means "no ffmpeg"); ffprobe is taken from ``SEPCLI_FFPROBE``,
else beside ffmpeg, else from ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["ffmpeg_available", "ffmpeg_tools", "ffmpeg_url", "first_line", "INSTALL_HINT"]

INSTALL_HINT = (
    "install it with 'apt install ffmpeg', 'brew install ffmpeg' or "
    "'conda install -c conda-forge ffmpeg', or set SEPCLI_FFMPEG to its path"
)


def _ffmpeg_exe() -> str | None:
    override = os.environ.get("SEPCLI_FFMPEG")
    if override is not None:
        return shutil.which(override) if override.strip() else None
    return shutil.which("ffmpeg")


def _ffprobe_exe(ffmpeg: str) -> str | None:
    override = os.environ.get("SEPCLI_FFPROBE")
    if override is not None:
        return shutil.which(override) if override.strip() else None
    sibling = Path(ffmpeg).with_name(Path(ffmpeg).name.replace("ffmpeg", "ffprobe"))
    if sibling != Path(ffmpeg) and shutil.which(str(sibling)):
        return str(sibling)
    return shutil.which("ffprobe")


def ffmpeg_tools() -> tuple[str, str] | None:
    """``(ffmpeg, ffprobe)`` executables, or ``None`` when either is missing."""
    ffmpeg = _ffmpeg_exe()
    if ffmpeg is None:
        return None
    ffprobe = _ffprobe_exe(ffmpeg)
    return None if ffprobe is None else (ffmpeg, ffprobe)


def ffmpeg_available() -> bool:
    """True when both ffmpeg and ffprobe can be run (honours ``SEPCLI_FFMPEG``)."""
    return ffmpeg_tools() is not None


def ffmpeg_url(path: Path) -> str:
    # "file:" stops ffmpeg reading names such as "concat:x" or "http:x" as protocols.
    return "file:" + str(path.resolve())


_FFMPEG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


def first_line(data: bytes, path: Path | None = None) -> str:
    """First non-empty stderr line of ffmpeg/ffprobe, without its ``[demuxer @ 0x..]``
    context and without the file name (our messages name the file already)."""
    for line in data.decode("utf-8", "replace").splitlines():
        line = _FFMPEG_CONTEXT.sub("", line.strip())
        if path is not None:
            for name in (ffmpeg_url(path), str(path)):
                if line.startswith(name + ": "):
                    line = line[len(name) + 2 :]
        if line:
            return line[:300]
    return ""
