"""Benchmark: sepcli's BSSEval v4 against museval on one 3-minute stereo track.

Scores a synthetic 4-source stereo track (44.1 kHz, 1-second windows and hop,
512-tap filters) with ``sepcli.evaluation.bsseval.bss_eval_v4`` and with
``museval.evaluate`` in the same process and thread setting, runs interleaved
(ours, museval, ours, ...), and prints the median time of each, the speed ratio,
the largest per-frame difference and the machine's load average.

    python bench/bench_bsseval.py [--seconds 180] [--runs 3] [--museval-runs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def make_track(
    seconds: float, sample_rate: int = 44100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Four coloured-noise sources with a slow envelope and estimates with leakage,
    both ``(source, channel, time)`` float64."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    refs = np.empty((4, 2, n))
    for j in range(4):
        white = rng.standard_normal((2, n))
        spec = np.fft.rfft(white, axis=-1)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        spec /= 1.0 + (freqs / (200.0 * (j + 1) ** 2)) ** (1 + j * 0.5)
        src = np.fft.irfft(spec, n=n, axis=-1)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (0.05 + 0.1 * j) * np.arange(n) / sample_rate)
        refs[j] = 0.1 * src / src.std() * envelope
    mix = refs.sum(0)
    ests = 0.8 * refs + 0.1 * mix[None] + 0.005 * rng.standard_normal(refs.shape)
    return refs, ests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--museval-runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import museval  # test-only dependency

    from sepcli.evaluation.bsseval import bss_eval_v4

    refs, ests = make_track(args.seconds)
    ref_t = torch.from_numpy(refs).to(args.device)
    est_t = torch.from_numpy(ests).to(args.device)
    ours_times, museval_times = [], []
    load_before = os.getloadavg()[0]
    # interleaved: ours, museval, ours, museval, ... then the remaining runs of either
    for i in range(max(args.runs, args.museval_runs)):
        if i < args.runs:
            start = time.perf_counter()
            ours = bss_eval_v4(ref_t, est_t, 44100, 44100)
            if args.device != "cpu":
                torch.cuda.synchronize()
            ours_times.append(time.perf_counter() - start)
        if i < args.museval_runs:
            start = time.perf_counter()
            theirs = museval.evaluate(
                refs.transpose(0, 2, 1), ests.transpose(0, 2, 1), win=44100, hop=44100
            )
            museval_times.append(time.perf_counter() - start)
    diff = max(
        float(np.nanmax(np.abs(np.asarray(t) - o.cpu().numpy())))
        for t, o in zip(theirs, ours, strict=True)
    )
    ours_med, museval_med = statistics.median(ours_times), statistics.median(museval_times)
    print(
        f"track: {args.seconds:.0f} s stereo, 4 sources, 44.1 kHz; threads={args.threads}; "
        f"device={args.device}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"sepcli bss_eval_v4: median {ours_med:.2f} s over {args.runs} runs {[round(t, 2) for t in ours_times]}"
    )
    print(
        f"museval.evaluate:   median {museval_med:.2f} s over {args.museval_runs} runs {[round(t, 2) for t in museval_times]}"
    )
    print(
        f"speed-up: {museval_med / ours_med:.1f}x; largest per-frame difference {diff:.2e} dB "
        f"({ours[0].shape[-1]} frames)"
    )


if __name__ == "__main__":
    main()
