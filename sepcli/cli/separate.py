"""``sepcli separate``: files and folders in, stems out."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from sepcli.cli import outputs as planning
from sepcli.cli.bars import load_model_for_cli
from sepcli.cli.common import (
    bars_shown,
    err_console,
    handle_errors,
    separator_options,
    setup_logging,
)
from sepcli.cli.presets import load_preset_for_cli, pick_preset, presets_file_option
from sepcli.errors import AudioEncodeError, SepcliError, UsageError
from sepcli.inference.separator import Separator, resolve_device, track_name
from sepcli.progress import Progress as ProgressEvent

DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
_PLACEHOLDERS = {"track", "stem", "ext", "model", "parent", "input_ext"}


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
    fields = planning.template_fields(path, track_name(path), ext, model)
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
    """Write the JSON report atomically; a failure is one line naming the file."""
    try:
        atomic.write_text(path, json.dumps({"version": 1, "inputs": records}, indent=2))
    except OSError as exc:
        raise AudioEncodeError(
            f"--report {path}: cannot write this file ({exc.strerror or type(exc).__name__})"
        ) from None


@contextmanager
def reported(path: Path | None, records: list[dict[str, Any]]) -> Iterator[None]:
    """Write the report of ``records`` to ``path`` when the block ends, and on
    Ctrl-C or a termination signal (the records so far, then re-raised); not
    when ``path`` is ``None`` or the block fails otherwise."""
    try:
        yield
    except KeyboardInterrupt:
        if path is not None:
            write_report(path, records)
        raise
    if path is not None:
        write_report(path, records)


def _files_bar(quiet: bool) -> Progress:
    """The per-file progress bar of a batch (hidden when quiet or not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not bars_shown(quiet),
        transient=True,
    )


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
    "(default: every stem the model makes: its sources, and beside a one-source model "
    "the rest of the mix). Derived: accompaniment, no_<source>. "
    "In a chain, stem paths: vocals.lead_vocals.",
)
@click.option(
    "-m",
    "--model",
    default="default",
    show_default=True,
    help="Registry name or path of a .sepcli archive; '-m best' is the best published "
    "models per stem (a 1.2 GB download, once), 'sepcli models list' shows the others.",
)
@click.option(
    "--preset",
    default=None,
    metavar="NAME",
    help="Run a preset: an ensemble of registry models blended with its algorithm, e.g. "
    "vocal_clean (min_fft of two vocal models); 'sepcli presets list' shows them.",
)
@presets_file_option
@click.option(
    "--then",
    "thens",
    multiple=True,
    metavar="STEM:MODEL",
    help="Chain a step: run MODEL on STEM, a stem an earlier step made (repeatable), e.g. "
    "-m best --then vocals:KARAOKE --then vocals.lead_vocals:DEREVERB. Outputs are named "
    "by their path (vocals.lead_vocals.wav); a re-run redoes only unfinished steps.",
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
    type=click.Choice(["wav", "flac", "mp3", "ogg", "raw"]),
    default="wav",
    show_default=True,
    help="Output format; raw (PCM, no header) only for standard input ('-').",
)
@click.option(
    "--bit-depth",
    type=click.Choice(["auto", "16", "24", "32"]),
    default="auto",
    show_default=True,
    help="PCM bits (32 is float); auto: the input's (24-bit in, 24-bit out; 16 for lossy input).",
)
@click.option(
    "--mp3-bitrate",
    type=click.IntRange(32, 320),
    default=None,
    help="Constant MP3 bitrate in kb/s, e.g. 320 (default: VBR --mp3-vbr 0, about 245 kb/s).",
)
@click.option(
    "--mp3-vbr",
    type=click.IntRange(0, 9),
    default=None,
    help="Variable MP3 bitrate quality, LAME's -V: 0 best (about 245 kb/s) to 9 (about 65 kb/s).",
)
@click.option(
    "--allow-truncated",
    is_flag=True,
    help="Separate inputs cut short (e.g. an interrupted download) as far as they decode, "
    "saying how much is missing (default: refuse them).",
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
@click.option(
    "--raw-format",
    type=click.Choice(["f32le", "f64le", "s16le", "s24le", "s32le", "u8"]),
    default=None,
    help="Standard input is raw PCM in this sample format (with --raw-rate, --raw-channels).",
)
@click.option(
    "--raw-rate", type=click.IntRange(1, 1_000_000), default=None, help="Raw PCM rate (Hz)."
)
@click.option("--raw-channels", type=click.IntRange(1, 64), default=None, help="Raw PCM channels.")
@click.option(
    "--mix",
    default=None,
    help="Standard input: mix stems into one output with these gains, e.g. vocals=0.2,accompaniment=1.",
)
@click.option(
    "--latency",
    type=float,
    default=None,
    help="Standard input: seconds from input to output; chooses chunk length and look-ahead "
    "(default: the model's own chunks, equal to a file run). Prints the latency reached.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def separate(
    inputs,
    out_dir,
    stems,
    model,
    preset,
    preset_files,
    thens,
    device,
    cuda,
    separator_config,
    fmt,
    bit_depth,
    mp3_bitrate,
    mp3_vbr,
    allow_truncated,
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
    raw_format,
    raw_rate,
    raw_channels,
    mix,
    latency,
    quiet,
) -> None:
    """Separate audio files (or every audio file in folders) into stems.

    \b
    Examples:
      sepcli separate song.mp3 --stems vocals,accompaniment
      sepcli separate song.mp3 -m best      # best quality: RoFormer vocals, HT-Demucs drums/bass/other
      sepcli separate song.mp3 --preset vocal_clean   # min_fft ensemble of two vocal models
      sepcli separate song.mp3 -m best --then vocals:mel_roformer-becruily-karaoke
                            # vocals, then vocals.lead_vocals and vocals.back_vocals
      sepcli separate song.mp3 --preset karaoke-chain  # the same chain, as a preset
      sepcli separate ~/Music/album/ -o stems/ --format flac
      sepcli separate library/ -r --shard $((SLURM_ARRAY_TASK_ID+1))/16 --report shard.json
      ffmpeg -i URL -f wav - | sepcli separate - -o - --stems accompaniment | ffplay -
    """
    setup_logging(quiet)
    if threads:
        torch.set_num_threads(threads)
    if cuda:
        device = "cuda"
    stem_list = [s.strip().lower() for s in stems.split(",") if s.strip()] if stems else None
    if any(str(item) == "-" for item in inputs):
        if len(inputs) != 1:
            raise UsageError("'-' (standard input) cannot be mixed with other inputs")
        if thens or preset:
            raise UsageError("--then and --preset run on files, not on standard input ('-')")
        from sepcli.cli.live import separate_stream

        separate_stream(
            out=out_dir, stems=stem_list, model=model, device=device, separator_config=separator_config,
            fmt=fmt, bit_depth=bit_depth, channels=channels, raw_format=raw_format,
            raw_rate=raw_rate, raw_channels=raw_channels, mix=mix, latency=latency,
            cache_dir=cache_dir, offline=offline, quiet=quiet,
        )  # fmt: skip
        return
    if raw_format or raw_rate or raw_channels or mix or latency is not None or fmt == "raw":
        raise UsageError("--raw-*, --mix, --latency and --format raw are for standard input ('-')")
    check_template(template)
    if mp3_bitrate is not None and mp3_vbr is not None:
        raise UsageError("--mp3-bitrate (constant) and --mp3-vbr (variable): give one")
    if (mp3_bitrate is not None or mp3_vbr is not None) and fmt != "mp3":
        raise UsageError("--mp3-bitrate and --mp3-vbr apply to --format mp3")
    shard_spec = parse_shard(shard)
    if report is not None:
        if report.is_dir():
            raise UsageError(f"--report {report}: is a folder; give a file name")
        planning.check_writable_file(report, "--report")
    planning.check_writable([out_dir], "--out")
    chosen_preset = pick_preset(model, preset, preset_files, cache_dir, offline)
    chain = chain_plan = None
    if thens or (chosen_preset is not None and chosen_preset.kind == "chain"):
        chain, chain_plan = _plan_chain(
            chosen_preset or model, thens, stem_list, preset_files, cache_dir, offline
        )

    records: list[dict[str, Any]] = []
    files: list[Path] = []
    for item in inputs:
        try:
            found = audio.find_audio_files([item], recursive=recursive)
        except SepcliError as exc:
            records.append({"input": str(item), "status": "failed", "error": str(exc)})
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            continue
        if Path(item).is_dir():
            found, dropped = planning.drop_own_outputs(Path(item), found, out_dir)
            if dropped and not quiet:
                err_console.print(
                    f"note: {item}: not taking {dropped} file(s) that are sepcli outputs "
                    f"(under {out_dir} or recorded in a {planning.PROVENANCE_FILE}) as input",
                    soft_wrap=True,
                )
        files.extend(found)
    all_files = list(dict.fromkeys(files))
    files = take_shard(all_files, shard_spec)
    if not files:
        if records:
            raise click.exceptions.Exit(1)  # every input failed, each with its own error line
        if shard_spec is not None and all_files:
            # an array task whose slice is empty is a normal, empty job
            if not quiet:
                err_console.print(
                    f"note: shard {shard} of {len(all_files)} input(s) is empty; nothing to do"
                )
            if report:
                write_report(report, records)
            return
        raise UsageError("no inputs to separate")

    torch_device = resolve_device(device)
    if chain is not None:
        _separate_chain(
            chain, chain_plan, files, records, out_dir, template, fmt, bit_depth, clip,
            channels, allow_truncated, mp3_bitrate, mp3_vbr, separator_config, torch_device,
            force, cache_dir, offline, quiet, report,
        )  # fmt: skip
        return
    if chosen_preset is not None:
        archive = load_preset_for_cli(chosen_preset, torch_device, cache_dir, offline, quiet)
    else:
        archive = load_model_for_cli(model, torch_device, cache_dir, offline, quiet)
    separator = Separator(archive, separator_config, device=torch_device)
    try:
        stem_plan = separator.plan(stem_list)
    except UsageError as exc:
        raise UsageError(f"{exc}{_models_hint(stem_list, cache_dir, offline)}") from None
    if stem_plan.note and not quiet:
        err_console.print(f"note: {stem_plan.note}", soft_wrap=True)
    stem_names = [r.name for r in stem_plan.recipes]
    model_name = archive.metadata.name
    out_channels = None if channels == "auto" else int(channels)
    encoding = {
        "format": fmt,
        "bit_depth": None if bit_depth == "auto" else int(bit_depth),
        "clip": clip,
        "out_channels": out_channels,
        "allow_truncated": allow_truncated,
        "mp3_bitrate": mp3_bitrate,
        "mp3_vbr": mp3_vbr,
    }
    settings = separator_config.to_dict()
    settings.pop("batch_size", None)  # how chunks are batched does not change the stems
    identity = _run_identity(
        archive,
        {
            **settings,
            "format": fmt,
            "bit_depth": bit_depth,
            "mp3_bitrate": mp3_bitrate,
            "mp3_vbr": mp3_vbr,
            "clip": clip,
            "channels": channels,
        },
    )
    plans = {p: output_paths(p, out_dir, template, stem_names, fmt, model_name) for p in files}
    planning.check_writable(
        sorted({o.parent for outs in plans.values() for o in outs.values()}), "output folder"
    )
    clash_hint = _clash_hint(files, plans, template, fmt, model_name)
    counts_by_kind = {"done": 0, "other": 0, "foreign": 0}

    planned: dict[Path, Path] = {}
    progress = _files_bar(quiet)
    with reported(report, records), progress:
        files_task = progress.add_task("files", total=len(files))
        for path in files:
            record: dict[str, Any] = {
                "input": str(path),
                "model": model_name,
                "device": str(separator.device),
            }
            outputs = plans[path]
            clash = next((planned[o] for o in outputs.values() if o in planned), None)
            if clash is not None:
                record.update(
                    status="failed",
                    error=f"{path}: outputs would overwrite those of {clash}; {clash_hint}",
                )
                err_console.print(f"[bold red]error:[/] {record['error']}", soft_wrap=True)
                records.append(record)
                progress.advance(files_task)
                continue
            planned.update(dict.fromkeys(outputs.values(), path))
            record["outputs"] = {k: str(v) for k, v in outputs.items()}
            try:
                with planning.locked_outputs(
                    outputs.values(), on_wait=lambda p: _waiting(p, quiet)
                ):
                    _process_track(
                        separator, path, outputs, _track_identity(path, identity), force,
                        record, counts_by_kind, progress, quiet, encoding,
                    )  # fmt: skip
            except SepcliError as exc:  # the outputs could not be locked
                record.update(status="failed", error=str(exc))
                err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            records.append(record)
            progress.advance(files_task)
    _print_summary(records, counts_by_kind, quiet)


def _process_track(
    separator: Separator,
    path: Path,
    outputs: dict[str, Path],
    track: dict[str, Any],
    force: bool,
    record: dict[str, Any],
    counts: dict[str, int],
    progress: Progress,
    quiet: bool,
    encoding: dict[str, Any],
    label: str = "",
) -> None:
    """One input, its outputs locked: clean leftovers, skip what exists, make the rest.
    ``label`` starts its messages (a chain's ``step N (...): ``)."""
    removed = planning.remove_stale_temps(outputs.values())
    if removed and not quiet:
        err_console.print(
            f"note: removed {len(removed)} temp file(s) left by an interrupted run: "
            + ", ".join(str(p) for p in removed),
            soft_wrap=True,
        )
    plan = planning.plan_track(outputs, track, force)
    _report_skips(plan, record, counts, quiet)
    if not plan.todo:
        record["status"] = "skipped"
        return
    try:
        planning.check_free_space(
            path, plan.todo, encoding["format"], encoding["bit_depth"], encoding["out_channels"]
        )
    except SepcliError as exc:
        record.update(status="failed", error=str(exc))
        err_console.print(f"[bold red]error:[/] {label}{exc}", soft_wrap=True)
        return
    chunk_task = progress.add_task(f"  {path.name}", total=None)

    def on_progress(event: ProgressEvent, _task=chunk_task) -> None:
        progress.update(_task, completed=event.done, total=event.total)

    started = time.perf_counter()
    try:
        result = separator.separate_file(path, plan.todo, on_progress=on_progress, **encoding)
        try:
            planning.record_outputs(result.outputs, track)
        except OSError as exc:  # the stems are complete; only their record is missing
            err_console.print(
                f"[yellow]warning:[/] {path}: stems written, but not their record "
                f"{planning.PROVENANCE_FILE} ({exc.strerror or exc})",
                soft_wrap=True,
            )
        record.update(
            status="ok",
            duration=round(result.duration, 3),
            seconds=round(result.seconds, 3),
        )
        missing = result.extra.get("missing_seconds")
        if missing:
            record["missing_seconds"] = round(missing, 3)
            declared = result.duration + missing
            err_console.print(
                f"[yellow]warning:[/] {path}: truncated: separated the {result.duration:.1f} s "
                f"that decode; {missing:.1f} s of the declared {declared:.1f} s are missing "
                f"({missing / declared:.1%})",
                soft_wrap=True,
            )
        if not quiet:
            err_console.print(
                f"[green]ok[/] {label}{path} ({result.duration:.1f}s audio in {result.seconds:.1f}s)",
                soft_wrap=True,
            )
    except SepcliError as exc:
        record.update(
            status="failed",
            error=str(exc),
            seconds=round(time.perf_counter() - started, 3),
        )
        err_console.print(f"[bold red]error:[/] {label}{exc}", soft_wrap=True)
    progress.remove_task(chunk_task)


def _plan_chain(
    first: Any,
    thens: tuple[str, ...],
    stems: list[str] | None,
    preset_files: tuple[str, ...],
    cache_dir: str | None,
    offline: bool,
) -> tuple[Any, Any]:
    """The chain and the steps the stems need, checked before any input is read."""
    from sepcli.hub import open_registry
    from sepcli.hub.chains import make_chain, plan_chain, step_sources
    from sepcli.hub.presets import load_presets

    registry = open_registry(cache_dir=cache_dir, offline=offline or None)
    chain = make_chain(first, thens, load_presets(preset_files), registry)
    return chain, plan_chain(chain, step_sources(chain, registry), stems)


def _separate_chain(
    chain: Any, plan: Any, files: list[Path], records: list[dict[str, Any]], out_dir: Path,
    template: str, fmt: str, bit_depth: str, clip: str, channels: str, allow_truncated: bool,
    mp3_bitrate: int | None, mp3_vbr: int | None, separator_config: Any, device: Any,
    force: bool, cache_dir: str | None, offline: bool, quiet: bool, report: Path | None,
) -> None:  # fmt: skip
    """``separate`` with ``--then`` steps or a chain preset (:mod:`sepcli.cli.chain`)."""
    from sepcli.cli.chain import run_chain

    encoding = {
        "format": fmt,
        "bit_depth": None if bit_depth == "auto" else int(bit_depth),
        "clip": clip,
        "out_channels": None if channels == "auto" else int(channels),
        "allow_truncated": allow_truncated,
        "mp3_bitrate": mp3_bitrate,
        "mp3_vbr": mp3_vbr,
    }
    settings = separator_config.to_dict()
    settings.pop("batch_size", None)
    settings.update(format=fmt, bit_depth=bit_depth, mp3_bitrate=mp3_bitrate,
                    mp3_vbr=mp3_vbr, clip=clip, channels=channels)  # fmt: skip
    counts = {"done": 0, "other": 0, "foreign": 0}
    progress = _files_bar(quiet)
    with reported(report, records), progress:
        run_chain(
            chain=chain, plans=plan, files=files, out_dir=out_dir, template=template,
            fmt=fmt, encoding=encoding, settings=settings,
            separator_config=separator_config, device=device, force=force,
            cache_dir=cache_dir, offline=offline, quiet=quiet, progress=progress,
            counts=counts, into=records,
        )  # fmt: skip
    _print_summary(records, counts, quiet)


def _run_identity(archive: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes this run's outputs what they are: model, archive bytes, settings."""
    from sepcli import __version__
    from sepcli.hashing import sha256_file

    path = getattr(archive, "path", None)
    return {
        "model": archive.metadata.name,
        "archive_sha256": sha256_file(Path(path)) if path else None,
        "settings": settings,
        "sepcli": __version__,
    }


def _track_identity(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """``identity`` plus the input (resolved path, size, modification time)."""
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = None
    return {
        **identity,
        "input": str(path.resolve()),
        "input_size": size,
        "input_mtime_ns": mtime,
    }


def _waiting(lock: Path, quiet: bool) -> None:
    if not quiet:
        err_console.print(
            f"note: waiting for another sepcli process writing {lock.parent}", soft_wrap=True
        )


def _report_skips(
    plan: planning.TrackPlan,
    record: dict[str, Any],
    counts: dict[str, int],
    quiet: bool,
) -> None:
    """Name every skipped output that was not simply done before with this run's settings."""
    if not plan.skipped:
        return
    record["skipped"] = {stem: skip.reason for stem, skip in plan.skipped.items()}
    for skip in plan.skipped.values():
        counts[skip.kind] += 1
        if skip.kind != "done" and not quiet:
            err_console.print(
                f"[yellow]skipped[/] {skip.path}: {skip.reason} (--force to replace it)",
                soft_wrap=True,
            )


def _print_summary(records: list[dict[str, Any]], kinds: dict[str, int], quiet: bool) -> None:
    """``N separated, N skipped, N failed`` counts inputs; the output files that
    were kept are counted apart, since an input that wrote one stem and kept
    another is separated, not skipped."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    if not quiet:
        why = []
        if kinds["done"]:
            why.append(f"{kinds['done']} done earlier with this model and settings")
        if kinds["other"]:
            why.append(f"{kinds['other']} made differently")
        if kinds["foreign"]:
            why.append(f"{kinds['foreign']} not written by sepcli")
        total = kinds["done"] + kinds["other"] + kinds["foreign"]
        noun = "file" if total == 1 else "files"
        kept = f"; kept {total} existing output {noun} ({', '.join(why)}; --force to redo)"
        err_console.print(
            f"{counts['ok']} separated, {counts['skipped']} skipped, {counts['failed']} failed"
            + (kept if why else ""),
            soft_wrap=True,
        )
    if counts["failed"]:
        # One failing input does not stop the others, but the batch reports it.
        raise click.exceptions.Exit(1)


def _clash_hint(
    files: list[Path], plans: dict[Path, dict[str, Path]], template: str, ext: str, model: str
) -> str:
    """How to give clashing inputs distinct outputs: a ``--filename`` that works."""
    seen: dict[Path, Path] = {}
    clashing: set[Path] = set()
    for p in files:
        for o in plans[p].values():
            if o in seen and seen[o] != p:
                clashing.update((p, seen[o]))
            seen.setdefault(o, p)
    if not clashing:
        return ""
    fixed = planning.suggest_template(template, files, track_name, ext, model)
    if fixed is None:
        return "give them distinct names, or run them with different --out"
    return f"use --filename '{fixed}'"


def _models_hint(stems: list[str] | None, cache_dir: str | None, offline: bool) -> str:
    """``; models with these stems: a, b`` from the registry (empty if none or unknown)."""
    from sepcli.cli.models import models_offering

    try:
        names = models_offering(stems or [], cache_dir=cache_dir, offline=offline)
    except SepcliError:
        return ""
    if not names:
        return ""
    more = ""
    if len(names) > 5:  # best first; the registry has over a hundred models
        more = f" and {len(names) - 5} more ('sepcli models list --stem {(stems or ['?'])[0]}')"
    shown = ", ".join(names[:5])
    return f". Models that make {', '.join(stems or [])}: {shown}{more} (-m NAME)"
