"""Forward-pass time per second of audio of each model family at its reference size.

Peer: the ``openunmix`` package's UMX (umxhq size, four targets: its STFT,
magnitude and four target networks, i.e. the same work as our UMX ``forward``)
on the same input in the same process. Runs are interleaved (one run of every
model per round) so that machine load affects all alike; the figures are
medians over the rounds. Random weights: speed does not depend on them.

Usage::

    python bench/bench_models.py [--seconds 6] [--rounds 5] [--threads 2]

Needs ``openunmix`` installed (``pip install --no-deps openunmix``); a stand-in
``torchaudio`` module is registered as in the tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from sepcli.models import build_model, export_archive, load_archive, reference_config
from sepcli.models.archive import count_parameters


def _openunmix_peer(sample_rate: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    from openunmix import model as oum
    from openunmix import utils as ouu
    from openunmix.transforms import ComplexNorm, make_filterbanks

    max_bin = int(ouu.bandwidth_to_max_bin(sample_rate, 4096, 16000))
    targets = [
        oum.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=max_bin).eval()
        for _ in range(4)
    ]
    encoder, _ = make_filterbanks(n_fft=4096, n_hop=1024, center=True, sample_rate=sample_rate)
    norm = ComplexNorm(mono=False)

    def run(mix: torch.Tensor) -> torch.Tensor:
        mag = norm(encoder(mix))
        return torch.stack([t(mag) for t in targets], 1)

    return run, sum(count_parameters(t) for t in targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="input length in seconds")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--families", default="umx,tfc-tdf,waveform,ensemble", help="comma-separated families"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sample_rate = 44100
    mix = 0.3 * torch.randn(1, 2, int(args.seconds * sample_rate))

    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    params: dict[str, int] = {}
    peer, peer_params = _openunmix_peer(sample_rate)
    runners["openunmix UMX (peer)"] = peer
    params["openunmix UMX (peer)"] = peer_params
    tmp = Path(tempfile.mkdtemp(prefix="bench-models-"))
    for family in args.families.split(","):
        model = build_model(family, reference_config(family)).eval()
        params[family] = count_parameters(model)
        runners[f"{family} (eager)"] = model
        path = export_archive(model, tmp / f"{family}.sepcli", name=f"bench-{family}")
        runners[f"{family} (archive)"] = load_archive(path).module
        params[f"{family} (archive)"] = params[family]
        params[f"{family} (eager)"] = params[family]

    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():  # warm-up (TorchScript profiles its first calls)
            run(mix)
            run(mix)
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(mix)
                times[name].append(time.perf_counter() - start)

    peer_median = statistics.median(times["openunmix UMX (peer)"])
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, input {args.seconds:g} s stereo 44.1 kHz, "
        f"median of {args.rounds} interleaved rounds"
    )
    print("| model | parameters | s per s of audio | x real time | time / peer |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"| {name} | {params[name] / 1e6:.2f} M | {med / args.seconds:.4f} | "
            f"{args.seconds / med:.1f} | {med / peer_median:.2f} |"
        )


if __name__ == "__main__":
    main()
