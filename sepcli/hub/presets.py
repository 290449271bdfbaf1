"""Presets: named recipes of registry models, as data.

A preset is one of

* a **model**: ``{"model": MEMBER}`` (e.g. ``best``, the registry's per-stem bag);
* an **ensemble**: ``{"members": [MEMBER, ...], "algorithm": ALG, "weights": [...]}``:
  the members run each with its own chunking and are blended per stem with
  ``ALG`` (one of :data:`sepcli.models.configs.BLEND_MODES`: audio-separator's
  ``avg_wave`` ... ``uvr_max_spec`` or sepcli's ``mean``/``max``/``min``/``median``;
  or ``{STEM: ALG, "*": ALG}``), ``weights`` one per member (``avg_*``/``mean``);
* a **chain**: ``{"steps": [STEP, ...]}``, each step ``{"input": PATH, ...}`` plus a
  model or members as above; ``PATH`` is ``mix`` or a stem path through the
  earlier steps (``vocals``: the first step's vocals; ``vocals.lead``: the
  ``lead`` stem of the step run on ``vocals``). Chains are validated here and
  run by the chain runner.

A MEMBER is a registry name, or ``{"name": NAME, "sha256": HEX, ...}``: a name
missing from the registry is then matched by the checkpoint digest (any registry
entry with a file of that SHA-256), so a preset survives a registry that names
the same checkpoint differently. ``published_as`` and ``splifft`` (where the name
and digest come from) are informative.

Files: ``sepcli/hub/presets.json`` (built in), then ``presets.json`` or
``presets.toml`` in the user config folder (``SEPCLI_CONFIG_DIR``, else
platformdirs' user config dir), then files given with ``--presets``; a later
file's preset replaces an earlier one of the same name. Layout::

    {"version": 1, "presets": {"NAME": {"description": "...", ...}, ...}}

Every error names the file, the line of the preset where it can be found, and the
key (``presets.toml:12: preset 'mine': members[1]: ...``) and is a
:class:`~sepcli.errors.ConfigError` (exit 2), raised before any download.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from sepcli.errors import ConfigError
from sepcli.hub.registry import NAME_RE, SHA256_RE, ModelEntry, Registry

__all__ = [
    "CONFIG_ENV",
    "ChainStep",
    "Member",
    "Preset",
    "Presets",
    "load_presets",
    "parse_presets",
    "chain_problems",
    "preset_model",
    "require_members",
    "resolve_member",
    "resolve_preset",
    "step_preset",
    "user_presets_path",
]

PRESETS_VERSION = 1
CONFIG_ENV = "SEPCLI_CONFIG_DIR"
_ROUTE_RE = re.compile(r"mix|[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")


def _blend_modes() -> tuple[str, ...]:
    # torch-free: the same tuple as sepcli.models.configs.BLEND_MODES
    from sepcli.dsp import ENSEMBLE_ALGORITHMS

    return ("mean", "max", "min", "median") + ENSEMBLE_ALGORITHMS


@dataclass(frozen=True)
class Member:
    """One model of a preset: a registry name and, optionally, its checkpoint digest."""

    name: str
    sha256: str | None = None
    published_as: str | None = None


@dataclass(frozen=True)
class ChainStep:
    """One step of a chain: the stem path it reads, and its model or ensemble."""

    input: str
    members: tuple[Member, ...]
    algorithm: Mapping[str, str] = field(default_factory=dict)
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Preset:
    """A validated preset.

    Attributes:
        kind: ``model``, ``ensemble`` or ``chain``.
        members: the model (one) or the ensemble's members (empty for a chain).
        algorithm: stem (or ``"*"``) -> blend mode, for an ensemble.
        weights: one per member, or ``None`` (equal).
        steps: a chain's steps.
        origin: ``FILE:LINE`` where the preset is defined.
    """

    name: str
    kind: str
    description: str = ""
    members: tuple[Member, ...] = ()
    algorithm: Mapping[str, str] = field(default_factory=dict)
    weights: tuple[float, ...] | None = None
    steps: tuple[ChainStep, ...] = ()
    source: str = ""
    origin: str = "built-in"

    def all_members(self) -> list[Member]:
        """Every model the preset needs (a chain's over all its steps), once each."""
        found = list(self.members) + [m for s in self.steps for m in s.members]
        return list(dict.fromkeys(found))

    def algorithm_text(self) -> str:
        if not self.algorithm:
            return ""
        if set(self.algorithm) == {"*"}:
            return self.algorithm["*"]
        return ", ".join(f"{k}={v}" for k, v in self.algorithm.items())


def _line_of(text: str, name: str) -> int | None:
    """Line (1-based) where preset ``name`` is defined in a JSON or TOML file's text."""
    patterns = [
        rf'^\s*"{re.escape(name)}"\s*[:=]',
        rf"^\s*\[\s*presets\.\"?{re.escape(name)}\"?\s*\]",
        rf"^\s*{re.escape(name)}\s*=",
    ]
    for number, line in enumerate(text.splitlines(), 1):
        if any(re.match(p, line) for p in patterns):
            return number
    return None


class _Where:
    """Builds one-line errors: ``FILE[:LINE]: preset 'NAME': KEY: message``."""

    def __init__(self, origin: str, text: str, name: str | None = None) -> None:
        self.origin, self.text, self.name = origin, text, name
        line = _line_of(text, name) if name else None
        self.place = f"{origin}:{line}" if line else origin

    def error(self, message: str, key: str = "") -> ConfigError:
        what = f"preset {self.name!r}: " if self.name else ""
        return ConfigError(f"{self.place}: {what}{key + ': ' if key else ''}{message}")


def _member(data: Any, where: _Where, key: str) -> Member:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise where.error("a model is a registry name or {name, sha256}", key)
    unknown = sorted(set(data) - {"name", "sha256", "published_as", "splifft"})
    if unknown:
        raise where.error(f"unknown key(s) {', '.join(unknown)}", key)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise where.error(f"bad model name {name!r} (registry names: [a-z0-9][a-z0-9._-]*)", key)
    sha = data.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not SHA256_RE.fullmatch(sha)):
        raise where.error(f"sha256 must be 64 lowercase hex digits, got {sha!r}", key)
    published = data.get("published_as")
    return Member(name, sha, published if isinstance(published, str) else None)


def _ensemble_fields(
    data: Mapping[str, Any], where: _Where, prefix: str
) -> tuple[tuple[Member, ...], dict[str, str], tuple[float, ...] | None]:
    """``model`` xor ``members`` (+ ``algorithm``, ``weights``) of a preset or a step."""
    has_model, has_members = "model" in data, "members" in data
    if has_model == has_members:
        raise where.error("give either 'model' or 'members'", prefix.rstrip("."))
    if has_model:
        for key in ("algorithm", "weights"):
            if data.get(key) is not None:
                raise where.error(f"'{key}' needs 'members' (two or more)", prefix + key)
        return (_member(data["model"], where, prefix + "model"),), {}, None
    raw = data["members"]
    if not isinstance(raw, list) or len(raw) < 2:
        raise where.error("a list of at least two models", prefix + "members")
    members = tuple(_member(m, where, f"{prefix}members[{i}]") for i, m in enumerate(raw))
    algorithm = data.get("algorithm", "avg_wave")
    modes = _blend_modes()
    if isinstance(algorithm, str):
        algorithm = {"*": algorithm}
    if not isinstance(algorithm, Mapping) or not algorithm:
        raise where.error("an algorithm name or {STEM: ALGORITHM}", prefix + "algorithm")
    for stem, mode in algorithm.items():
        if mode not in modes:
            raise where.error(
                f"unknown algorithm {mode!r}; use one of {', '.join(modes)}", prefix + "algorithm"
            )
        if not isinstance(stem, str) or not (stem == "*" or _ROUTE_RE.fullmatch(stem)):
            raise where.error(f"bad stem name {stem!r}", prefix + "algorithm")
    weights = data.get("weights")
    if weights is not None:
        if (
            not isinstance(weights, list)
            or len(weights) != len(members)
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
            or not all(math.isfinite(w) and w >= 0 for w in weights)
            or sum(weights) <= 0
        ):
            raise where.error(
                f"one number >= 0 per member ({len(members)}), not all zero", prefix + "weights"
            )
        weights = tuple(float(w) for w in weights)
    return members, dict(algorithm), weights


def _steps(raw: Any, where: _Where) -> tuple[ChainStep, ...]:
    if not isinstance(raw, list) or not raw:
        raise where.error("a non-empty list of steps", "steps")
    steps: list[ChainStep] = []
    inputs: list[str] = []
    for i, data in enumerate(raw):
        key = f"steps[{i}]"
        if not isinstance(data, Mapping):
            raise where.error("a step is an object {input, model | members}", key)
        unknown = sorted(set(data) - {"input", "model", "members", "algorithm", "weights"})
        if unknown:
            raise where.error(f"unknown key(s) {', '.join(unknown)}", key)
        route = data.get("input", "mix" if i == 0 else None)
        if not isinstance(route, str) or not _ROUTE_RE.fullmatch(route):
            raise where.error(
                f"input must be 'mix' or a stem path like vocals.lead, got {route!r}",
                key + ".input",
            )
        parent = "mix" if "." not in route else route.rsplit(".", 1)[0]
        if route != "mix" and parent not in inputs:
            raise where.error(
                f"input {route!r}: no earlier step runs on {parent!r} to make it", key + ".input"
            )
        if route in inputs:
            raise where.error(
                f"input {route!r}: an earlier step already runs on it", key + ".input"
            )
        if i == 0 and route != "mix":
            raise where.error("the first step runs on 'mix'", key + ".input")
        members, algorithm, weights = _ensemble_fields(data, where, key + ".")
        steps.append(ChainStep(route, members, algorithm, weights))
        inputs.append(route)
    return tuple(steps)


def _preset(name: Any, data: Any, origin: str, text: str) -> Preset:
    where = _Where(origin, text, name if isinstance(name, str) else None)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise where.error(f"preset name {name!r} is not allowed (use [a-z0-9][a-z0-9._-]*)")
    if not isinstance(data, Mapping):
        raise where.error("a preset is an object")
    allowed = {"description", "source", "model", "members", "algorithm", "weights", "steps"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise where.error(
            f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )
    texts = {k: data.get(k, "") for k in ("description", "source")}
    for key, value in texts.items():
        if not isinstance(value, str):
            raise where.error("must be a string", key)
    common = {"name": name, "origin": where.place, **texts}
    if "steps" in data:
        extra = sorted({"model", "members", "algorithm", "weights"} & set(data))
        if extra:
            raise where.error(f"a chain gives models per step, not {', '.join(extra)}")
        return Preset(kind="chain", steps=_steps(data["steps"], where), **common)
    members, algorithm, weights = _ensemble_fields(data, where, "")
    kind = "ensemble" if len(members) > 1 else "model"
    return Preset(kind=kind, members=members, algorithm=algorithm, weights=weights, **common)


def _decode(raw: bytes, origin: str) -> tuple[Any, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{origin}: not UTF-8 text") from None
    if origin.endswith(".toml"):
        try:
            return tomllib.loads(text), text
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{origin}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
        ) from None


def parse_presets(raw: bytes, origin: str) -> dict[str, Preset]:
    """The presets of one file's bytes (TOML when ``origin`` ends in ``.toml``, else JSON)."""
    data, text = _decode(raw, origin)
    if not isinstance(data, Mapping) or data.get("version") != PRESETS_VERSION:
        version = data.get("version") if isinstance(data, Mapping) else None
        raise ConfigError(
            f'{origin}: a presets file is {{"version": {PRESETS_VERSION}, "presets": {{...}}}}'
            f" (version {version!r})"
        )
    presets = data.get("presets")
    if not isinstance(presets, Mapping):
        raise ConfigError(f"{origin}: 'presets' must be an object of name -> preset")
    return {name: _preset(name, body, origin, text) for name, body in presets.items()}


def user_presets_path() -> Path | None:
    """``presets.json`` or ``presets.toml`` in the user config folder, if there is one."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    folder = (
        Path(env).expanduser()
        if env
        else Path(platformdirs.user_config_dir("sepcli", appauthor=False))
    )
    for name in ("presets.json", "presets.toml"):
        if (folder / name).is_file():
            return folder / name
    return None


class Presets(Mapping[str, Preset]):
    """Name -> :class:`Preset`; :meth:`get_preset` suggests close names."""

    def __init__(self, presets: Mapping[str, Preset], files: Sequence[str] = ()) -> None:
        self._presets = dict(presets)
        self.files = tuple(files)

    def __getitem__(self, name: str) -> Preset:
        return self._presets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    def get_preset(self, name: str) -> Preset:
        if name in self._presets:
            return self._presets[name]
        close = difflib.get_close_matches(name, list(self._presets), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint} ('sepcli presets list' shows them)")


def load_presets(files: Sequence[str | os.PathLike[str]] = ()) -> Presets:
    """Built-in presets, then the user's file, then ``files`` (later ones win)."""
    raw = resources.files("sepcli.hub").joinpath("presets.json").read_bytes()
    found = parse_presets(raw, "built-in presets.json")
    sources = ["built-in"]
    extra = [p for p in [user_presets_path()] if p is not None] + [Path(f) for f in files]
    for path in extra:
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read presets ({exc.strerror or exc})") from None
        found.update(parse_presets(data, str(path)))
        sources.append(str(path))
    return Presets(found, sources)


def resolve_member(member: Member, registry: Registry) -> ModelEntry | None:
    """The registry entry of ``member``: by name, else by its checkpoint's SHA-256."""
    if member.name in registry:
        return registry.get(member.name)
    if member.sha256:
        for entry in registry:
            files = list(entry.files) + [f for part, _ in entry.parts for f in part.files]
            if any(f.sha256 == member.sha256 for f in files):
                return entry
    return None


def resolve_preset(preset: Preset, registry: Registry) -> list[tuple[Member, ModelEntry | None]]:
    """Every member of ``preset`` with its registry entry (``None``: missing)."""
    return [(m, resolve_member(m, registry)) for m in preset.all_members()]


def require_members(preset: Preset, registry: Registry) -> list[ModelEntry]:
    """The entries of ``preset``'s members; :class:`ConfigError` naming every missing one."""
    pairs = resolve_preset(preset, registry)
    missing = [m.name for m, e in pairs if e is None]
    if missing:
        raise ConfigError(
            f"{preset.origin}: preset {preset.name!r}: not in the registry: {', '.join(missing)}"
        )
    return [e for _, e in pairs if e is not None]


def step_preset(preset: Preset, index: int) -> Preset:
    """Step ``index`` of a chain as a model or ensemble preset (for :func:`preset_model`),
    named ``CHAIN.step<N>`` (1-based)."""
    step = preset.steps[index]
    return Preset(
        name=f"{preset.name}.step{index + 1}",
        kind="ensemble" if len(step.members) > 1 else "model",
        description=f"step {index + 1} of {preset.name}: {step.input}",
        members=step.members,
        algorithm=step.algorithm,
        weights=step.weights,
        source=preset.source,
        origin=preset.origin,
    )


def chain_problems(preset: Preset, registry: Registry) -> list[str]:
    """What is wrong with a chain given the registry: a step reading a stem that the
    step it comes from cannot make (its models' sources, or a stem derived from
    them such as ``accompaniment``). Steps whose models or sources are unknown are
    not checked; one line per problem, naming the step."""
    from sepcli.errors import UsageError
    from sepcli.inference.stems import plan_stems

    problems = []
    by_input = {step.input: (i, step) for i, step in enumerate(preset.steps)}
    for i, step in enumerate(preset.steps):
        if step.input == "mix":
            continue
        parent, _, stem = step.input.rpartition(".")
        j, maker = by_input[parent or "mix"]
        entries = [resolve_member(m, registry) for m in maker.members]
        if any(e is None or not e.sources for e in entries):
            continue
        sources = list(dict.fromkeys(s for e in entries if e is not None for s in e.sources))
        try:
            plan_stems(sources, [stem])
        except UsageError:
            problems.append(
                f"{preset.origin}: preset {preset.name!r}: steps[{i}].input: step {j + 1} "
                f"makes {', '.join(sources)}, not {stem!r}"
            )
    return problems


def bag_key(preset: Preset, entries: Sequence[ModelEntry]) -> str:
    """16 hex digits naming an ensemble preset's bag: its recipe and its members' files."""
    recipe = {
        "members": [e.name + ":" + e.cache_key for e in entries],
        "algorithm": dict(preset.algorithm),
        "weights": list(preset.weights) if preset.weights else None,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def preset_model(
    preset: Preset,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    progress: Any = None,
) -> Path:
    """The archive that runs a model or ensemble preset, made once in the cache.

    A model preset is its registry model. An ensemble preset downloads its
    members (verified, as any model), then blends them into a bag under
    ``CACHE/presets/NAME/KEY/NAME.sepcli`` (``KEY``: :func:`bag_key`): every member
    keeps its own chunking and sample rate; stem ``s`` is the preset's algorithm
    over the members that output ``s``. Every member is checked against the
    registry before anything is downloaded.
    """
    from sepcli.hub.cache import cache_root, file_lock
    from sepcli.hub.load import ensure_model, offline_mode, open_registry
    from sepcli.hub.transport import HttpSettings

    if preset.kind == "chain":
        raise ConfigError(
            f"preset {preset.name!r} is a chain of {len(preset.steps)} steps; "
            "this command runs model and ensemble presets"
        )
    offline = offline_mode(offline)
    registry = open_registry(cache_dir=cache_dir, offline=offline)
    entries = require_members(preset, registry)
    root = cache_root(cache_dir)
    settings = HttpSettings.from_env()
    paths = [
        ensure_model(e, root, offline=offline, settings=settings, progress=progress)
        for e in entries
    ]
    if preset.kind == "model":
        return paths[0]
    dest = root / "presets" / preset.name / bag_key(preset, entries) / f"{preset.name}.sepcli"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / ".lock"):
        if not dest.is_file():
            _write_bag(preset, entries, paths, dest)
    return dest


def _write_bag(
    preset: Preset, entries: Sequence[ModelEntry], paths: Sequence[Path], dest: Path
) -> None:
    from sepcli.models.archive import load_archive
    from sepcli.models.bags.blend import export_blend

    archives = [load_archive(p, "cpu") for p in paths]
    sources = list(dict.fromkeys(s for a in archives for s in a.metadata.sources))
    weights = None
    if preset.weights is not None:
        weights = {
            s: [
                w if s in a.metadata.sources else 0.0
                for w, a in zip(preset.weights, archives, strict=True)
            ]
            for s in sources
        }
    export_blend(
        archives,
        dest,
        name=preset.name,
        sources=sources,
        weights=weights,
        modes=dict(preset.algorithm),
        description=preset.description
        or f"preset {preset.name}: {preset.algorithm_text()} of {', '.join(e.name for e in entries)}",
    )
