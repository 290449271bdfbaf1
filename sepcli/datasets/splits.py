"""Train/validation splits: the MUSDB18 convention and a helper for plain folders."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sepcli.errors import DatasetError

if TYPE_CHECKING:
    from sepcli.datasets.tracks import Track

__all__ = ["MUSDB_VALIDATION_TRACKS", "prefix_group", "split_tracks"]

#: musdb's ``validation_tracks`` (used by Open-Unmix): 14 tracks of MUSDB18 ``train``.
MUSDB_VALIDATION_TRACKS: tuple[str, ...] = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


def prefix_group(name: str, separator: str = "_") -> str:
    """Group id of a track name: the text before the first ``separator``.

    MIR-1K clips are ``<singer>_<song>_<nn>``, so ``prefix_group("abjones_1_01")``
    is ``"abjones"``: splitting by group keeps each singer on one side.
    """
    return name.split(separator, 1)[0]


def split_tracks(
    tracks: Sequence[Track],
    valid: Sequence[str] | float,
    group: Callable[[str], str] | str | None = None,
    seed: int = 0,
    strict: bool = True,
) -> tuple[list[Track], list[Track]]:
    """Split tracks into ``(train, valid)``, keeping each group on one side.

    Args:
        tracks: the tracks to split (order is kept in both outputs).
        valid: either names (a track is in ``valid`` when its name, or its group
            id when ``group`` is given, is listed) or a fraction in ``(0, 1)`` of
            the groups drawn at random with ``seed`` (at least one group on each
            side).
        group: ``None`` (each track is its own group), ``"prefix"`` (text before
            the first ``_``, see :func:`prefix_group`) or a function name -> id.
        seed: seed of the draw when ``valid`` is a fraction.
        strict: raise when a listed name matches no track (off for default lists
            such as :data:`MUSDB_VALIDATION_TRACKS` on a partial copy).

    Raises:
        DatasetError: a fraction outside ``(0, 1)``, fewer than two groups for a
            fractional split, or listed names that match no track.
    """
    if group is None:
        key: Callable[[str], str] = lambda name: name  # noqa: E731
    elif group == "prefix":
        key = prefix_group
    elif callable(group):
        key = group
    else:
        raise DatasetError(f"unknown split grouping {group!r} (use None, 'prefix' or a function)")

    groups = [key(t.name) for t in tracks]
    if isinstance(valid, (int, float)) and not isinstance(valid, bool):
        fraction = float(valid)
        if not 0.0 < fraction < 1.0:
            raise DatasetError(f"validation fraction must be between 0 and 1, got {fraction}")
        unique = sorted(set(groups))
        if len(unique) < 2:
            raise DatasetError(f"cannot split {len(unique)} group(s) into train and validation")
        count = min(max(1, math.ceil(fraction * len(unique))), len(unique) - 1)
        order = np.random.default_rng(seed).permutation(len(unique))
        chosen = {unique[i] for i in order[:count]}
    else:
        chosen = set(valid)
        known = {t.name for t in tracks} | set(groups)
        unknown = sorted(chosen - known)
        if unknown and strict:
            raise DatasetError(f"validation names match no track: {', '.join(unknown)}")
    train = [
        t for t, g in zip(tracks, groups, strict=True) if g not in chosen and t.name not in chosen
    ]
    held = [t for t, g in zip(tracks, groups, strict=True) if g in chosen or t.name in chosen]
    return train, held
