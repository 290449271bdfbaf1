"""Dataset readers shared by evaluation and training.

MUSDB18 (``.stem.mp4`` through ffmpeg), MUSDB18-HQ (``<subset>/<track>/<stem>.wav``)
and plain folders of ``<track>/<stem>.<ext>``; ``accompaniment`` = drums + bass +
other. Only :mod:`sepcli.audio` and :mod:`sepcli.errors` are imported.
"""

from __future__ import annotations

from sepcli.datasets.layouts import LAYOUTS, SUBSETS, detect_layout, open_dataset
from sepcli.datasets.splits import MUSDB_VALIDATION_TRACKS, prefix_group, split_tracks
from sepcli.datasets.tracks import MUSDB_SOURCES, MUSDB_STREAMS, Track

__all__ = [
    "LAYOUTS",
    "SUBSETS",
    "MUSDB_SOURCES",
    "MUSDB_STREAMS",
    "MUSDB_VALIDATION_TRACKS",
    "Track",
    "detect_layout",
    "open_dataset",
    "prefix_group",
    "split_tracks",
]
