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

from sepcli.models import build_model, reference_config  # noqa: E402
from sepcli.models.archive import count_parameters  # noqa: E402


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
    config = dict(reference_config(args.family).to_dict())
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = parse_value(value)
    config["sources"] = args.targets.split(",")
    torch.manual_seed(0)
    model = build_model(args.family, config)
    output = {"umx": "magnitude", "tfc-tdf": "complex"}.get(args.family, "waveform")
    times = step_seconds(
        model, args.steps, args.batch_size, args.segment, output, len(config["sources"])
    )
    print(
        f"{args.family} {json.dumps({k: config[k] for k in sorted(config) if k != 'sources'})}\n"
        f"{count_parameters(model):,} parameters; batch {args.batch_size} x {args.segment:g} s, "
        f"{args.threads} thread(s): step median {statistics.median(times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
