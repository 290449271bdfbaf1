"""Validation: separate full validation tracks and score them like ``evaluate``.

Each validation track's mixture goes through the same
:class:`sepcli.inference.Separator` pipeline that users and ``evaluate`` run
(chunking, overlap-add, phase step), with the model being trained wrapped as an
in-memory archive, so validation scores are what the exported archive will get.
The metric is one function, :func:`sdr_metric`: BSSEval v4 SDR (the evaluate
command's implementation), median over 1-s frames per track and then median
over tracks per target (the SiSEC/MUSDB convention). A model of ``vocals``
alone is scored with ``rest = mixture - vocals`` as the second source, as
museval scores ``vocals`` with ``accompaniment``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sepcli.models.archive import Archive, ArchiveMetadata
from sepcli.training.cache import REST, CachedTrack

__all__ = ["MetricFn", "bsseval_sdr", "framewise_sdr", "sdr_metric", "metric_name", "validate"]

logger = logging.getLogger(__name__)

#: ``metric(references (S, C, T), estimates (S, C, T), sample_rate) -> per-source score (S,)``
MetricFn = Callable[[Tensor, Tensor, int], Tensor]


def bsseval_sdr(references: Tensor, estimates: Tensor, sample_rate: int) -> Tensor:
    """BSSEval v4 SDR (:func:`sepcli.evaluation.bsseval.bss_eval_v4`, 1-s windows),
    median over windows per source, as museval reports it.

    Args:
        references, estimates: ``(source, channel, time)`` with at least two sources.

    Returns:
        ``(source,)`` float64; NaN where every window is silent.
    """
    from sepcli.evaluation.bsseval import bss_eval_v4

    scores = bss_eval_v4(references, estimates, window=sample_rate, hop=sample_rate)
    return torch.nanmedian(scores.sdr, dim=-1).values


def framewise_sdr(
    references: Tensor, estimates: Tensor, sample_rate: int, window: float = 1.0
) -> Tensor:
    """Median over 1-s frames of ``10 log10(|s|^2 / |s - ŝ|^2)`` per source.

    Frames where the reference is silent are skipped (as in BSSEval v4); the
    BSSEval projection (allowed distortion filter) is not applied, so values are
    at most the BSSEval SDR.

    Args:
        references, estimates: ``(source, channel, time)``.

    Returns:
        ``(source,)`` float64; NaN for a source silent everywhere.
    """
    win = max(int(window * sample_rate), 1)
    n = references.shape[-1] // win
    if n == 0:
        n, win = 1, references.shape[-1]
    ref = references[..., : n * win].double().reshape(references.shape[0], -1, n, win)
    est = estimates[..., : n * win].double().reshape(estimates.shape[0], -1, n, win)
    num = (ref**2).sum(dim=(1, 3))
    den = ((ref - est) ** 2).sum(dim=(1, 3))
    sdr = 10 * torch.log10((num + 1e-12) / (den + 1e-12))
    out = torch.full((ref.shape[0],), math.nan, dtype=torch.float64)
    for s in range(ref.shape[0]):
        ok = num[s] > 1e-9
        if bool(ok.any()):
            out[s] = sdr[s][ok].median()
    return out


def sdr_metric() -> tuple[str, MetricFn]:
    """``(name, fn)`` of the validation metric: BSSEval v4 SDR when
    :mod:`sepcli.evaluation` is installed, else :func:`framewise_sdr`."""
    try:
        import sepcli.evaluation.bsseval  # noqa: F401
    except ImportError:
        return "framewise-sdr-median", framewise_sdr
    return "bsseval-v4-sdr-median", bsseval_sdr


def metric_name() -> str:
    return sdr_metric()[0]


@torch.no_grad()
def validate(
    model: nn.Module,
    metadata: ArchiveMetadata,
    tracks: Sequence[CachedTrack],
    targets: Sequence[str],
    segment: float | None = None,
    metric: MetricFn | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Median score per target over ``tracks`` (full tracks).

    Args:
        model: the model (eval mode is set and restored).
        metadata: its archive metadata (sources = ``targets``).
        tracks: cached validation tracks (with ``mixture``).
        segment: chunk length in seconds (default: the archive's).
        metric: per-source metric (default: :func:`sdr_metric`).

    Returns:
        target -> median over tracks (tracks where the target is silent are left out).
    """
    from sepcli.inference.separator import Separator

    metric = metric or sdr_metric()[1]
    was_training = model.training
    model.eval()
    try:
        separator = Separator(Archive(model, metadata), device=device, segment_seconds=segment)
        scores: dict[str, list[float]] = {t: [] for t in targets}
        for track in tracks:
            mixture = np.array(
                track.mixture if track.mixture is not None else sum(track.sources.values())
            )
            est = separator.separate(mixture, track.sample_rate, stems=list(targets))
            names = list(targets)
            ests = [est[t] for t in targets]
            if REST in track.sources:
                # the rest is scored as an estimate too (mixture - targets), as museval
                # scores accompaniment: BSSEval's interference term needs all sources
                names.append(REST)
                ests.append(torch.from_numpy(mixture) - torch.stack(ests).sum(0))
            refs = torch.stack([torch.from_numpy(np.array(track.sources[n])) for n in names])
            if len(names) < 2 and metric is bsseval_sdr:
                values = framewise_sdr(refs, torch.stack(ests), track.sample_rate)
            else:
                values = metric(refs, torch.stack(ests), track.sample_rate)
            values = values[: len(targets)]
            for t, v in zip(targets, values.tolist(), strict=True):
                if math.isfinite(v):
                    scores[t].append(float(v))
        return {t: float(np.median(v)) if v else math.nan for t, v in scores.items()}
    finally:
        model.train(was_training)
