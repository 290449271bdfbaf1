"""Seconds per training step of any model family and size on this machine.

What ``sepcli train`` does per step (batch of ``--batch-size`` stereo chunks of
``--segment`` seconds: the family's forward, its default loss, backward,
gradient clipping at 5, Adam) on random audio, with ``--threads`` threads,
median over ``--steps`` steps after one warm-up step; data loading excluded.
The family's reference config is the base and ``--set KEY=VALUE`` changes it,
as ``sepcli train --set model_config.KEY=VALUE`` does. Used to check, before a
run, whether a family fits a CPU budget (docs/training.md, "Fourth round").

Usage::

    python bench/bench_train_step.py --family umx --set hidden_size=128 --set targets=vocals
    python bench/bench_train_step.py --family tfc-tdf --set dim_f=1024 --set channels=16 \\
        --set growth=16 --set tfc_layers=1 --set segment_frames=128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_widths import step_seconds  # noqa: E402

from sepcli.models.archive import count_parameters  # noqa: E402
from sepcli.training.config import TrainConfig, apply_overrides, parse_set  # noqa: E402
from sepcli.training.run import build_run_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="umx")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--targets", default="vocals", help="comma-separated sources")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the model sepcli train would build with --model FAMILY --set model_config.KEY=VALUE
    overrides = {f"model_config.{k}": v for k, v in parse_set(args.set).items()}
    config = apply_overrides(
        TrainConfig(model=args.family, targets=tuple(args.targets.split(","))), overrides
    )
    torch.manual_seed(0)
    model, meta = build_run_model(config)
    times = step_seconds(
        model, args.steps, args.batch_size, args.segment, meta.output, len(config.targets)
    )
    settings = {k: v for k, v in sorted(meta.config.items()) if k != "sources"}
    print(
        f"{args.family} {json.dumps(settings)}\n"
        f"{count_parameters(model):,} parameters; batch {args.batch_size} x {args.segment:g} s, "
        f"{args.threads} thread(s): step median {statistics.median(times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
