"""``sepcli presets``: list and inspect the named recipes (ensembles, chains) of
:mod:`sepcli.hub.presets`."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from sepcli.cli.common import card_table, handle_errors, out_console, setup_logging
from sepcli.hub import list_models, open_registry
from sepcli.hub.presets import Preset, chain_problems, load_presets, resolve_preset

__all__ = ["presets", "presets_file_option"]


def presets_file_option(func: Any) -> Any:
    """``--presets FILE`` (repeatable): presets files read after the built-in and the user's."""
    return click.option(
        "--presets",
        "preset_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Extra presets file, JSON or TOML (repeatable; after the built-in ones and "
        "presets.json/.toml in the user config folder).",
    )(func)


def _hub_options(func: Any) -> Any:
    func = click.option(
        "--offline", is_flag=True, default=None, help="Never use the network (SEPCLI_OFFLINE=1)."
    )(func)
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Model cache folder (default: SEPCLI_CACHE, else the user cache dir).",
    )(func)


def _size(num: int | None) -> str:
    return "-" if num is None else f"{num / 1e6:.1f} MB"


def _step_text(preset: Preset) -> list[str]:
    lines = []
    for i, step in enumerate(preset.steps, 1):
        names = " + ".join(m.name for m in step.members)
        algorithm = f" ({', '.join(step.algorithm.values())})" if step.algorithm else ""
        lines.append(f"{i}. {step.input} -> {names}{algorithm}")
    return lines


def _summary(preset: Preset, registry: Any, local: set[str]) -> dict[str, Any]:
    """What ``list`` and ``info`` show: members with their registry entries and sizes."""
    members = []
    download = 0
    for member, entry in resolve_preset(preset, registry):
        item: dict[str, Any] = {"name": member.name, "registry": entry.name if entry else None}
        if member.published_as:
            item["published_as"] = member.published_as
        if entry is not None:
            item["size"] = entry.size
            item["local"] = entry.name in local
            item["scores"] = dict(entry.scores)
            if not item["local"] and entry.size:
                download += entry.size
        members.append(item)
    return {
        "name": preset.name,
        "kind": preset.kind,
        "description": preset.description,
        "algorithm": dict(preset.algorithm) or None,
        "weights": list(preset.weights) if preset.weights else None,
        "steps": [
            {
                "input": s.input,
                "models": [m.name for m in s.members],
                "algorithm": dict(s.algorithm) or None,
            }
            for s in preset.steps
        ]
        or None,
        "members": members,
        "missing": [m["name"] for m in members if m["registry"] is None],
        "download_bytes": download,
        "source": preset.source,
        "defined_in": preset.origin,
    }


def _context(preset_files: tuple[str, ...], cache_dir: str | None, offline: bool | None):
    presets = load_presets(preset_files)
    registry = open_registry(cache_dir=cache_dir, offline=offline)
    local = {s.entry.name for s in list_models(cache_dir=cache_dir, offline=offline) if s.local}
    return presets, registry, local


@click.group()
def presets() -> None:
    """Named recipes: ensembles of registry models with an algorithm, and chains.

    \b
    Built in: audio-separator's nine ensemble presets, best, karaoke-chain and
    clean-vocals-chain; add your own in presets.json/.toml in the user config
    folder (SEPCLI_CONFIG_DIR) or with --presets FILE. Run one with
    'sepcli separate song.mp3 --preset vocal_clean'.
    """


@presets.command("list")
@presets_file_option
@_hub_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@handle_errors
def list_command(preset_files, cache_dir, offline, as_json) -> None:
    """List presets: kind, algorithm, models (a model not in the registry is
    marked 'missing: NAME'), and what is left to download."""
    setup_logging()
    found, registry, local = _context(preset_files, cache_dir, offline)
    rows = [_summary(p, registry, local) for p in found.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("algorithm", no_wrap=True)
    table.add_column("models")
    table.add_column("download", no_wrap=True, justify="right")
    for row, preset in zip(rows, found.values(), strict=True):
        models = [
            m["registry"] if m["registry"] else f"[red]missing: {m['name']}[/]"
            for m in row["members"]
        ]
        table.add_row(
            row["name"],
            row["kind"],
            preset.algorithm_text() or ("chain" if preset.kind == "chain" else "-"),
            ", ".join(models),
            _size(row["download_bytes"]) if not row["missing"] else "-",
        )
    out_console.print(table)


@presets.command("info")
@click.argument("name")
@presets_file_option
@_hub_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@handle_errors
def info_command(name, preset_files, cache_dir, offline, as_json) -> None:
    """A preset's models, their sizes to download and published scores, and its source."""
    setup_logging()
    found, registry, local = _context(preset_files, cache_dir, offline)
    preset = found.get_preset(name)
    row = _summary(preset, registry, local)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    table = card_table()
    table.add_row("name", preset.name)
    table.add_row("kind", preset.kind)
    if preset.description:
        table.add_row("description", preset.description)
    if preset.algorithm:
        table.add_row("algorithm", preset.algorithm_text())
    if preset.weights:
        table.add_row("weights", ", ".join(f"{w:g}" for w in preset.weights))
    if preset.steps:
        table.add_row("steps", "\n".join(_step_text(preset)))
    for m in row["members"]:
        if m["registry"] is None:
            text = "[red]missing[/]: not in the registry" + (
                f" (published as {m['published_as']})" if m.get("published_as") else ""
            )
        else:
            where = "here" if m["local"] else f"{_size(m['size'])} to download"
            scores = "; ".join(
                f"{data}: " + ", ".join(
                    f"{stem} {v.get('SDR')}" for stem, v in per.items()
                    if isinstance(v, dict) and v.get("SDR") is not None
                )
                for data, per in m["scores"].items() if isinstance(per, dict)
            )  # fmt: skip
            named = f" (registry: {m['registry']})" if m["registry"] != m["name"] else ""
            text = f"{where}{named}" + (f"; SDR {scores}" if scores else "")
        table.add_row(m["name"], text)
    for problem in chain_problems(preset, registry) if preset.kind == "chain" else []:
        table.add_row("[red]problem[/]", problem)
    if not row["missing"]:
        table.add_row("to download", _size(row["download_bytes"]))
    if preset.source:
        table.add_row("source", preset.source)
    table.add_row("defined in", preset.origin)
    out_console.print(table)


def pick_preset(
    model: str,
    preset: str | None,
    preset_files: tuple[str, ...],
    cache_dir: str | None,
    offline: bool,
) -> Preset | None:
    """The preset ``separate`` runs: ``--preset NAME``, or ``-m NAME`` when NAME is
    neither a file nor a registry model but a preset (a chain preset runs through
    the chain runner, :mod:`sepcli.cli.chain`). Checks the presets files and
    the preset's models against the registry (before any input is read)."""
    from pathlib import Path

    from sepcli.errors import UsageError
    from sepcli.hub.presets import require_members

    if preset is None:
        if not preset_files and (model == "default" or Path(model).expanduser().is_file()):
            return None  # no presets file is read for a plain model run
        if model in open_registry(cache_dir=cache_dir, offline=offline or None):
            if preset_files:
                load_presets(preset_files)  # still checked: a broken file is an error
            return None
        found = load_presets(preset_files)
        if model not in found:
            return None  # the model loader names the unknown model
        preset = model
    elif model != "default":
        raise UsageError(f"-m {model} and --preset {preset}: give one")
    else:
        found = load_presets(preset_files)
    chosen = found.get_preset(preset)
    require_members(chosen, open_registry(cache_dir=cache_dir, offline=offline or None))
    return chosen


def load_preset_for_cli(
    preset: Preset, device: Any, cache_dir: str | None, offline: bool, quiet: bool
) -> Any:
    """The archive of a model or ensemble preset (members downloaded with a bar)."""
    from sepcli.cli.bars import download_bar
    from sepcli.hub.presets import preset_model
    from sepcli.models.archive import load_archive

    with download_bar(quiet) as on_progress:
        path = preset_model(
            preset, cache_dir=cache_dir, offline=offline or None, progress=on_progress
        )
    return load_archive(path, device)
