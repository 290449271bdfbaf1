"""What the width of the default's Open-Unmix network costs: a training step and a separation.

For each ``--hidden`` size, the shipped default's configuration (n_fft 4096,
hop 1024, 3 BiLSTM layers, 16 kHz bandwidth, one target) with that hidden size:

* **training step**: what ``sepcli train`` does per step with the default's
  recipe (batch of 16 three-second stereo chunks: STFT of mixture and target,
  network, magnitude MSE, backward, gradient clipping at 5, Adam), on random
  audio, ``--train-threads`` threads (1: the default was trained one run per
  core), median over ``--steps`` steps after one warm-up step. Data loading is
  not included (it does not depend on the width).
* **separation**: the installed ``sepcli separate`` (whole command, as
  ``bench/bench_default.py`` times it) of a 3-minute stereo track with an
  archive of random weights at that width (speed does not depend on the weight
  values), ``--threads`` threads, rounds interleaved over the widths.

Usage::

    python bench/bench_widths.py [--hidden 128,192,256,384,512] [--steps 7] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_default import time_ours, write_track  # noqa: E402

from sepcli.models import build_model, export_archive, load_archive  # noqa: E402
from sepcli.models.archive import count_parameters  # noqa: E402
from sepcli.training.losses import DEFAULT_LOSS, make_loss  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / "sepcli" / "assets" / "default.sepcli"


def step_seconds(
    model: torch.nn.Module,
    steps: int,
    batch: int,
    seconds: float,
    output: str = "magnitude",
    sources: int = 1,
) -> list[float]:
    """Seconds of each of ``steps`` training steps (after a warm-up) on random audio."""
    n_fft, hop = getattr(model, "n_fft", 4096), getattr(model, "hop_length", 1024)
    _, loss_fn = make_loss(output, DEFAULT_LOSS[output], n_fft, hop, sources)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    length = int(seconds * 44100)
    times = []
    model.train()
    for i in range(steps + 1):
        targets = 0.1 * torch.randn(batch, sources, 2, length, generator=gen)
        mixture = targets.sum(1) + 0.1 * torch.randn(batch, 2, length, generator=gen)
        start = time.perf_counter()
        loss = loss_fn(model(mixture), targets, mixture)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if i:  # the first step warms up allocators and Adam
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="128,192,256,384,512")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment", type=float, default=3.0)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="separation rounds (0 = skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    sizes = [int(h) for h in args.hidden.split(",")]
    base = load_archive(DEFAULT).metadata
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    torch.set_num_threads(args.train_threads)
    rows: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in sizes:
            torch.manual_seed(0)
            model = build_model("umx", {**base.config, "hidden_size": hidden})
            steps = step_seconds(model, args.steps, args.batch_size, args.segment)
            path = Path(tmp) / f"umx-{hidden}.sepcli"
            export_archive(
                model, path, name=f"umx-{hidden}", phase=base.phase, overlap=base.overlap
            )
            rows[hidden] = {
                "params": count_parameters(model),
                "step": steps,
                "sep": [],
                "path": path,
            }
            print(f"hidden {hidden}: step median {statistics.median(steps):.3f} s", flush=True)
        if args.rounds:
            src = Path(tmp) / "track.wav"
            write_track(src, args.minutes)
            for _ in range(args.rounds):  # interleaved so that machine load affects all alike
                for hidden in sizes:
                    seconds = time_ours(sepcli, src, Path(tmp) / "out", str(rows[hidden]["path"]),
                                        args.threads)  # fmt: skip
                    rows[hidden]["sep"].append(seconds)  # type: ignore[union-attr]
    print(
        f"\ntraining step: batch {args.batch_size} x {args.segment:g} s, {args.train_threads} "
        f"thread(s), median of {args.steps}; separation: {args.minutes:g}-min track, "
        f"{args.threads} threads, median of {args.rounds}\n"
    )
    print("| hidden | parameters | training step (s) | step / hidden 128 | separation (s) |")
    print("|---:|---:|---:|---:|---:|")
    first = statistics.median(rows[sizes[0]]["step"])  # type: ignore[arg-type]
    for hidden in sizes:
        row = rows[hidden]
        step = statistics.median(row["step"])  # type: ignore[arg-type]
        sep = f"{statistics.median(row['sep']):.2f}" if row["sep"] else "-"  # type: ignore[arg-type]
        print(f"| {hidden} | {row['params']:,} | {step:.3f} | {step / first:.2f} | {sep} |")


if __name__ == "__main__":
    main()
