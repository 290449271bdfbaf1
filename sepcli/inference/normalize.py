"""Whole-track input normalisation: MSST's ``inference.normalize``.

Music-Source-Separation-Training's ``inference.py`` (ZFTurbo; ``utils/audio_utils.py``
``normalize_audio`` / ``denormalize_audio``), when a config sets
``inference.normalize: true``, standardises the whole track before ``demix`` and
undoes it on every stem after:

* ``mono = mix.mean(channel)`` of the track as the model is fed (at the model's
  rate, in its channels); ``mean = mono.mean()``, ``std = mono.std()`` — the
  *population* standard deviation (numpy's default, ``ddof=0``), no epsilon;
* the model sees ``(mix - mean) / std`` (every channel, the same two numbers);
* each output stem ``y`` becomes ``y * std + mean``.

An archive asks for this with ``metadata.input_normalization == "track"``
(:data:`TRACK`); the separator applies it per model unit, around its chunked
inference (:mod:`sepcli.inference.separator`). The statistics need the whole
track before the first chunk, so a file is read twice: a first pass accumulates
them with :class:`RunningStats` (float64, each block's own mean and squared
deviations merged with Chan, Golub and LeVeque's update — exact enough for a
large DC offset, where ``E[x^2] - E[x]^2`` would cancel), then the separation
streams as usual; memory does not grow with the track. A stream with no second
pass (standard input, ``sepcli live``) cannot know them and is refused
(:func:`stream_refusal`), as is a track whose mono mix is constant (``std``
0, or too small to divide by in float32): MSST would divide by zero and write
NaN.

Reference: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a
pairwise algorithm for computing sample variances" (1979).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from sepcli.errors import UsageError

__all__ = [
    "TRACK",
    "TrackStats",
    "RunningStats",
    "track_stats",
    "normalize",
    "denormalize",
    "stream_refusal",
    "constant_track",
]

#: ``metadata.input_normalization`` of a model normalised as MSST's ``inference.normalize``.
TRACK = "track"

#: The smallest standard deviation the float32 input may be divided by.
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class TrackStats:
    """Mean and population standard deviation of a track's mono mix (linear units)."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std)):
            raise ValueError(f"track statistics must be finite, got {self.mean}, {self.std}")
        if self.std < 0:
            raise ValueError(f"a standard deviation is >= 0, got {self.std}")

    @property
    def usable(self) -> bool:
        """Whether the float32 input can be divided by ``std`` (a constant track cannot)."""
        return self.std >= _TINY


class RunningStats:
    """Mean and population variance of a stream of samples, merged block by block.

    Each block's mean and sum of squared deviations are computed in float64
    (two passes over the block), then merged into the running ones (Chan et al.):
    ``delta = mean_b - mean``, ``mean += delta * n_b / n``,
    ``m2 += m2_b + delta**2 * n_a * n_b / n``. The result equals the two-pass
    figures of the whole track to float64 rounding, whatever the blocks.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, samples: np.ndarray) -> None:
        """Add samples (any shape; every element is one sample)."""
        x = np.asarray(samples, dtype=np.float64).ravel()
        n = x.size
        if n == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * self.count * n / total
        self.count = total

    def stats(self) -> TrackStats:
        """The figures so far (``std = sqrt(m2 / count)``); zeros before any sample."""
        if self.count == 0:
            return TrackStats(0.0, 0.0)
        return TrackStats(self.mean, math.sqrt(max(self.m2, 0.0) / self.count))


def track_stats(mix: np.ndarray | Tensor) -> TrackStats:
    """:class:`TrackStats` of a whole track ``mix (channel, time)`` held in memory."""
    acc = RunningStats()
    array = mix.detach().cpu().numpy() if isinstance(mix, Tensor) else np.asarray(mix)
    acc.add(array.mean(axis=0, dtype=np.float64))
    return acc.stats()


def normalize(x: Tensor, stats: TrackStats) -> Tensor:
    """``(x - mean) / std``, in ``x``'s dtype."""
    return (x - stats.mean) / stats.std


def denormalize(y: Tensor, stats: TrackStats) -> Tensor:
    """``y * std + mean``: a model output back to the track's scale."""
    return y * stats.std + stats.mean


def stream_refusal(model: str) -> UsageError:
    """The error for a model that needs whole-track statistics fed by a stream."""
    return UsageError(
        f"model {model!r} normalises its input by the whole track's mean and standard "
        "deviation (MSST's inference.normalize), which a stream cannot know before it "
        "ends: separate a file instead"
    )


def constant_track(where: str, model: str) -> UsageError:
    """The error for a track whose mono mix is constant (silence, or only an offset)."""
    return UsageError(
        f"{where}: the track is silent or constant, and model {model!r} divides its input "
        "by the track's standard deviation (MSST's inference.normalize), which is 0 here"
    )
