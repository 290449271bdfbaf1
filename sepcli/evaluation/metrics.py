"""Whole-signal metrics (MDX global SDR, SI-SDR) and score aggregation.

All metric functions are pure tensor functions (CPU or GPU); aggregation works
on plain per-frame score lists as stored in museval's JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MDX_EPS",
    "METRICS",
    "global_sdr",
    "si_sdr",
    "track_medians",
    "aggregate",
]

#: The MDX-challenge convention: ``delta = 1e-7`` added to numerator and denominator.
MDX_EPS = 1e-7
#: BSSEval metric names, in museval's order.
METRICS = ("SDR", "SIR", "ISR", "SAR")


def global_sdr(references: Tensor, estimates: Tensor, eps: float = MDX_EPS) -> Tensor:
    """MDX-challenge (a.k.a. "new" or "global") SDR over whole signals.

    ``10 log10((eps + sum ref^2) / (eps + sum (ref - est)^2))``, sums over
    channels and time (Mitsufuji et al., "Music Demixing Challenge 2021", 2022).

    Args:
        references, estimates: ``(..., channel, time)``, same shape.

    Returns:
        ``(...)`` float tensor in dB.
    """
    refs = references.to(torch.float64)
    ests = estimates.to(torch.float64)
    num = refs.square().sum((-2, -1)) + eps
    den = (refs - ests).square().sum((-2, -1)) + eps
    return 10 * torch.log10(num / den)


def si_sdr(
    references: Tensor, estimates: Tensor, zero_mean: bool = False, eps: float = 1e-12
) -> Tensor:
    """Scale-invariant SDR (Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019).

    The reference is scaled by ``alpha = <est, ref> / <ref, ref>`` computed over
    channels and time jointly; ``10 log10(|alpha ref|^2 / |alpha ref - est|^2)``.

    Args:
        references, estimates: ``(..., channel, time)``, same shape.
        zero_mean: subtract each channel's mean first (as in the paper's setup).
        eps: guards divisions by zero (silent reference or perfect estimate).

    Returns:
        ``(...)`` float64 tensor in dB.
    """
    refs = references.to(torch.float64)
    ests = estimates.to(torch.float64)
    if zero_mean:
        refs = refs - refs.mean(-1, keepdim=True)
        ests = ests - ests.mean(-1, keepdim=True)
    dims = (-2, -1)
    alpha = (ests * refs).sum(dims, keepdim=True) / (refs.square().sum(dims, keepdim=True) + eps)
    target = alpha * refs
    return 10 * torch.log10(
        (target.square().sum(dims) + eps) / ((target - ests).square().sum(dims) + eps)
    )


def _finite(values: Iterable[float | None]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _median(values: Iterable[float | None]) -> float:
    arr = _finite(values)
    return float(np.median(arr)) if arr.size else math.nan


def _mean(values: Iterable[float | None]) -> float:
    arr = _finite(values)
    return float(np.mean(arr)) if arr.size else math.nan


def track_medians(frames: Mapping[str, Sequence[float | None]]) -> dict[str, tuple[float, float]]:
    """Per metric, ``(median, mean)`` over a track's frames, NaN/inf frames left out
    (museval's ``nanmedian``; it stores inf as NaN)."""
    return {m: (_median(v), _mean(v)) for m, v in frames.items()}


def aggregate(
    scores: Mapping[str, Mapping[str, Mapping[str, Sequence[float | None]]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Aggregate per-frame scores of several tracks.

    Args:
        scores: ``track -> stem -> metric -> per-frame values``.

    Returns:
        ``stem -> metric -> {"median": ..., "mean": ..., "tracks": n}`` where
        ``median`` is the median over tracks of each track's median over frames
        (museval's "median of medians"), ``mean`` the mean over tracks of each
        track's mean over frames, and ``tracks`` the number of tracks with a
        finite value. The extra stem ``"overall"`` holds, per metric, the mean
        over stems of those figures.
    """
    per_stem: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for stems in scores.values():
        for stem, metrics in stems.items():
            for metric, (med, mean) in track_medians(metrics).items():
                per_stem.setdefault(stem, {}).setdefault(metric, []).append((med, mean))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stem, metrics in per_stem.items():
        out[stem] = {}
        for metric, pairs in metrics.items():
            medians = [p[0] for p in pairs]
            out[stem][metric] = {
                "median": _median(medians),
                "mean": _mean(p[1] for p in pairs),
                "tracks": int(_finite(medians).size),
            }
    if out:
        names = sorted({m for metrics in out.values() for m in metrics}, key=_metric_order)
        out["overall"] = {
            m: {
                "median": _mean(out[s][m]["median"] for s in out if m in out[s]),
                "mean": _mean(out[s][m]["mean"] for s in out if m in out[s]),
                "tracks": max(out[s][m]["tracks"] for s in out if m in out[s]),
            }
            for m in names
        }
    return out


def _metric_order(name: str) -> tuple[int, str]:
    return (METRICS.index(name) if name in METRICS else len(METRICS), name)
