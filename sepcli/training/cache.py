"""Decode each track once into ``.npy`` arrays that training memory-maps.

Decoding a ``.stem.mp4`` through ffmpeg (or resampling a WAV) for every chunk
is what makes naive training data-bound; here every track is decoded once, at
the model rate and channel count, into ``CACHE/<key>/<source>.npy`` and read
with ``np.load(mmap_mode="r")``. The key hashes the track's path, its files'
sizes and modification times, the rate, the channels and the source recipe, so
a changed file or setting gets a fresh entry (and :func:`prune_stale`, run by
``sepcli train`` once the cache is filled, deletes entries of files that
changed since). An entry is complete when its
``meta.json`` exists (written last, atomically): an interrupted run leaves no
half entry that a later run would trust.

Sources of a training track are the targets plus, when the targets do not
cover the track, a ``rest`` source (the other stems summed; for a plain folder
that stores only ``mixture`` and the targets, ``mixture - targets``), so that
the training mixture is always a sum of sources (as the MUSDB18 reference
recipes build it). Validation tracks also cache the stored ``mixture``, which is
what evaluation separates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sepcli import atomic
from sepcli.errors import DatasetError, SepcliError
from sepcli.progress import Progress, ProgressFn

__all__ = [
    "REST",
    "CachedTrack",
    "source_recipe",
    "source_names",
    "with_silent_rest",
    "cache_key",
    "cache_tracks",
    "open_cached",
    "prune_stale",
]

logger = logging.getLogger(__name__)

#: Name of the source holding everything that is not a target.
REST = "rest"
CACHE_VERSION = 1
_PARTS = ("drums", "bass", "other")


@dataclass(frozen=True)
class CachedTrack:
    """A decoded track: memory-mapped ``(channel, time)`` float32 arrays per source."""

    name: str
    sources: dict[str, np.ndarray]
    sample_rate: int
    path: Path
    mixture: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(next(iter(self.sources.values())).shape[1])


def source_recipe(
    track: Any, targets: Sequence[str], split_rest: bool = False
) -> dict[str, list[str]] | None:
    """How to build each training source of ``track`` from its stems.

    Returns ``{name: [stem, ...]}`` where a source is the sum of its stems; the
    ``rest`` source may be ``["mixture", "-"]`` meaning mixture minus the
    targets. ``None`` when the track lacks one of ``targets``. With
    ``split_rest`` a track with several non-target stems (MUSDB's drums, bass
    and other) keeps each as its own source instead of their sum ``rest``.
    """
    stems = set(track.stems)
    if any(t not in stems for t in targets):
        return None
    recipe: dict[str, list[str]] = {t: [t] for t in targets}
    stored = [s for s in track.sources if s not in targets]
    parts_stored = all(p in track.stored for p in _PARTS)
    if parts_stored or any(t in _PARTS for t in targets):
        stored = [s for s in stored if s != "accompaniment"]
    if "accompaniment" in targets:
        stored = [s for s in stored if s not in _PARTS]
    if split_rest and len(stored) > 1:
        recipe.update({s: [s] for s in stored})
    elif stored:
        recipe[REST] = stored
    elif track.layout == "folder" and "mixture" in track.stored:
        recipe[REST] = ["mixture", "-"]
    return recipe


def _file_state(path: Path) -> list[Any]:
    """``[real path, size, mtime_ns]`` of a file (``[path, None, None]`` when absent)."""
    try:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def _fingerprint(track: Any) -> list[Any]:
    files = list(track.files.values()) if track.files else [track.path]
    return [_file_state(f) for f in sorted(Path(p) for p in files)]


def prune_stale(cache_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """Delete the entries of ``cache_dir`` whose source files changed since.

    An entry records the real path, size and modification time of every file it
    was decoded from; when all of them still exist and one has another size or
    time, no run can hit the entry again (its key hashes the same state), so it
    only holds disk space. Entries with a file that is gone (perhaps on a drive
    that is not mounted), entries written before that record existed, and
    incomplete ones are left alone.

    Returns:
        ``(entries removed, bytes freed)``.
    """
    removed, freed = 0, 0
    root = Path(cache_dir)
    if not root.is_dir():
        return 0, 0
    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            files = json.loads((entry / "meta.json").read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(files, list) or not files:
            continue
        now = [_file_state(Path(f[0])) for f in files]
        # a file that vanished may sit on a drive that is not mounted now: keep the entry
        if any(state[1] is None for state in now) or now == files:
            continue
        size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        try:
            # the meta first: a reader racing with the removal sees an incomplete entry
            (entry / "meta.json").unlink()
            shutil.rmtree(entry)
        except OSError as exc:
            logger.warning("could not remove stale cache entry %s (%s)", entry, exc)
            continue
        removed, freed = removed + 1, freed + size
    return removed, freed


def cache_key(
    track: Any,
    recipe: dict[str, list[str]],
    sample_rate: int,
    audio_channels: int,
    with_mixture: bool,
) -> str:
    """Hex key of a cache entry (see the module docstring)."""
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "name": track.name,
            "path": str(Path(track.path).resolve()),
            "files": _fingerprint(track),
            "recipe": recipe,
            "sample_rate": sample_rate,
            "audio_channels": audio_channels,
            "mixture": with_mixture,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _widen(audio: np.ndarray, channels: int) -> np.ndarray:
    from sepcli.audio import convert_channels

    if audio.shape[0] == channels:
        return audio
    return convert_channels(audio, channels)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # two runs may fill one cache
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))


def open_cached(entry: Path, name: str) -> CachedTrack | None:
    """Memory-map a complete cache entry, or ``None`` when it is absent or incomplete."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        sources = {s: np.load(entry / f"{s}.npy", mmap_mode="r") for s in meta["sources"]}
        mixture = np.load(entry / "mixture.npy", mmap_mode="r") if meta.get("mixture") else None
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cache entry %s for %r is unreadable (%s); decoding again", entry, name, exc)
        return None
    return CachedTrack(name, sources, int(meta["sample_rate"]), Path(meta["path"]), mixture)


def _decode(
    track: Any,
    recipe: dict[str, list[str]],
    sample_rate: int,
    audio_channels: int,
    with_mixture: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    stems = sorted({s for parts in recipe.values() for s in parts if s != "-"})
    if with_mixture and "mixture" not in stems:
        stems.append("mixture")
    audio = track.load(stems=stems, sample_rate=sample_rate)
    audio = {k: _widen(v, audio_channels) for k, v in audio.items()}
    sources: dict[str, np.ndarray] = {}
    for name, parts in recipe.items():
        if parts == ["mixture", "-"]:
            targets = [audio[t] for t in recipe if t != REST]
            sources[name] = audio["mixture"] - np.sum(targets, axis=0)
        else:
            sources[name] = np.sum([audio[p] for p in parts], axis=0)
    for name, data in sources.items():
        if not np.all(np.isfinite(data)):
            raise DatasetError(
                f"track {track.name!r}: {name!r} has NaN or infinite samples ({track.path})"
            )
    return sources, (audio["mixture"] if with_mixture else None)


def source_names(cached: Sequence[CachedTrack], targets: Sequence[str]) -> tuple[str, ...]:
    """``targets``, then the other sources of ``cached`` in the order first met, ``rest`` last."""
    names = dict.fromkeys(s for c in cached for s in c.sources if s not in targets and s != REST)
    return (
        tuple(targets) + tuple(names) + ((REST,) if any(REST in c.sources for c in cached) else ())
    )


def with_silent_rest(tracks: Sequence[CachedTrack], sources: Sequence[str]) -> list[CachedTrack]:
    """``tracks``, each given a silent ``rest`` when ``sources`` has one and it does not."""
    out = []
    for c in tracks:
        if REST in sources and REST not in c.sources:
            silent = np.zeros_like(next(iter(c.sources.values())), dtype=np.float32)
            c = CachedTrack(c.name, {**c.sources, REST: silent}, c.sample_rate, c.path, c.mixture)
        out.append(c)
    return out


def cache_tracks(
    tracks: Sequence[Any],
    targets: Sequence[str],
    sample_rate: int,
    audio_channels: int,
    cache_dir: str | os.PathLike[str],
    with_mixture: bool = False,
    progress: ProgressFn | None = None,
    split_rest: bool = False,
) -> tuple[list[CachedTrack], tuple[str, ...]]:
    """Decode (or reuse) the cache entries of ``tracks``.

    Args:
        tracks: :class:`sepcli.datasets.Track` objects.
        targets: stems the model estimates.
        sample_rate: model rate in Hz (tracks are resampled to it).
        audio_channels: model channel count (mono tracks are widened).
        cache_dir: root of the cache.
        with_mixture: also cache the stored (or derived) mixture (validation).
        progress: gets ``decode`` events (tracks; ``item``: the track about to be read).
        split_rest: cache non-target stems one by one (see :func:`source_recipe`).

    Returns:
        ``(cached, sources)``: the usable tracks and the source names, targets
        first, then the non-target stems kept apart (``split_rest``, in the
        order first met; a track may lack them), then ``rest`` when any track
        needs it (a track without its own ``rest`` gets a silent one).

    Raises:
        DatasetError: no track has one of ``targets``, or no track is usable.
        A track that lacks a target or fails to decode (corrupt file, stems of
        different lengths or rates) is skipped with a warning naming it.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not tracks:
        raise DatasetError("no tracks to train on")
    for target in targets:
        if not any(target in t.stems for t in tracks):
            have = sorted({s for t in tracks for s in t.stems})
            where = Path(tracks[0].path).parent
            raise DatasetError(
                f"no track in {where} has target {target!r} (stems found: {', '.join(have)})"
            )
    cached: list[CachedTrack] = []
    for i, track in enumerate(tracks):
        if progress is not None:
            progress(Progress("decode", i, len(tracks), "tracks", track.name))
        recipe = source_recipe(track, targets, split_rest)
        if recipe is None:
            missing = [t for t in targets if t not in track.stems]
            logger.warning(
                "skipping track %r (%s): it has no %s stem", track.name, track.path, missing
            )
            continue
        entry = (
            cache_dir
            / f"{track.name[:40].replace(os.sep, '_')}-{cache_key(track, recipe, sample_rate, audio_channels, with_mixture)}"
        )
        hit = open_cached(entry, track.name)
        if hit is None:
            try:
                sources, mixture = _decode(track, recipe, sample_rate, audio_channels, with_mixture)
            except SepcliError as exc:
                logger.warning("skipping track %r: %s", track.name, exc)
                continue
            entry.mkdir(parents=True, exist_ok=True)
            for name, data in sources.items():
                _save_npy(entry / f"{name}.npy", data)
            if mixture is not None:
                _save_npy(entry / "mixture.npy", mixture)
            meta = {
                "name": track.name,
                "path": str(track.path),
                "sources": list(sources),
                "sample_rate": sample_rate,
                "mixture": mixture is not None,
                "files": _fingerprint(track),
            }
            atomic.write_text(entry / "meta.json", json.dumps(meta))
            hit = open_cached(entry, track.name)
            if hit is None:
                raise DatasetError(f"cache entry {entry} could not be read back")
        cached.append(hit)
    if progress is not None:
        progress(Progress("decode", len(tracks), len(tracks), "tracks"))
    if not cached:
        raise DatasetError(
            f"none of the {len(tracks)} tracks could be used (see the warnings above)"
        )
    names = source_names(cached, targets)
    return with_silent_rest(cached, names), names
