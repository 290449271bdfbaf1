"""Find the tracks of a dataset folder: MUSDB18, MUSDB18-HQ or a plain folder.

Layouts (detected by :func:`detect_layout`):

* ``musdb``: ``ROOT/{train,test}/<track>.stem.mp4`` (or the ``.stem.mp4`` files
  directly in ``ROOT``), streams in the MUSDB order mixture, drums, bass,
  other, vocals;
* ``musdb-hq``: ``ROOT/{train,test}/<track>/<stem>.wav`` (any audio suffix);
* ``folder``: ``ROOT/<track>/<stem>.<ext>``, e.g. MIR-1K
  ``mir1k/<clip>/{vocals,accompaniment}.ogg``.

Subsets (the rule of :func:`open_dataset`): with ``train``/``test`` folders,
``test`` is ``ROOT/test``; ``valid`` is ``ROOT/valid`` when it exists, else the
tracks of ``ROOT/train`` named in ``valid`` (default
:data:`~sepcli.datasets.splits.MUSDB_VALIDATION_TRACKS`); ``train`` is
``ROOT/train`` without those; ``None`` is every track under its folder's name.
A flat folder (no ``train``/``test`` folders) has no subsets of its own:
``None`` and ``test`` give every track, ``train``/``valid`` split it with
:func:`~sepcli.datasets.splits.split_tracks` (``valid`` names or fraction; for
``.stem.mp4`` files the MUSDB validation names by default, for a plain folder
``train`` is every track and ``valid`` needs ``valid``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from sepcli.audio import AUDIO_SUFFIXES
from sepcli.datasets.splits import MUSDB_VALIDATION_TRACKS, split_tracks
from sepcli.datasets.tracks import MUSDB_STREAMS, Track
from sepcli.errors import DatasetError

__all__ = ["LAYOUTS", "SUBSETS", "STEM_SUFFIX", "detect_layout", "open_dataset"]

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "musdb", "musdb-hq", "folder")
SUBSETS = ("train", "valid", "test")
STEM_SUFFIX = ".stem.mp4"
_SPLIT_DIRS = ("train", "valid", "test")
# Preferred when a folder holds the same stem twice (vocals.wav and vocals.flac).
_SUFFIX_RANK = (".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3", ".m4a", ".mp4")


def _suffixes() -> set[str]:
    return {s.lower() if s.startswith(".") else "." + s.lower() for s in AUDIO_SUFFIXES}


def _stem_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{STEM_SUFFIX}")) + sorted(folder.glob(f"*{STEM_SUFFIX.upper()}"))


def _audio_files(folder: Path) -> list[Path]:
    suffixes = _suffixes()
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in suffixes
        and not p.name.lower().endswith(STEM_SUFFIX)
    )


def _track_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _audio_files(p)
    )


def _split_dirs(root: Path) -> list[Path]:
    return [root / d for d in _SPLIT_DIRS if (root / d).is_dir()]


def detect_layout(root: str | Path) -> str:
    """Return ``"musdb"``, ``"musdb-hq"`` or ``"folder"`` for a dataset folder.

    Raises:
        DatasetError: ``root`` is not a folder or holds no tracks.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    splits = _split_dirs(root)
    if any(_stem_files(d) for d in splits) or _stem_files(root):
        return "musdb"
    if any(_track_dirs(d) for d in splits):
        return "musdb-hq"
    if _track_dirs(root):
        return "folder"
    raise DatasetError(
        f"no tracks found in {root} (expected train/test/*{STEM_SUFFIX}, "
        "train/test/<track>/<stem>.wav or <track>/<stem>.<ext>)"
    )


def _folder_track(folder: Path, subset: str | None, layout: str) -> Track:
    files: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(_SUFFIX_RANK)}
    for path in _audio_files(folder):
        stem = path.stem
        if stem in files:
            keep = min((files[stem], path), key=lambda p: rank.get(p.suffix.lower(), len(rank)))
            logger.warning("track %r has two %r files; using %s", folder.name, stem, keep.name)
            path = keep
        files[stem] = path
    return Track(name=folder.name, subset=subset, layout=layout, path=folder, files=files)


def _musdb_track(path: Path, subset: str | None) -> Track:
    name = path.name[: -len(STEM_SUFFIX)]
    return Track(name=name, subset=subset, layout="musdb", path=path, streams=dict(MUSDB_STREAMS))


def _tracks_in(folder: Path, subset: str | None, layout: str) -> list[Track]:
    if layout == "musdb":
        return [_musdb_track(p, subset) for p in _stem_files(folder)]
    return [_folder_track(d, subset, layout) for d in _track_dirs(folder)]


def _relabel(tracks: list[Track], subset: str) -> list[Track]:
    return [Track(t.name, subset, t.layout, t.path, t.files, t.streams) for t in tracks]


def open_dataset(
    root: str | Path,
    subset: str | None = None,
    layout: str = "auto",
    valid: Sequence[str] | float | None = None,
    group: Callable[[str], str] | str | None = None,
    seed: int = 0,
) -> list[Track]:
    """List the tracks of a dataset (no audio is decoded).

    Args:
        root: dataset folder.
        subset: ``"train"``, ``"valid"``, ``"test"`` or ``None`` (see the module
            docstring for the rule).
        layout: ``"auto"`` (detect) or one of ``musdb``, ``musdb-hq``, ``folder``.
        valid: validation track names or fraction (see
            :func:`~sepcli.datasets.splits.split_tracks`); ``None`` means the MUSDB
            validation names for MUSDB layouts.
        group: grouping for the split (``"prefix"`` keeps MIR-1K singers together).
        seed: seed of a fractional split.

    Returns:
        tracks sorted by name, each labelled with its subset.

    Raises:
        DatasetError: bad ``layout``/``subset``, a missing folder, or no tracks.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if subset is not None and subset not in SUBSETS:
        raise DatasetError(f"unknown subset {subset!r} (choose from {', '.join(SUBSETS)})")
    kind = detect_layout(root) if layout == "auto" else layout
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    splits = {d.name: d for d in _split_dirs(root)} if kind != "folder" else {}
    names = MUSDB_VALIDATION_TRACKS if valid is None and kind != "folder" else valid

    if splits and not (kind == "musdb" and _stem_files(root)):
        if subset is None:
            tracks = [t for name, d in splits.items() for t in _tracks_in(d, name, kind)]
        elif subset == "test" or (subset == "valid" and "valid" in splits):
            tracks = _tracks_in(splits[subset], subset, kind) if subset in splits else []
        else:
            pool = _tracks_in(splits["train"], "train", kind) if "train" in splits else []
            if "valid" in splits and subset == "train":
                tracks = pool
            else:
                train, held = ([], [])
                if pool:
                    train, held = split_tracks(
                        pool, names or (), group, seed, strict=valid is not None
                    )
                tracks = train if subset == "train" else _relabel(held, "valid")
    else:
        flat = root
        label = root.name if root.name in SUBSETS else None
        pool = _tracks_in(flat, label, kind)
        if subset in (None, "test"):
            tracks = pool if subset is None else _relabel(pool, "test")
        elif names is None:
            if subset == "valid":
                raise DatasetError(
                    f"{root} has no validation split: give validation names or a fraction"
                )
            tracks = _relabel(pool, "train")
        else:
            train, held = split_tracks(pool, names, group, seed, strict=valid is not None)
            tracks = _relabel(train, "train") if subset == "train" else _relabel(held, "valid")

    if not tracks:
        where = f"subset {subset!r} of " if subset else ""
        raise DatasetError(f"no tracks found in {where}{root} (layout {kind})")
    return sorted(tracks, key=lambda t: (t.subset or "", t.name))
