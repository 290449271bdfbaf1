"""Finding audio files: expand files and folders into a list of inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sepcli.audio.formats import AUDIO_SUFFIXES
from sepcli.errors import AudioDecodeError, os_error_reason

__all__ = ["is_audio_file", "find_audio_files"]


def is_audio_file(path: Path) -> bool:
    """True when ``path``'s suffix (any case) is in :data:`AUDIO_SUFFIXES`.

    Looks at the name only; hidden files are rejected (they are skipped when
    scanning folders, and sepcli's own temp files are hidden).
    """
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in AUDIO_SUFFIXES


def find_audio_files(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a list of audio files.

    Files are taken as given, whatever their suffix (decoding then says what is
    wrong). Folders are scanned for :func:`is_audio_file` names, sorted by
    path, skipping hidden files and folders; ``recursive`` descends into
    sub-folders. A file reached twice is listed once (first occurrence).

    Raises:
        AudioDecodeError: a path does not exist, or a folder holds no audio.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                files = _scan_folder(path, recursive)
            except OSError as e:
                raise AudioDecodeError(
                    f"{path}: cannot list folder ({os_error_reason(e)})"
                ) from None
            if not files:
                where = "recursively" if recursive else "top level only, not recursive"
                raise AudioDecodeError(
                    f"{path}: no audio files found (searched {where} for "
                    f"{len(AUDIO_SUFFIXES)} suffixes such as .wav .flac .mp3 .m4a .mp4)"
                )
            for f in files:
                add(f)
        elif path.exists():
            add(path)
        else:
            raise AudioDecodeError(f"{path}: no such file or folder")
    return found


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_audio_file(p))
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(root) / f for f in files if is_audio_file(Path(f)))
    return sorted(p for p in out if p.is_file())
