"""Evaluation: BSSEval v4 (museval-exact, vectorised), global SDR, SI-SDR,
oracles, aggregation and the dataset runner behind ``sepcli evaluate``."""

from __future__ import annotations

from sepcli.evaluation.bsseval import BssEvalScores, bss_eval_v4, match_length, num_windows
from sepcli.evaluation.metrics import MDX_EPS, METRICS, aggregate, global_sdr, si_sdr, track_medians
from sepcli.evaluation.oracles import ORACLES, oracle_separate

__all__ = [
    "BssEvalScores",
    "MDX_EPS",
    "METRICS",
    "ORACLES",
    "aggregate",
    "bss_eval_v4",
    "global_sdr",
    "match_length",
    "num_windows",
    "oracle_separate",
    "si_sdr",
    "track_medians",
]
