"""``sepcli models``: list, inspect, download, verify, remove and locate pretrained models."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sepcli.cli.bars import download_bar
from sepcli.cli.common import err_console, handle_errors, out_console, setup_logging
from sepcli.errors import IntegrityError, ModelNotFoundError
from sepcli.hub import (
    list_models,
    local_model_file,
    open_registry,
    remove_model,
    resolve_model,
    verify_models,
)


def _hub_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--cache-dir/--offline/--registry``, accepted on the group and on each command."""
    func = click.option(
        "--registry", "registries", multiple=True, metavar="FILE|URL",
        help="Extra registry (repeatable); replaces SEPCLI_REGISTRY.",
    )(func)  # fmt: skip
    func = click.option(
        "--offline", is_flag=True, default=None, help="Never use the network (SEPCLI_OFFLINE=1)."
    )(func)
    func = click.option(
        "--cache-dir", type=click.Path(file_okay=False), default=None,
        help="Model cache folder (default: SEPCLI_CACHE, else the user cache dir).",
    )(func)  # fmt: skip
    return func


def _settings(
    ctx: click.Context, cache_dir: str | None, offline: bool | None, registries: tuple[str, ...]
) -> dict[str, Any]:
    """Merge a command's options over the group's."""
    group = ctx.find_object(dict) or {}
    return {
        "cache_dir": cache_dir if cache_dir is not None else group.get("cache_dir"),
        "offline": offline if offline else group.get("offline"),
        "registry": list(registries) if registries else group.get("registry"),
    }


def _command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Shared plumbing: hub options merged into ``hub=dict(...)``, typed errors handled."""

    @_hub_options
    @click.pass_context
    @functools.wraps(func)
    @handle_errors
    def wrapper(ctx: click.Context, cache_dir, offline, registries, **kwargs):
        setup_logging()
        return func(hub=_settings(ctx, cache_dir, offline, registries), **kwargs)

    return wrapper


def _size(num: int | None) -> str:
    return "-" if num is None else f"{num / 1e6:.1f} MB"


def _card(status: Any) -> dict[str, Any]:
    """A registry entry as JSON, with sources, licence and training data taken
    from the archive itself when the entry defers to it (the built-in default)."""
    data = {**status.entry.to_json(), "local_path": str(status.path) if status.path else None}
    if status.entry.builtin and status.path is not None:
        from sepcli.models.archive import read_metadata

        meta = read_metadata(status.path)
        if not data.get("sources"):
            data["sources"] = list(meta.sources)
        data.setdefault("sample_rate", meta.sample_rate)
        for key in ("licence", "training_data"):
            if data.get(key) in (None, "", "per archive metadata"):
                data[key] = getattr(meta, key) or data.get(key)
    return data


def _licence_label(text: str) -> str:
    """A few words for the table; ``models info`` and ``--json`` give the full text.

    Conservative on purpose: research-only terms win, then any doubt about the
    weights' licence, then the text's first clause (``MIT``, ``CC BY-NC-SA 4.0``).
    """
    lower = text.lower()
    if not lower:
        return "-"
    if any(k in lower for k in ("research use", "research/", "scientific purposes")):
        return "research only"
    if any(w in lower for w in ("unclear", "none stated", "no licence", "no license", "unknown")):
        return "unclear"
    return text.split(";")[0].split(". ")[0].split(" (")[0]


def models_offering(
    stems: list[str], *, cache_dir: str | None = None, offline: bool | None = None
) -> list[str]:
    """Names of registry models that can make every stem in ``stems`` (their own
    sources or stems derived from them, such as ``accompaniment``)."""
    from sepcli.errors import UsageError
    from sepcli.inference.stems import plan_stems

    names = []
    for status in list_models(cache_dir=cache_dir, offline=offline):
        sources = _card(status).get("sources") or []
        if not sources or not (status.local or status.entry.verifiable):
            continue  # an entry with no hash is refused at download
        try:
            plan_stems(sources, stems)
        except UsageError:
            continue
        names.append(status.entry.name)
    return names


@click.group()
@_hub_options
@click.pass_context
def models(
    ctx: click.Context, cache_dir: str | None, offline: bool | None, registries: tuple[str, ...]
) -> None:
    """Pretrained models: list, info, download, verify, remove, path; import, blend.

    Names come from the built-in registry plus extra registries (--registry or
    SEPCLI_REGISTRY); files are cached under --cache-dir / SEPCLI_CACHE.
    """
    ctx.obj = {"cache_dir": cache_dir, "offline": offline, "registry": list(registries) or None}


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@_command
def list_command(hub: dict[str, Any], as_json: bool) -> None:
    """List known models: their stems, size, whether they are here, and licence
    (in short; `sepcli models info NAME` has the full text and the format)."""
    statuses = list_models(**hub)
    cards = [_card(s) for s in statuses]
    if as_json:
        click.echo(json.dumps(cards, indent=2))
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("sources", min_width=13)
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("local", min_width=5)
    # last and cut to one line: the whole licence text is in `sepcli models info NAME`
    table.add_column("licence", no_wrap=True, overflow="ellipsis", min_width=8, max_width=20)
    for s, card in zip(statuses, cards, strict=True):
        e = s.entry
        if s.local:
            local = "yes"
        elif e.builtin:
            local = "missing from package"
        else:
            local = "no" if e.verifiable else "no (no hash: refused)"
        table.add_row(
            e.name,
            ", ".join(card.get("sources") or []) or "-",
            _size(e.size),
            local,
            _licence_label(card.get("licence") or ""),
        )
    out_console.print(table)


@models.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@_command
def info_command(hub: dict[str, Any], name: str, as_json: bool) -> None:
    """Everything the registry says about NAME, and where it is on disk; for an
    archive file (NAME a path), what its metadata says."""
    registry = open_registry(hub["registry"], cache_dir=hub["cache_dir"], offline=hub["offline"])
    path = local_model_file(name)
    if path is not None:  # the same rule as --model: an existing file wins over a name
        if name in registry:
            err_console.print(
                f"note: {name} is a file here and also a registry name; showing the file, "
                f"which --model {name} would use (use another folder for the registry entry)",
                soft_wrap=True,
            )
        _file_info(path, as_json)
        return
    entry = registry.get(name)
    status = next(s for s in list_models(**hub) if s.entry.name == name)
    local = status.path
    data = _card(status)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, show_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in (
        "name",
        "description",
        "format",
        "sources",
        "sample_rate",
        "parameters",
        "licence",
        "training_data",
        "origin",
    ):
        value = data.get(key)
        if value not in (None, "", []):
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    table.add_row("size", _size(entry.size))
    for spec in entry.files:
        head = f"file {spec.target}" if spec.target else "file"
        table.add_row(
            head, f"{spec.filename}  sha256={spec.sha256 or 'unknown (download refused)'}"
        )
        for url in spec.urls:
            table.add_row("", url)
    for dataset, per_source in entry.scores.items():
        for source, metrics in per_source.items():
            shown = " ".join(f"{k}={v}" for k, v in metrics.items())
            table.add_row(f"claimed {dataset}", f"{source}: {shown}")
    table.add_row("local", str(local) if local else "not downloaded")
    out_console.print(table)


def _file_info(path: Path, as_json: bool) -> None:
    """``models info`` for an archive on disk: its metadata, size and SHA-256."""
    from sepcli.hashing import sha256_file
    from sepcli.models.archive import read_metadata

    meta = read_metadata(path)
    data = {"path": str(path.resolve()), "size": path.stat().st_size,
            "sha256": sha256_file(path), **json.loads(meta.to_json())}  # fmt: skip
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, show_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = {
        "name": meta.name, "description": meta.description, "family": meta.family,
        "sources": ", ".join(meta.sources), "sample_rate": meta.sample_rate,
        "parameters": meta.num_parameters or "", "licence": meta.licence,
        "training_data": meta.training_data, "size": _size(data["size"]),
        "sha256": data["sha256"], "local": data["path"],
    }  # fmt: skip
    for key, value in rows.items():
        if value not in (None, ""):
            table.add_row(key, str(value))
    out_console.print(table)


@models.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds without data before a retry (SEPCLI_TIMEOUT).",
)
@click.option("--retries", type=int, default=None, help="Retries per URL (SEPCLI_RETRIES).")
@_command
def download_command(
    hub: dict[str, Any], names: tuple[str, ...], timeout: float | None, retries: int | None
) -> None:
    """Download NAMES into the cache (verified); prints 'NAME PATH' per model."""
    for name in names:
        with download_bar() as progress:
            path = resolve_model(name, progress=progress, timeout=timeout, retries=retries, **hub)
        click.echo(f"{name} {path}")


@models.command("path")
@click.argument("name")
@_command
def path_command(hub: dict[str, Any], name: str) -> None:
    """Print the local file of NAME on the last line (downloading it first if needed)."""
    with download_bar() as progress:
        path = resolve_model(name, progress=progress, **hub)
    click.echo(str(path))


@models.command("verify")
@click.argument("names", nargs=-1)
@click.option(
    "--fix/--no-fix",
    default=True,
    show_default=True,
    help="Replace corrupt models (--no-fix: only report).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@_command
def verify_command(hub: dict[str, Any], names: tuple[str, ...], fix: bool, as_json: bool) -> None:
    """Re-hash cached models (NAMES, or all cached). A corrupt file is deleted and
    downloaded again; with --no-fix it is only reported, never deleted. Exits 5
    if a corrupt model remains."""
    with download_bar() as progress:
        results = verify_models(list(names) or None, fix=fix, progress=progress, **hub)
    if as_json:
        click.echo(json.dumps([{"name": r.name, "status": r.status, "path": str(r.path) if r.path else None,
                                "detail": r.detail} for r in results], indent=2))  # fmt: skip
    else:
        if not results:
            err_console.print("no models in the cache")
        styles = {
            "ok": "green",
            "repaired": "yellow",
            "corrupt": "bold red",
            "missing": "dim",
            "builtin": "dim",
        }
        for r in results:
            detail = f" ({r.detail})" if r.detail else ""
            out_console.print(
                f"[{styles[r.status]}]{r.status:<8}[/] {r.name}{detail}", soft_wrap=True
            )
    bad = [r.name for r in results if r.status == "corrupt"]
    if bad:
        raise IntegrityError(
            f"corrupt and not repaired: {', '.join(bad)} (run 'sepcli models verify' online)"
        )


@models.command("remove")
@click.argument("name")
@_command
def remove_command(hub: dict[str, Any], name: str) -> None:
    """Delete every cached version of NAME."""
    removed = remove_model(name, cache_dir=hub["cache_dir"])
    if removed:
        err_console.print(f"removed {name} ({len(removed)} file(s))")
        return
    registry = open_registry(hub["registry"], cache_dir=hub["cache_dir"], offline=hub["offline"])
    if name not in registry:
        registry.get(name)  # raises with close matches
    if registry.get(name).builtin:
        raise ModelNotFoundError(f"model {name!r} is packaged with sepcli and cannot be removed")
    err_console.print(f"{name} is not in the cache; nothing to remove")


# `sepcli models import` lives with the models code that does the conversion.
from sepcli.cli.models_import import import_command  # noqa: E402

models.add_command(import_command, name="import")
from sepcli.cli.models_blend import blend, blend_options  # noqa: E402


@models.command("blend")
@blend_options
@_command
def blend_command(hub: dict[str, Any], **options: Any) -> None:
    """Blend trained archives into one ensemble archive.

    A MEMBER is an archive file or a model name (downloaded if needed). Stem S
    of the blend is the weighted mean of the members that output S, or with
    --mode the per-bin max, min or median of their spectrograms; each member
    keeps its own chunking and sample rate. Members must share their channels.

    \b
    Examples:
      sepcli models blend runs/umx/umx.sepcli runs/wave/wave.sepcli -o bag.sepcli
      sepcli models blend a.sepcli b.sepcli --stems vocals --weights vocals=0.7,0.3 -o bag.sepcli
      sepcli models blend a.sepcli b.sepcli c.sepcli --mode vocals=max --mode min -o bag.sepcli
    """

    def load(member: str) -> Any:
        from sepcli.hub import load_model

        with download_bar() as progress:
            return load_model(member, progress=progress, **hub)

    blend(load, **options)
