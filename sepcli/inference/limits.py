"""Bounds on the chunk length, shared by the CLI and :class:`~sepcli.inference.separator.Separator`.

A chunk's memory grows linearly with its length (the default model: about
10 MB per second of chunk; ``--segment 600`` peaked at 6 GB, ``--segment
100000`` at 18 GB before failing), and a chunk longer than the track only
adds padding. So a requested segment is checked against
:data:`MAX_SEGMENT_SECONDS` and, per track, capped at the track's length.
"""

from __future__ import annotations

import math

__all__ = ["MAX_SEGMENT_SECONDS", "check_segment_seconds", "cap_segment_samples"]

#: Longest chunk accepted, in seconds: ten minutes (about 6 GB with the default model).
MAX_SEGMENT_SECONDS = 600.0


def check_segment_seconds(segment_seconds: float | None) -> None:
    """Raise ``ValueError`` (one line) unless ``segment_seconds`` is None or a
    finite number in ``(0, MAX_SEGMENT_SECONDS]``."""
    if segment_seconds is None:
        return
    if not math.isfinite(segment_seconds) or segment_seconds <= 0:
        raise ValueError(f"segment must be a positive number of seconds, got {segment_seconds:g}")
    if segment_seconds > MAX_SEGMENT_SECONDS:
        raise ValueError(
            f"segment {segment_seconds:g} s is longer than the {MAX_SEGMENT_SECONDS:g} s allowed "
            "(a chunk's memory grows with its length: about 10 MB per second for the default "
            "model); longer tracks are processed in several chunks anyway"
        )


def cap_segment_samples(segment_samples: int, track_samples: int | None) -> int:
    """The chunk length to use for one track: ``segment_samples``, but no longer
    than the track (``track_samples``, when known and positive)."""
    if track_samples is None or track_samples <= 0:
        return segment_samples
    return max(1, min(segment_samples, track_samples))
