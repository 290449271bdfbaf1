"""Chains: models run one after another, each on a stem an earlier step made.

A chain is a list of :class:`~sepcli.hub.presets.ChainStep` (the same step model
as chain presets): the first step runs on the mixture (``mix``); every later step
runs on a **stem path** through the earlier steps. ``vocals`` is the first step's
vocals; ``vocals.lead_vocals`` is the ``lead_vocals`` stem of the step run on
``vocals``. Outputs are named by that path. Because a step's input names its
parent (``vocals.lead_vocals`` comes from the step on ``vocals``) and no input is
run twice, a chain is a tree and cannot hold a cycle.

Written on the command line as ``-m MODEL --then STEM:MODEL --then STEM:MODEL``
(``MODEL`` a registry name, an archive path, or a model/ensemble preset), or as a
chain preset (``karaoke-chain``). Everything here is checked before any input is
read or any model downloaded; every error is one line naming the step and is a
:class:`~sepcli.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sepcli.errors import ArchiveError, ModelNotFoundError, UsageError
from sepcli.hub.presets import ChainStep, Member, Preset, Presets, resolve_member
from sepcli.hub.registry import Registry

__all__ = [
    "Chain",
    "StepPlan",
    "make_chain",
    "chain_from_preset",
    "parse_then",
    "plan_chain",
    "route_of",
    "step_sources",
]

_ROUTE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")


@dataclass(frozen=True)
class Chain:
    """A validated chain.

    Attributes:
        name: what the chain is called in records (a preset's name, or the
            models joined by ``>``).
        steps: the steps, in the order they run.
        labels: how each step was written (``-m htdemucs``,
            ``--then vocals:karaoke``, ``karaoke-chain steps[1]``), for messages.
        models: per step, the name its outputs and records carry (a registry
            name, an archive's metadata name, or ``PRESET`` for an ensemble).
    """

    name: str
    steps: tuple[ChainStep, ...]
    labels: tuple[str, ...]
    models: tuple[str, ...]

    def where(self, index: int) -> str:
        """``step N (LABEL)``: how messages name step ``index`` (0-based)."""
        return f"step {index + 1} ({self.labels[index]})"


@dataclass(frozen=True)
class StepPlan:
    """What one step does in a run.

    Attributes:
        index: the step's position in the chain (0-based).
        stems: the stems of the step's model to write (``None``: all its sources,
            for a model whose sources are known only once it is loaded), and
            ``feeds``: those of them later steps read.
    """

    index: int
    stems: tuple[str, ...] | None
    feeds: tuple[str, ...] = ()


def route_of(step_input: str, stem: str) -> str:
    """The name of stem ``stem`` of the step run on ``step_input`` (``mix`` -> ``stem``)."""
    return stem if step_input == "mix" else f"{step_input}.{stem}"


def parse_then(text: str) -> tuple[str, str]:
    """``"vocals:MODEL"`` -> ``("vocals", "MODEL")``."""
    route, sep, model = text.partition(":")
    route = route.strip().lower()
    if not sep or not route or not model.strip():
        raise UsageError(
            f"--then {text}: write STEM:MODEL, e.g. --then vocals:MODEL "
            "(STEM is a stem of an earlier step: vocals, or vocals.lead_vocals)"
        )
    return route, model.strip()


def _is_file(name: str) -> bool:
    return Path(name).expanduser().is_file()


def _step_from(
    spec: str, route: str, label: str, presets: Presets, registry: Registry
) -> tuple[ChainStep, str]:
    """One step running ``spec`` (a file, registry name or model/ensemble preset)."""
    if _is_file(spec) or spec in registry or spec == "default" or spec not in presets:
        return ChainStep(route, (Member(spec),)), spec
    preset = presets[spec]
    if preset.kind == "chain":
        raise UsageError(f"{label}: {spec!r} is a chain preset; a step runs one model or ensemble")
    return ChainStep(route, preset.members, preset.algorithm, preset.weights), spec


def chain_from_preset(preset: Preset) -> tuple[list[ChainStep], list[str], list[str]]:
    """A chain preset's steps, labels and model names."""
    steps = list(preset.steps)
    labels = [f"{preset.name} steps[{i}]" for i in range(len(steps))]
    models = [
        s.members[0].name if len(s.members) == 1 else f"{preset.name}.step{i + 1}"
        for i, s in enumerate(steps)
    ]
    return steps, labels, models


def make_chain(
    model: str | Preset,
    thens: Sequence[str],
    presets: Presets,
    registry: Registry,
) -> Chain:
    """The chain of ``-m MODEL`` (or a preset) followed by ``--then STEM:MODEL`` steps.

    Checks the stem paths (each names a stem of an earlier step's input, no input
    twice) and that every model is a file, a registry model or a model/ensemble
    preset; then :func:`step_sources` checks each stem against the models.
    """
    if isinstance(model, Preset):
        if model.kind == "chain":
            steps, labels, models = chain_from_preset(model)
        else:
            steps = [ChainStep("mix", model.members, model.algorithm, model.weights)]
            labels, models = [f"--preset {model.name}"], [model.name]
        name = model.name
    else:
        first, first_name = _step_from(model, "mix", f"-m {model}", presets, registry)
        steps, labels, models, name = [first], [f"-m {model}"], [first_name], ""
    for text in thens:
        route, spec = parse_then(text)
        label = f"--then {text}"
        where = f"step {len(steps) + 1} ({label})"
        if route == "mix" or not _ROUTE_RE.fullmatch(route):
            raise UsageError(
                f"{where}: {route!r} is not a stem of an earlier step "
                "(write a stem name such as vocals, or a path such as vocals.lead_vocals)"
            )
        parent = route.rpartition(".")[0] or "mix"
        inputs = [s.input for s in steps]
        if route in inputs:
            raise UsageError(f"{where}: an earlier step already runs on {route!r}")
        if parent not in inputs:
            raise UsageError(
                f"{where}: no earlier step runs on {parent!r} to make {route!r} "
                f"(steps run on: {', '.join(inputs)})"
            )
        step, step_name = _step_from(spec, route, where, presets, registry)
        steps.append(step)
        labels.append(label)
        models.append(step_name)
    chain = Chain(name, tuple(steps), tuple(labels), tuple(models))
    models = [_display_name(chain, i, registry) for i in range(len(steps))]
    if not name:
        name = " > ".join(models)
    return Chain(name, chain.steps, chain.labels, tuple(models))


def _member_sources(
    chain: Chain, index: int, member: Member, registry: Registry
) -> tuple[str, ...] | None:
    """The sources of one model of a step without downloading it (``None``: unknown)."""
    from sepcli.hub.load import DEFAULT_ENV, packaged_asset
    from sepcli.models.archive import read_metadata

    name = member.name
    if _is_file(name):
        try:
            return read_metadata(Path(name).expanduser()).sources
        except ArchiveError as exc:
            raise UsageError(f"{chain.where(index)}: {exc}") from None
    if name == "default" and os.environ.get(DEFAULT_ENV, "").strip() not in ("", "default"):
        return None  # another model stands in for the default: known once loaded
    entry = resolve_member(member, registry)
    if entry is None:
        try:
            registry.get(name)  # the registry's message, with close names
        except ModelNotFoundError as exc:
            raise UsageError(f"{chain.where(index)}: {exc}") from None
        return None
    if entry.sources:
        return tuple(entry.sources)
    if entry.builtin is not None and packaged_asset(entry.builtin).is_file():
        return read_metadata(packaged_asset(entry.builtin)).sources
    return None


def _display_name(chain: Chain, index: int, registry: Registry) -> str:
    """A step's model name: a file's metadata name, a member's registry name, or the
    preset's name (ensembles)."""
    step = chain.steps[index]
    if len(step.members) != 1:
        return chain.models[index]
    name = step.members[0].name
    if _is_file(name):
        from sepcli.models.archive import read_metadata

        try:
            return read_metadata(Path(name).expanduser()).name
        except ArchiveError as exc:
            raise UsageError(f"{chain.where(index)}: {exc}") from None
    entry = resolve_member(step.members[0], registry)
    return entry.name if entry is not None else name


def step_sources(chain: Chain, registry: Registry) -> list[tuple[str, ...] | None]:
    """Per step, the sources its model(s) make (``None`` where only loading tells),
    after checking that every model is known and that every step reads a stem its
    source step can make (a source, or a derived stem such as ``accompaniment``)."""
    from sepcli.inference.stems import plan_stems

    found: list[tuple[str, ...] | None] = []
    for i, step in enumerate(chain.steps):
        per_member = [_member_sources(chain, i, m, registry) for m in step.members]
        if any(s is None for s in per_member):
            found.append(None)
        else:
            found.append(tuple(dict.fromkeys(s for srcs in per_member for s in srcs or ())))
    by_input = {s.input: i for i, s in enumerate(chain.steps)}
    for i, step in enumerate(chain.steps):
        if step.input == "mix":
            continue
        parent, _, stem = step.input.rpartition(".")
        j = by_input[parent or "mix"]
        sources = found[j]
        if sources is None:
            continue
        try:
            plan_stems(sources, [stem])
        except UsageError:
            raise UsageError(
                f"{chain.where(i)}: step {j + 1} ({chain.models[j]}) makes "
                f"{', '.join(sources)}, not {stem!r}"
            ) from None
    return found


def plan_chain(
    chain: Chain,
    sources: Sequence[tuple[str, ...] | None],
    requested: Sequence[str] | None,
) -> list[StepPlan]:
    """The steps that run for the ``requested`` stem paths (``None``: every stem of
    every step), in order, each with the stems it writes.

    A step runs when a requested stem is one of its stems or a later step that
    runs reads one of them; it writes those stems (and only those).
    """
    from sepcli.inference.stems import plan_stems

    steps = chain.steps
    by_input = {s.input: i for i, s in enumerate(steps)}
    wanted: dict[int, list[str]] = {}
    if requested is None:
        for i, srcs in enumerate(sources):
            wanted[i] = list(srcs) if srcs is not None else []
    else:
        for route in requested:
            route = route.strip().lower()
            parent, _, stem = route.rpartition(".")
            i = by_input.get(parent or "mix")
            if i is None:
                raise UsageError(
                    f"--stems {route}: no step runs on {parent!r} "
                    f"(steps run on: {', '.join(by_input)})"
                )
            if sources[i] is not None:
                try:
                    plan_stems(sources[i] or (), [stem])
                except UsageError:
                    raise UsageError(
                        f"--stems {route}: {chain.where(i)} makes "
                        f"{', '.join(sources[i] or ())}, not {stem!r}"
                    ) from None
            wanted.setdefault(i, [])
            if stem not in wanted[i]:
                wanted[i].append(stem)
    runs: dict[int, StepPlan] = {}
    for i in reversed(range(len(steps))):
        feeds = []
        for j in runs:
            parent, _, stem = steps[j].input.rpartition(".")
            if by_input[parent or "mix"] == i:
                feeds.append(stem)
        if i not in wanted and not feeds:
            continue
        stems = list(wanted.get(i, []))
        if requested is None and sources[i] is None:
            runs[i] = StepPlan(i, None, tuple(feeds))
            continue
        stems += [s for s in feeds if s not in stems]
        runs[i] = StepPlan(i, tuple(stems), tuple(feeds))
    return [runs[i] for i in sorted(runs)]
