"""The chain runner of ``sepcli separate``: steps one after another, each on a file.

Steps run in order; each step loads its model once, runs it on every input it
has work for, and frees it before the next step loads: the peak memory is that
of the largest step. A step reads the stem file an earlier step wrote, block by
block through the streaming separator (the chunk engines' ``push``/``finish``),
so nothing grows with the track's length, and a step's output equals running
that step alone on that file.

Every output's provenance record (``.sepcli-run.json``) carries the usual
identity (model, archive SHA-256, settings) plus the SHA-256 of the file the
step read and ``chain``: the output's stem path and every step on the way to it.
A re-run skips a step whose outputs were made with the same model, settings and
input; an output an earlier chain run made differently (another input, model or
setting) is made again; a file sepcli did not write is kept, as ``separate``
keeps it. A step that fails for an input stops the steps that read its stems for
that input; the outputs of the steps before stay, and the error names the step.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from sepcli.cli import outputs as planning
from sepcli.cli.common import err_console
from sepcli.errors import SepcliError, UsageError
from sepcli.hashing import sha256_file
from sepcli.hub.chains import Chain, StepPlan, route_of
from sepcli.inference.heap import HeapTrimmer

__all__ = ["run_chain", "step_identity"]


def step_identity(
    chain: Chain,
    index: int,
    archive_sha: str | None,
    settings: dict[str, Any],
    input_path: Path,
    shas: dict[int, str | None],
) -> dict[str, Any]:
    """The provenance record of step ``index``'s outputs for one input file."""
    from sepcli import __version__

    step = chain.steps[index]
    by_input = {s.input: i for i, s in enumerate(chain.steps)}
    path = [index]
    while chain.steps[path[0]].input != "mix":
        parent = chain.steps[path[0]].input.rpartition(".")[0] or "mix"
        path.insert(0, by_input[parent])
    st = input_path.stat()
    return {
        "model": chain.models[index],
        "archive_sha256": archive_sha,
        "settings": settings,
        "sepcli": __version__,
        "input": str(input_path.resolve()),
        "input_sha256": sha256_file(input_path),
        "input_size": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "chain": {
            "name": chain.name,
            "step": index + 1,
            "input": step.input,
            "steps": [
                {
                    "step": i + 1,
                    "input": chain.steps[i].input,
                    "model": chain.models[i],
                    "archive_sha256": shas.get(i),
                }
                for i in path
            ],
        },
    }


def _resolve_step(chain: Chain, index: int, cache_dir, offline, quiet) -> Path:
    """The archive file of a step (downloaded or blended once, as any model)."""
    from sepcli.cli.bars import download_bar
    from sepcli.hub import resolve_model
    from sepcli.hub.presets import preset_model, step_preset

    step = chain.steps[index]
    with download_bar(quiet) as on_progress:
        if len(step.members) == 1:
            name = step.members[0].name
            try:
                return resolve_model(
                    name, cache_dir=cache_dir, offline=offline or None, progress=on_progress
                )
            except SepcliError:
                if not step.members[0].sha256:
                    raise
        preset = step_preset(
            _as_preset(chain), index
        )  # a member found by its checkpoint digest, or an ensemble
        return preset_model(
            preset, cache_dir=cache_dir, offline=offline or None, progress=on_progress
        )


def _as_preset(chain: Chain):
    from sepcli.hub.presets import Preset

    return Preset(name=chain.name.replace(" > ", "-"), kind="chain", steps=chain.steps)


def run_chain(
    *,
    chain: Chain,
    plans: list[StepPlan],
    files: list[Path],
    out_dir: Path,
    template: str,
    fmt: str,
    encoding: dict[str, Any],
    settings: dict[str, Any],
    separator_config: Any,
    device: torch.device,
    force: bool,
    cache_dir: str | None,
    offline: bool,
    quiet: bool,
    progress: Progress,
    counts: dict[str, int],
    into: list[dict[str, Any]],
) -> None:
    """Run the planned steps over ``files``, appending one report record per input
    to ``into`` first (filled in as the steps run, so an interrupted run reports
    what it did)."""
    from sepcli.cli.separate import _process_track, _waiting, output_paths

    records = {
        p: {
            "input": str(p),
            "model": chain.name,
            "device": str(device),
            "chain": [
                {"step": i + 1, "input": s.input, "model": chain.models[i]}
                for i, s in enumerate(chain.steps)
            ],
            "steps": [],
            "outputs": {},
        }
        for p in files
    }
    into.extend(records.values())
    # stem path -> file, per input: where each step reads its input
    made: dict[Path, dict[str, Path]] = {p: {"mix": p} for p in files}
    failed: dict[Path, str] = {}
    shas: dict[int, str | None] = {}
    files_task = progress.add_task("steps", total=len(plans) * len(files))
    for plan in plans:
        i = plan.index
        step = chain.steps[i]
        where = chain.where(i)
        todo = [p for p in files if p not in failed and step.input in made[p]]
        for p in files:
            if p not in todo and p not in failed:  # its input was never made
                _fail(records[p], failed, p, i, chain, f"{where}: {step.input!r} was not made")
        progress.advance(files_task, len(files) - len(todo))  # nothing to do for these
        if not todo:
            continue
        try:
            path = _resolve_step(chain, i, cache_dir, offline, quiet)
            shas[i] = sha256_file(path)
        except SepcliError as exc:
            for p in todo:
                _fail(records[p], failed, p, i, chain, f"{where}: {exc}")
            progress.advance(files_task, len(todo))
            continue
        separator = None
        stems = plan.stems
        for p in todo:
            record = records[p]
            step_record: dict[str, Any] = {"step": i + 1, "input": step.input}
            record["steps"].append(step_record)
            source = made[p][step.input]
            try:
                if stems is None:  # sources known only now: all of them, and what later steps read
                    from sepcli.models.archive import read_metadata

                    sources = read_metadata(path).sources
                    stems = tuple(sources) + tuple(s for s in plan.feeds if s not in sources)
                outs = output_paths(
                    p, out_dir, template, [route_of(step.input, s) for s in stems], fmt,
                    chain.models[i],
                )  # fmt: skip
                by_stem = {s: outs[route_of(step.input, s)] for s in stems}
                identity = step_identity(chain, i, shas[i], settings, source, shas)
                work = _work(by_stem, identity, force, step_record, counts, quiet)
                step_record["outputs"] = {
                    route_of(step.input, s): str(o) for s, o in by_stem.items()
                }
                if work:
                    if separator is None:
                        separator = _load(path, separator_config, device, stems)
                    with planning.locked_outputs(
                        work.values(), on_wait=lambda q: _waiting(q, quiet)
                    ):
                        _process_track(
                            separator, source, work, identity, True, step_record, counts,
                            progress, quiet, encoding, f"{where}: ",
                        )  # fmt: skip
                else:
                    step_record["status"] = "skipped"
            except SepcliError as exc:
                step_record.update(status="failed", error=str(exc))
                err_console.print(f"[bold red]error:[/] {where}: {exc}", soft_wrap=True)
            if step_record.get("status") == "failed":
                error = f"{where}: {step_record.get('error')}"
                step_record["error"] = error
                failed[p] = error
                record.update(status="failed", error=error, failed_step=i + 1)
            else:
                for stem, out in by_stem.items():
                    if out.exists():
                        made[p][route_of(step.input, stem)] = out
                        record["outputs"][route_of(step.input, stem)] = str(out)
            progress.advance(files_task)
        del separator
        gc.collect()
        HeapTrimmer()()  # the next step's model must not stack on this one's freed heap
    for record in records.values():
        if "status" not in record:
            statuses = {s.get("status") for s in record["steps"]}
            record["status"] = "skipped" if statuses <= {"skipped"} else "ok"


def _fail(
    record: dict[str, Any], failed: dict[Path, str], p: Path, i: int, chain: Chain, error: str
) -> None:
    record["steps"].append({"step": i + 1, "input": chain.steps[i].input, "status": "failed",
                            "error": error})  # fmt: skip
    record.update(status="failed", error=error, failed_step=i + 1)
    failed[p] = error
    err_console.print(f"[bold red]error:[/] {p}: {error}", soft_wrap=True)


def _load(path: Path, config: Any, device: torch.device, stems: tuple[str, ...]) -> Any:
    from sepcli.inference.separator import Separator
    from sepcli.models.archive import load_archive

    separator = Separator(load_archive(path, device), config, device=device)
    try:
        separator.plan(list(stems))
    except UsageError as exc:
        raise UsageError(f"{path.name}: {exc}") from None
    return separator


def _work(
    outputs: dict[str, Path],
    identity: dict[str, Any],
    force: bool,
    step_record: dict[str, Any],
    counts: dict[str, int],
    quiet: bool,
) -> dict[str, Path]:
    """The outputs of a step to (re)write: missing ones, and ones an earlier chain
    run made differently; outputs sepcli did not write (or wrote outside a chain)
    are kept, as ``separate`` keeps them."""
    plan = planning.plan_track(outputs, identity, force)
    work = dict(plan.todo)
    if not plan.skipped:
        return work
    records: dict[Path, dict[str, Any]] = {}
    for stem, skip in plan.skipped.items():
        folder = skip.path.parent
        if folder not in records:
            records[folder] = planning.read_provenance(folder)
        old = records[folder].get(skip.path.name) or {}
        if skip.kind == "other" and "chain" in old:
            work[stem] = skip.path
            if not quiet:
                err_console.print(f"note: redoing {skip.path}: {skip.reason}", soft_wrap=True)
            continue
        step_record.setdefault("skipped", {})[stem] = skip.reason
        counts[skip.kind] += 1
        if skip.kind != "done" and not quiet:
            err_console.print(
                f"[yellow]skipped[/] {skip.path}: {skip.reason} (--force to replace it)",
                soft_wrap=True,
            )
    return work
