"""``sepcli train``: train a model of any family on a folder of stems, export an archive."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

from sepcli.cli.common import bars_shown, err_console, handle_errors, out_console, setup_logging
from sepcli.models.families import TRAINABLE_FAMILIES
from sepcli.progress import Progress


@click.command("train")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Dataset folder: MUSDB18 (.stem.mp4), MUSDB18-HQ or <track>/<stem>.<ext>; "
    "repeat to train on several (numbered 0, 1, ... for --valid-roots, --data-weights).",
)
@click.option(
    "--model",
    "family",
    type=click.Choice(TRAINABLE_FAMILIES),
    default=None,
    help="Model family [umx].",
)
@click.option("--targets", default=None, help="Comma-separated stems to estimate [vocals].")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML file of settings (see docs/training.md).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting, e.g. --set aug_mix=false --set model_config.hidden_size=256.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Run folder: config, checkpoints, log.jsonl, curves.svg, the archive.",
)
@click.option("--epochs", type=click.IntRange(1), default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option(
    "--segment",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Training chunk length in seconds.",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate."
)
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto [cpu].")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data loader processes.")
@click.option(
    "--max-params", type=click.IntRange(0), default=None, help="Refuse models larger than this."
)
@click.option(
    "--valid",
    default=None,
    help="Validation split: names (comma-separated), @FILE, a fraction, or 'none' "
    "(with several --data: plain folders only; MUSDB keeps its 14 tracks).",
)
@click.option(
    "--valid-group",
    "valid_group_sep",
    default=None,
    metavar="SEP",
    help="Split by the id prefix before SEP (e.g. '_' keeps each MIR-1K singer on one side).",
)
@click.option(
    "--valid-roots",
    default=None,
    metavar="LIST",
    help="Validate only on these --data roots (0-based, comma-separated, e.g. 0) [all].",
)
@click.option(
    "--data-weights",
    default=None,
    metavar="LIST",
    help="Share of the training draws of each --data root, e.g. 0.7,0.3 "
    "[proportional to their training tracks].",
)
@click.option(
    "--valid-every",
    type=click.IntRange(0),
    default=None,
    help="Validate every N epochs (0 = never).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=None,
    help="Stop after N epochs without improvement (0 = never).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(0),
    default=None,
    help="Stop after the epoch that takes the run past this many minutes "
    "(summed over resumes; that epoch is validated; 0 = none).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where decoded tracks are cached [OUT/../cache].",
)
@click.option("--name", default=None, help="Name of the exported model.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@handle_errors
def train(
    data: tuple[Path, ...],
    family: str | None,
    targets: str | None,
    config_file: Path | None,
    sets: tuple[str, ...],
    out: Path,
    resume: bool,
    quiet: bool,
    verbose: bool,
    **options: Any,
) -> None:
    """Train a separation model and export its best weights as an archive.

    \b
    Examples:
      sepcli train --data musdb18 --model umx --targets vocals --out runs/umx-vocals
      sepcli train --data mir1k --model waveform --targets vocals --valid 0.1 --valid-group _ \\
          --set sample_rate=16000 --out runs/mir1k
      sepcli train --data musdb18 --data mir1k --data-weights 0.7,0.3 --valid-roots 0 \\
          --targets vocals --out runs/umx-combined
      torchrun --nproc_per_node 2 -m sepcli train --data musdb18 --model tfc-tdf --out runs/tfc
    """
    from sepcli.training.config import (
        TrainConfig,
        apply_overrides,
        load_config,
        load_toml,
        parse_set,
    )
    from sepcli.training.run import train as run_train

    if os.environ.get("RANK", "0") != "0":
        quiet = True  # under torchrun, rank 0 alone reports
    setup_logging(quiet=quiet, verbose=verbose)
    config = TrainConfig()
    saved = out / "config.toml"
    if resume and saved.is_file():
        config = load_config(saved)
    if config_file is not None:
        config = apply_overrides(config, load_toml(config_file), where=str(config_file))
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if data:
        given["data"] = [str(d) for d in data]
    if family is not None:
        given["model"] = family
    if targets is not None:
        given["targets"] = targets
    if given.get("cache_dir") is not None:
        given["cache_dir"] = str(given["cache_dir"])
    given["out"] = str(out)
    config = apply_overrides(config, given, where="command line")
    config = apply_overrides(config, parse_set(sets), where="--set")

    with Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not bars_shown(quiet),
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}

        def show(event: Progress) -> None:
            if event.task == "decode":
                if "data" not in tasks:
                    tasks["data"] = progress.add_task("decoding", total=event.total, info="")
                progress.update(
                    tasks["data"], completed=event.done, total=event.total, info=event.item[:40]
                )
            elif event.task == "train":
                if event.done == 0:  # an epoch starts
                    if "data" in tasks:
                        progress.remove_task(tasks.pop("data"))
                    tasks["epoch"] = progress.add_task(event.item, total=event.total, info="")
                else:
                    progress.update(
                        tasks["epoch"], completed=event.done, info=f"loss {event.info['loss']:.4g}"
                    )
            elif event.task == "validate":
                progress.update(tasks["epoch"], info=f"validating on {event.total} tracks")
            elif event.task == "epoch":
                progress.remove_task(tasks.pop("epoch"))
                if not quiet:
                    info = event.info
                    valid = info.get("valid") or {}
                    sdr = "  ".join(f"{t} {v:.2f} dB" for t, v in valid.items() if math.isfinite(v))
                    err_console.print(
                        f"epoch {info['epoch']}: loss {info['train_loss']:.4g}  lr {info['lr']:.3g}"
                        + (f"  SDR {sdr}" if sdr else "")
                        + f"  (best epoch {info['best_epoch']})"
                    )

        result = run_train(config, resume=resume, progress=show)
    if result.archive is not None:
        out_console.print(str(result.archive), soft_wrap=True)
