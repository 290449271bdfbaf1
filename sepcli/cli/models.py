"""``sepcli models``: list, inspect, download, verify, remove, prune and locate pretrained models."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from sepcli.cli.bars import download_bar
from sepcli.cli.common import card_table, err_console, handle_errors, out_console, setup_logging
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
    sources or stems derived from them, such as ``accompaniment``): those on disk
    first, then by the published SDR of the first stem (best first), then by name."""
    from sepcli.errors import UsageError
    from sepcli.hub.catalog import build_problem, published_score
    from sepcli.inference.stems import plan_stems

    ranked = []
    for status in list_models(cache_dir=cache_dir, offline=offline):
        sources = _card(status).get("sources") or []
        if not sources or not (status.local or status.entry.verifiable):
            continue  # an entry with no hash is refused at download
        try:
            plan_stems(sources, stems)
        except UsageError:
            continue
        if build_problem(status.entry) is not None:
            continue  # this sepcli cannot run it yet
        score = published_score(status.entry, "SDR", stems[0]) if stems else None
        ranked.append((not status.local, -(score.value if score else -1e9), status.entry.name))
    return [name for *_, name in sorted(ranked)]


@click.group()
@_hub_options
@click.pass_context
def models(
    ctx: click.Context, cache_dir: str | None, offline: bool | None, registries: tuple[str, ...]
) -> None:
    """Pretrained models: list, info, download, verify, remove, prune, path; import, blend.

    Names come from the built-in registry plus extra registries (--registry or
    SEPCLI_REGISTRY); files are cached under --cache-dir / SEPCLI_CACHE.
    """
    ctx.obj = {"cache_dir": cache_dir, "offline": offline, "registry": list(registries) or None}


def _matches(card: dict[str, Any], entry: Any, filters: dict[str, tuple[str, ...]]) -> bool:
    """Whether a model passes ``models list``'s filters (each repeatable: any of its values)."""
    from sepcli.hub import catalog
    from sepcli.inference.stems import available_stems

    sources = card.get("sources") or []
    tests = {
        "purpose": lambda v: v.lower() in catalog.purposes(entry, sources),
        "stem": lambda v: v.lower() in available_stems(sources),
        "arch": lambda v: catalog.normalise_arch(v) == catalog.architecture(entry),
        "licence": lambda v: (
            v.lower() in (card.get("licence") or "").lower()
            or v.lower() in _licence_label(card.get("licence") or "").lower()
        ),
    }
    return all(any(tests[key](v) for v in values) for key, values in filters.items() if values)


def _purpose_hint(statuses: list[Any], asked: tuple[str, ...]) -> str:
    """``; did you mean ...`` for purposes no model has (the nearest known ones)."""
    from sepcli.hub import catalog

    known = sorted(
        {p for s in statuses for p in catalog.purposes(s.entry, _card(s).get("sources"))}
    )
    close = [c for a in asked if a not in known for c in catalog.close_names(a, known, n=2)]
    if close:
        return f"; did you mean {', '.join(dict.fromkeys(close))}?"
    return f" (purposes: {', '.join(known)})" if any(a not in known for a in asked) else ""


def _card_rows(table: Table, entry: Any, sources: list[str]) -> None:
    """``models info``: architecture, purpose, authors, published stem names,
    whether this sepcli runs it, and where the hashes, config and scores come from."""
    from sepcli.hub import catalog

    raw = entry.raw
    names = raw.get("stem_names") or {}
    rows = {
        "architecture": catalog.architecture(entry),
        "purpose": ", ".join(catalog.purposes(entry, sources)),
        "authors": ", ".join(raw.get("authors") or []),
        "published stems": ", ".join(f"{s} = {p!r}" for s, p in names.items()),
        "input": _input_row(raw.get("config")),
        "runs": _runs(entry),
        "hash source": raw.get("hash_source", ""),
        "config source": raw.get("config_source", ""),
    }
    rows.update({f"scores {d}": src for d, src in (raw.get("score_sources") or {}).items()})
    for key, value in rows.items():
        if value:
            table.add_row(key, str(value))


def _input_row(config: Any) -> str:
    """``models info``: how the model wants its input prepared, where it is not as is."""
    inference = config.get("inference") if isinstance(config, dict) else None
    if isinstance(inference, dict) and inference.get("normalize") is True:
        return ("normalised by the whole track's mean and std (MSST's inference.normalize): "
                "files only, not standard input or live")  # fmt: skip
    return ""


def _runs(entry: Any) -> str:
    """``yes``, or why this sepcli cannot build the model yet (shortened)."""
    from sepcli.hub.catalog import build_problem

    problem = build_problem(entry)
    return "yes" if problem is None else f"not yet: {problem}"


def _purpose_option(which: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--purpose TASK`` (repeatable: any of them) of ``models list`` and ``download``;
    ``which`` says which models it picks."""
    return click.option(
        "--purpose",
        multiple=True,
        metavar="TASK",
        help=f"{which} TASK: vocals, instrumental, karaoke, dereverb, denoise, decrowd, "
        "male-female, multistem, drumsep, instrument... (repeatable: any).",
    )


@models.command("list")
@_purpose_option("Only models for")
@click.option(
    "--stem",
    multiple=True,
    metavar="STEM",
    help="Only models that give STEM (their own or derived, e.g. accompaniment).",
)
@click.option(
    "--arch",
    multiple=True,
    metavar="ARCH",
    help="Only this architecture: bs_roformer, mel_roformer, mdx23c, htdemucs, umx, bag.",
)
@click.option(
    "--licence",
    "--license",
    "licences",
    multiple=True,
    metavar="TEXT",
    help="Only licences containing TEXT (e.g. mit, 'research only', unclear).",
)
@click.option(
    "--sort",
    "sort_by",
    metavar="METRIC:STEM[@DATASET]",
    default=None,
    help="Sort by a published score, best first (e.g. SDR:vocals); the dataset "
    "defaults to the one that scores most of the listed models.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@_command
def list_command(
    hub: dict[str, Any], purpose: tuple[str, ...], stem: tuple[str, ...], arch: tuple[str, ...],
    licences: tuple[str, ...], sort_by: str | None, as_json: bool,
) -> None:  # fmt: skip
    """List known models: architecture, purpose, stems, size, whether they are here
    and whether this sepcli runs them, and licence (in short; `sepcli models info
    NAME` has the full card). Filters narrow the list; --sort ranks it."""
    from sepcli.hub import catalog

    statuses = list_models(**hub)
    filters = {"purpose": purpose, "stem": stem, "arch": arch, "licence": licences}
    rows = [(s, c) for s in statuses if _matches(c := _card(s), s.entry, filters)]
    score_col = None
    if sort_by:
        metric, sort_stem, dataset = catalog.parse_sort(sort_by)
        if dataset is None:
            counts = catalog.score_datasets([s.entry for s, _ in rows], metric, sort_stem)
            dataset = max(sorted(counts), key=counts.__getitem__) if counts else None
        scored = []
        for s, c in rows:
            found = (
                catalog.published_score(s.entry, metric, sort_stem, dataset) if dataset else None
            )
            scored.append(
                (found is None, -(found.value if found else 0.0), s.entry.name, s, c, found)
            )
        scored.sort(key=lambda r: r[:3])
        rows = [(s, {**c, "score": None if f is None else
                     {"value": f.value, "metric": metric, "stem": sort_stem, "dataset": f.dataset,
                      "source": f.source}})
                for *_, s, c, f in scored]  # fmt: skip
        score_col = f"{metric} {sort_stem} ({dataset or 'no scores'})"
    if as_json:
        out = [{**c, "architecture": catalog.architecture(s.entry),
                "purpose": catalog.purposes(s.entry, c.get("sources")),
                "runs": _runs(s.entry), "local": s.local} for s, c in rows]  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    caption = f"score: {score_col}" if score_col else None
    table = Table(show_edge=False, header_style="bold", caption=caption)
    table.add_column("name", no_wrap=True)
    table.add_column("arch", no_wrap=True, overflow="ellipsis")
    table.add_column("stems", no_wrap=True, overflow="ellipsis", max_width=28)
    if score_col:
        table.add_column("score", no_wrap=True, justify="right")
    table.add_column("size", no_wrap=True, justify="right")
    table.add_column("local", no_wrap=True)
    # last and cut to one line: the whole licence text is in `sepcli models info NAME`
    table.add_column("licence", no_wrap=True, overflow="ellipsis", min_width=8, max_width=16)
    for s, card in rows:
        e = s.entry
        if s.local:
            local = "yes"
        elif e.builtin:
            local = "missing from package"
        elif not e.verifiable:
            local = "no (no hash: refused)"
        else:
            local = "no" if catalog.build_problem(e) is None else "no (runs: not yet)"
        stems = list(card.get("sources") or [])
        shown = ", ".join(stems[:4]) + (f" +{len(stems) - 4}" if len(stems) > 4 else "")
        cells = [e.name, catalog.architecture(e), shown or "-"]
        if score_col:
            score = card.get("score")
            cells.append("-" if not score else f"{score['value']:.2f}")
        cells += [_size(e.size), local, _licence_label(card.get("licence") or "")]
        table.add_row(*cells)
    # never drop a column on a narrow terminal: the table is the answer (--json for scripts)
    needed = Measurement.get(out_console, out_console.options.update_width(1000), table).maximum
    wide = Console(
        file=out_console.file, width=max(out_console.width, needed), highlight=False,
        color_system=out_console.color_system, force_terminal=out_console.is_terminal,
    )  # fmt: skip
    wide.print(table)
    if not rows:
        err_console.print(f"no model matches these filters{_purpose_hint(statuses, purpose)}")


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
    table = card_table()
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
    _card_rows(table, entry, data.get("sources") or [])
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
    table = card_table()
    rows = {
        "name": meta.name, "description": meta.description, "family": meta.family,
        "sources": ", ".join(meta.sources), "sample_rate": meta.sample_rate,
        "parameters": meta.num_parameters or "", "licence": meta.licence,
        "training_data": meta.training_data,
        "input": "normalised by the whole track's mean and std: files only, not standard "
        "input or live" if meta.input_normalization == "track" else "",
        "size": _size(data["size"]),
        "sha256": data["sha256"], "local": data["path"],
    }  # fmt: skip
    for key, value in rows.items():
        if value not in (None, ""):
            table.add_row(key, str(value))
    out_console.print(table)


@models.command("download")
@click.argument("names", nargs=-1)
@_purpose_option("Also every verifiable model that this sepcli runs for")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds without data before a retry (SEPCLI_TIMEOUT).",
)
@click.option("--retries", type=int, default=None, help="Retries per URL (SEPCLI_RETRIES).")
@_command
def download_command(
    hub: dict[str, Any], names: tuple[str, ...], purpose: tuple[str, ...],
    timeout: float | None, retries: int | None,
) -> None:  # fmt: skip
    """Download NAMES (and/or every model for --purpose) into the cache, verified;
    prints 'NAME PATH' per model. Free disk space is checked first."""
    from sepcli.errors import UsageError
    from sepcli.hub import catalog
    from sepcli.hub.cache import cache_root
    from sepcli.hub.space import check_free_space, human_size

    if not names and not purpose:
        raise UsageError("name the models to download, or give --purpose TASK")
    statuses = {s.entry.name: s for s in list_models(**hub)}
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if name not in statuses:
            open_registry(hub["registry"], cache_dir=hub["cache_dir"], offline=hub["offline"]).get(
                name
            )
    for task in purpose:
        found = [n for n, s in sorted(statuses.items())
                 if task.lower() in catalog.purposes(s.entry, _card(s).get("sources"))
                 and s.entry.verifiable and s.entry.builtin is None
                 and catalog.build_problem(s.entry) is None]  # fmt: skip
        if not found:
            hint = _purpose_hint(list(statuses.values()), (task,))
            raise UsageError(f"no verifiable model that sepcli runs has purpose {task!r}{hint}")
        wanted += [n for n in found if n not in wanted]
    missing = [statuses[n] for n in wanted if not statuses[n].local and statuses[n].entry.size]
    # a foreign format is converted into an archive about as large as its download
    needed = sum(s.entry.size * (1 if s.entry.format == "sepcli" else 2) for s in missing)
    root = cache_root(hub["cache_dir"])
    check_free_space(root, needed, f"{len(missing)} model(s)")
    if len(wanted) > 1:
        err_console.print(f"{len(wanted)} models, {len(missing)} to download ({human_size(needed)} "
                          f"with conversion) into {root}")  # fmt: skip
    for name in wanted:
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
@click.argument("names", nargs=-1, required=True)
@_command
def remove_command(hub: dict[str, Any], names: tuple[str, ...]) -> None:
    """Delete every cached version of each of NAMES; says how much was freed."""
    from sepcli.hub.space import human_size

    for name in names:
        registry = open_registry(
            hub["registry"], cache_dir=hub["cache_dir"], offline=hub["offline"]
        )
        if name in registry and registry.get(name).builtin:
            raise ModelNotFoundError(
                f"model {name!r} is packaged with sepcli and cannot be removed"
            )
        sizes = _sizes_under(hub, name)
        removed = remove_model(name, cache_dir=hub["cache_dir"])
        if removed:
            err_console.print(f"removed {name} ({len(removed)} file(s), {human_size(sizes)} freed)")
            continue
        if name not in registry:
            registry.get(name)  # raises with close matches
        err_console.print(f"{name} is not in the cache; nothing to remove")


def _sizes_under(hub: dict[str, Any], name: str) -> int:
    from sepcli.hub.cache import cache_root, model_root
    from sepcli.hub.registry import NAME_RE
    from sepcli.hub.space import folder_size

    if not NAME_RE.fullmatch(name):
        return 0
    return folder_size(model_root(cache_root(hub["cache_dir"]), name))


@models.command("prune")
@click.option(
    "--partial",
    is_flag=True,
    help="Also delete unfinished downloads (*.part) that a later download would resume.",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@_command
def prune_command(hub: dict[str, Any], partial: bool, dry_run: bool) -> None:
    """Free the cache: delete models no longer in the registry and earlier versions of
    those that are (a download in progress is left alone). Prints each path and the total."""
    from sepcli.hub.cache import cache_root
    from sepcli.hub.prune import prune_cache
    from sepcli.hub.space import human_size

    registry = open_registry(hub["registry"], cache_dir=hub["cache_dir"], offline=hub["offline"])
    items = prune_cache(cache_root(hub["cache_dir"]), registry, partial=partial, dry_run=dry_run)
    for item in items:
        click.echo(f"{item.path}  {human_size(item.size)}  {item.reason}")
    verb = "would free" if dry_run else "freed"
    err_console.print(f"{len(items)} item(s), {verb} {human_size(sum(i.size for i in items))}")


# `sepcli models import` lives with the models code that does the conversion.
from sepcli.cli.models_import import import_command  # noqa: E402

models.add_command(import_command, name="import")
from sepcli.cli.models_upgrade import upgrade_command  # noqa: E402

models.add_command(upgrade_command, name="upgrade")
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
