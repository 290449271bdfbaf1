"""HT-Demucs at the published size: CPU time of one 7.8-s segment for several variants.

Each variant is timed over one forward pass, alternating variants round by
round, after one untimed call each (TorchScript profiles its first calls):
process CPU time with 1 intra-op thread by default (steady on a shared
machine), or wall clock with ``--clock wall --threads 2`` (what a user waits
for; the issue's setting). The table gives medians. Each variant's output is
compared with our fp32 eager output (SNR).

* ``demucs``: ``demucs.htdemucs.HTDemucs`` (4.1.0), the reference;
* ``ours``: :class:`sepcli.models.nets.htdemucs.HTDemucs` in eager mode (attention
  through ``F.scaled_dot_product_attention``);
* ``ours-script``: the same, scripted (what an archive runs);
* ``ours-frozen``: ``torch.jit.optimize_for_inference(torch.jit.freeze(...))``
  (oneDNN layouts and conv folding);
* ``ours-channels-last``: spectrogram-branch inputs in channels-last memory format;
* ``ours-bf16``: ``torch.autocast("cpu", torch.bfloat16)`` (AMX on this CPU);
* ``ours-batch2``: two segments per call, time per segment.

Usage::

    python bench/bench_htdemucs_variants.py [--rounds 2] [--threads 1] [--clock cpu|wall]
        [--only demucs,ours-script] [--profile]

Needs ``pip install --no-deps demucs==4.1.0 einops julius``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from fractions import Fraction

import torch

import sepcli.models.nets.htdemucs as H


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--profile", action="store_true", help="print op shares of ours")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from demucs.htdemucs import HTDemucs as Reference

    torch.manual_seed(0)
    ref = Reference(
        ["drums", "bass", "other", "vocals"], samplerate=44100, segment=Fraction(39, 5),
        channels=48, nfft=4096, depth=4, dconv_mode=3, bottom_channels=512, t_layers=5,
        t_dropout=0.02,
    ).eval()  # fmt: skip
    ours = H.HTDemucs(H.HTDemucsConfig.reference()).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    for p in [*ours.parameters(), *ref.parameters()]:
        p.requires_grad_(False)
    x = torch.randn(1, 2, ours.segment_samples, generator=torch.Generator().manual_seed(0)) * 0.3
    scripted = torch.jit.script(ours)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(ours)))
    encode = H._FreqEncoder.forward

    def channels_last(mix: torch.Tensor) -> torch.Tensor:
        H._FreqEncoder.forward = lambda self, y: encode(
            self, y.contiguous(memory_format=torch.channels_last)
        )
        try:
            return ours(mix)
        finally:
            H._FreqEncoder.forward = encode

    def bf16(mix: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(mix).float()

    def batch2(mix: torch.Tensor) -> torch.Tensor:
        return ours(torch.cat([mix, mix]))[:1]

    variants = {
        "demucs": ref, "ours": ours, "ours-script": scripted, "ours-frozen": frozen,
        "ours-channels-last": channels_last, "ours-bf16": bf16, "ours-batch2": batch2,
    }  # fmt: skip
    if args.only:
        keep = ["demucs", "ours", *args.only.split(",")]
        variants = {k: v for k, v in variants.items() if k in keep}
    per_call = {"ours-batch2": 2}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        base = ours(x)
        for name, fn in variants.items():
            y = fn(x)
            fn(x)  # the second call is the first optimised one for TorchScript
            noise = (base - y).double().pow(2).sum().clamp_min(1e-300)
            snr = float(10 * torch.log10(base.double().pow(2).sum() / noise))
            print(f"{name}: SNR vs ours fp32 {snr:.1f} dB")
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = clock()
                fn(x)
                times[name].append((clock() - start) / per_call.get(name, 1))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                ours(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    mid = {k: statistics.median(v) for k, v in times.items() if v}
    unit = "CPU" if args.clock == "cpu" else "wall"
    print(f"{args.threads} thread(s), {args.rounds} rounds, {unit} clock, medians")
    for name, value in mid.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name}: {value:.2f} s {unit} per segment (runs {runs}); "
              f"demucs / this = {mid['demucs'] / value:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
