"""Blend trained archives into one ensemble archive (``sepcli models blend``).

Each member keeps its own weights and inference recipe: magnitude members use
the phase their metadata recommends (``wiener`` -> one Wiener iteration, as
Open-Unmix; anything else -> the mixture phase) unless ``wiener`` says
otherwise. Stem ``s`` of the blend is the weighted mean of the members that
output ``s`` (:class:`sepcli.models.ensemble.Ensemble`). The archive's
metadata names every member (name, file, SHA-256, weights) and joins their
licences and training data, so the terms a member inherits are not lost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sepcli.errors import UsageError
from sepcli.hashing import sha256_file
from sepcli.models.archive import Archive
from sepcli.models.build import export_archive
from sepcli.models.ensemble import Ensemble

__all__ = ["blend_archives", "default_weights", "export_blend"]


def default_weights(archives: Sequence[Archive], sources: Sequence[str]) -> list[list[float]]:
    """Equal weights: 1 for every member that outputs the stem, else 0."""
    return [[1.0 if s in a.metadata.sources else 0.0 for a in archives] for s in sources]


def _weights_rows(
    archives: Sequence[Archive],
    sources: Sequence[str],
    weights: Mapping[str, Sequence[float]] | None,
) -> list[list[float]]:
    rows = default_weights(archives, sources)
    for stem, row in (weights or {}).items():
        if stem not in sources:
            raise UsageError(f"weights for {stem!r}: not a blended stem ({', '.join(sources)})")
        if len(row) != len(archives):
            raise UsageError(f"weights for {stem!r}: {len(row)} values for {len(archives)} members")
        rows[sources.index(stem)] = [float(w) for w in row]
    return rows


def blend_archives(
    archives: Sequence[Archive],
    sources: Sequence[str] | None = None,
    weights: Mapping[str, Sequence[float]] | None = None,
    wiener: Sequence[int] | None = None,
) -> Ensemble:
    """An :class:`Ensemble` of loaded archives.

    Args:
        archives: two or more members (any family and sample rate; same channels).
        sources: blended stems; default every member stem, in first-seen order.
        weights: per stem, one weight per member (missing stems: equal weights
            over the members that output them).
        wiener: Wiener iterations per member; default from each member's
            ``phase`` (1 for ``wiener``, else 0).
    """
    if len(archives) < 2:
        raise UsageError("a blend needs at least two member archives")
    if len({a.metadata.audio_channels for a in archives}) > 1:
        each = ", ".join(f"{a.metadata.name} ({a.metadata.audio_channels} ch)" for a in archives)
        raise UsageError(f"members must share their channel count: {each}")
    if sources is None:
        sources = list(dict.fromkeys(s for a in archives for s in a.metadata.sources))
    sources = list(sources)
    if not sources or len(set(sources)) != len(sources):
        raise UsageError(f"stems must be distinct and not empty, got {sources}")
    if wiener is None:
        wiener = [1 if a.metadata.phase == "wiener" else 0 for a in archives]
    return Ensemble.from_archives(
        archives, sources, _weights_rows(archives, sources, weights), wiener_iterations=wiener
    )


def export_blend(
    archives: Sequence[Archive],
    output: str | os.PathLike[str],
    name: str,
    sources: Sequence[str] | None = None,
    weights: Mapping[str, Sequence[float]] | None = None,
    wiener: Sequence[int] | None = None,
    description: str | None = None,
) -> Path:
    """Write the blend of ``archives`` to ``output`` (atomically) and return its path.

    The recommended chunk ``overlap`` is the largest any member recommends (a
    member whose edges need a long crossfade still gets it).
    """
    bag = blend_archives(archives, sources, weights, wiener)
    metas = [a.metadata for a in archives]
    rows = [[float(w) for w in row] for row in bag.config.weights]
    members = []
    for m, (archive, meta) in enumerate(zip(archives, metas, strict=True)):
        member = {
            "name": meta.name,
            "family": meta.family,
            "phase": "wiener" if bag.config.members[m].wiener_iterations else "mixture",
            "weights": {s: row[m] for s, row in zip(bag.config.sources, rows, strict=True)},
        }
        if archive.path is not None:
            member["file"] = Path(archive.path).name
            member["sha256"] = sha256_file(Path(archive.path))
        members.append(member)
    licences = list(dict.fromkeys(meta.licence for meta in metas if meta.licence))
    data = [f"{meta.name}: {meta.training_data}" for meta in metas if meta.training_data]
    summary = ", ".join(f"{meta.name} ({meta.family})" for meta in metas)
    return export_archive(
        bag,
        output,
        name=name,
        licence=" | ".join(licences),
        training_data=" | ".join(data),
        description=description or f"blend of {summary}",
        overlap=max(float(meta.overlap) for meta in metas),
        extra={"blend": {"members": members}},
    )
