"""``sepcli separate``: files and folders in, stems out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from sepcli import atomic, audio
from sepcli.cli.bars import download_bar
from sepcli.cli.common import err_console, handle_errors, separator_options, setup_logging
from sepcli.errors import SepcliError, UsageError
from sepcli.inference.separator import Separator, resolve_device, track_name

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
_PLACEHOLDERS = {"track", "stem", "ext", "model", "parent"}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``."""
    if not text:
        return None
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like K/N (e.g. 2/8), got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return k, n


def take_shard(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The K-th of N deterministic round-robin slices of the inputs sorted by path."""
    if shard is None:
        return files
    k, n = shard
    ordered = sorted(files, key=lambda p: str(p))
    return ordered[k - 1 :: n]


def output_paths(
    path: Path, out_dir: Path, template: str, stems: list[str], ext: str, model: str
) -> dict[str, Path]:
    fields = {"track": track_name(path), "ext": ext, "model": model, "parent": path.parent.name}
    return {stem: out_dir / template.format(stem=stem, **fields) for stem in stems}


def check_template(template: str) -> None:
    import string

    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = names - _PLACEHOLDERS
    if unknown:
        raise UsageError(
            f"--filename: unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join('{' + p + '}' for p in sorted(_PLACEHOLDERS))}"
        )
    if "stem" not in names:
        raise UsageError("--filename must contain {stem}, or every stem would go to the same file")
    if "track" not in names:
        raise UsageError(
            "--filename must contain {track}, or every input would go to the same file"
        )


def write_report(path: Path, records: list[dict[str, Any]]) -> None:
    """Write the JSON report atomically."""
    atomic.write_text(path, json.dumps({"version": 1, "inputs": records}, indent=2))


def load_model_for_cli(
    model: str, device: torch.device, cache_dir: str | None, offline: bool, quiet: bool
):
    """Resolve a name or path (downloading on first use, with a progress bar)."""
    from sepcli.hub import load_model

    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    if offline:
        kwargs["offline"] = True
    with download_bar(quiet) as on_progress:
        return load_model(model, device=device, progress=on_progress, **kwargs)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("separated"),
    show_default=True,
    help="Folder the stems are written to.",
)
@click.option(
    "--stems",
    default=None,
    help="Comma-separated stems, e.g. vocals,accompaniment "
    "(default: every source of the model). Derived: accompaniment, no_<source>.",
)
@click.option(
    "-m",
    "--model",
    default="default",
    show_default=True,
    help="Registry name or path of a .sepcli archive.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps.",
)
@click.option("--cuda", is_flag=True, help="Shorthand for --device cuda.")
@separator_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["wav", "flac", "mp3", "ogg"]),
    default="wav",
    show_default=True,
)
@click.option(
    "--bit-depth",
    type=click.Choice(["16", "24", "32"]),
    default="16",
    show_default=True,
    help="PCM bits (32 is float).",
)
@click.option(
    "--clip",
    type=click.Choice(["rescale", "clamp", "none"]),
    default="rescale",
    show_default=True,
    help="What to do with samples beyond full scale.",
)
@click.option(
    "--channels",
    type=click.Choice(["auto", "1", "2"]),
    default="auto",
    show_default=True,
    help="Channels of the stems (auto: same as the input).",
)
@click.option(
    "--filename",
    "template",
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="Output path under --out; placeholders {track} {stem} {ext} {model} {parent}.",
)
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of folder inputs.")
@click.option(
    "-f", "--force", is_flag=True, help="Overwrite existing outputs (default: skip them)."
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads for torch."
)
@click.option("--shard", default=None, help="K/N: process only the K-th of N slices of the inputs.")
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a JSON record per input to this file.",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Model cache folder (default: SEPCLI_CACHE or the user cache).",
)
@click.option("--offline", is_flag=True, help="Never use the network to fetch a model.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def separate(
    inputs,
    out_dir,
    stems,
    model,
    device,
    cuda,
    separator_config,
    fmt,
    bit_depth,
    clip,
    channels,
    template,
    recursive,
    force,
    threads,
    shard,
    report,
    cache_dir,
    offline,
    quiet,
) -> None:
    """Separate audio files (or every audio file in folders) into stems.

    \b
    Examples:
      sepcli separate song.mp3 --stems vocals,accompaniment
      sepcli separate ~/Music/album/ -o stems/ --format flac
      sepcli separate library/ -r --shard $SLURM_ARRAY_TASK_ID/16 --report shard.json
    """
    setup_logging(quiet)
    if threads:
        torch.set_num_threads(threads)
    if cuda:
        device = "cuda"
    check_template(template)
    shard_spec = parse_shard(shard)
    stem_list = [s.strip().lower() for s in stems.split(",") if s.strip()] if stems else None

    records: list[dict[str, Any]] = []
    files: list[Path] = []
    for item in inputs:
        try:
            files.extend(audio.find_audio_files([item], recursive=recursive))
        except SepcliError as exc:
            records.append({"input": str(item), "status": "failed", "error": str(exc)})
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
    files = take_shard(list(dict.fromkeys(files)), shard_spec)
    if not files:
        if not records:
            raise UsageError("no inputs to separate")
        raise click.exceptions.Exit(1)  # every input already failed, each with its own error line

    torch_device = resolve_device(device)
    archive = load_model_for_cli(model, torch_device, cache_dir, offline, quiet)
    separator = Separator(archive, separator_config, device=torch_device)
    recipes = separator.stems(stem_list)
    stem_names = [r.name for r in recipes]
    model_name = archive.metadata.name
    out_channels = None if channels == "auto" else int(channels)

    planned: dict[Path, Path] = {}
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
        transient=True,
    )
    try:
        with progress:
            files_task = progress.add_task("files", total=len(files))
            for path in files:
                record: dict[str, Any] = {
                    "input": str(path),
                    "model": model_name,
                    "device": str(separator.device),
                }
                outputs = output_paths(path, out_dir, template, stem_names, fmt, model_name)
                clash = next((planned[o] for o in outputs.values() if o in planned), None)
                if clash is not None:
                    record.update(
                        status="failed",
                        error=f"{path}: outputs would overwrite those of {clash}; "
                        "add {parent} to --filename",
                    )
                    err_console.print(f"[bold red]error:[/] {record['error']}", soft_wrap=True)
                    records.append(record)
                    progress.advance(files_task)
                    continue
                planned.update(dict.fromkeys(outputs.values(), path))
                record["outputs"] = {k: str(v) for k, v in outputs.items()}
                if not force and all(o.exists() for o in outputs.values()):
                    record["status"] = "skipped"
                    records.append(record)
                    progress.advance(files_task)
                    continue
                chunk_task = progress.add_task(f"  {path.name}", total=None)

                def on_progress(done: int, total: int, _task=chunk_task) -> None:
                    progress.update(_task, completed=done, total=total)

                started = time.perf_counter()
                try:
                    result = separator.separate_file(
                        path,
                        outputs,
                        format=fmt,
                        bit_depth=int(bit_depth),
                        clip=clip,
                        out_channels=out_channels,
                        on_progress=on_progress,
                    )
                    record.update(
                        status="ok",
                        duration=round(result.duration, 3),
                        seconds=round(result.seconds, 3),
                    )
                    if not quiet:
                        err_console.print(
                            f"[green]ok[/] {path} ({result.duration:.1f}s audio in "
                            f"{result.seconds:.1f}s)",
                            soft_wrap=True,
                        )
                except SepcliError as exc:
                    record.update(
                        status="failed",
                        error=str(exc),
                        seconds=round(time.perf_counter() - started, 3),
                    )
                    err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
                records.append(record)
                progress.remove_task(chunk_task)
                progress.advance(files_task)
    except KeyboardInterrupt:
        if report:
            write_report(report, records)
        raise
    if report:
        write_report(report, records)

    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    if not quiet:
        err_console.print(
            f"{counts['ok']} separated, {counts['skipped']} skipped (exist; --force to redo), "
            f"{counts['failed']} failed"
        )
    if counts["failed"]:
        # One failing input does not stop the others, but the batch reports it.
        raise click.exceptions.Exit(1)
