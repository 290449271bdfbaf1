"""Finding a model in the registry: purposes, architectures, published scores, filters.

Pure functions over :class:`~sepcli.hub.registry.ModelEntry` values; the CLI's
``models list`` and ``scripts/gen_registry.py`` (which writes the generated
entries and the tables in ``docs/models.md``) share them, so a rule is written
once.

* :func:`derive_purposes`: the tasks a model is for, from a publisher's task
  field (``dereverb``, ``denoise``...) and its output stems (table
  :data:`STEM_TASKS`).
* :func:`architecture`: ``bs_roformer``, ``mel_roformer``, ``mdx23c``,
  ``htdemucs``, ``umx``, ``bag`` or ``sepcli``.
* :func:`published_score`: a published figure (``SDR`` of ``vocals``) with the
  dataset it was measured on and the source that published it.
* :func:`build_problem`: why an entry's inline config does not build with this
  sepcli (``None`` when it does).
* :func:`best_by_rule`: the registry model with the highest published score per
  stem (the rule behind the ``best`` bag; see ``docs/models.md``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sepcli.hub.registry import ModelEntry

__all__ = [
    "STEM_TASKS",
    "SCORE_PREFERENCE",
    "Score",
    "safe_stem",
    "derive_purposes",
    "purposes",
    "architecture",
    "published_score",
    "score_datasets",
    "build_problem",
    "best_by_rule",
    "close_names",
    "parse_sort",
]

#: Output stem -> task it serves. A stem not listed names an instrument
#: (``guitar``, ``strings``...) and gives the task ``instrument``.
STEM_TASKS: dict[str, str] = {
    "vocals": "vocals",
    "instrumental": "instrumental",
    "lead_vocals": "karaoke",
    "back_vocals": "karaoke",
    "lead": "karaoke",
    "back": "karaoke",
    "back_instrum": "karaoke",
    "karaoke": "karaoke",
    "male": "male-female",
    "female": "male-female",
    "vocals1": "duet",
    "vocals2": "duet",
    "dry": "dereverb",
    "reverb": "dereverb",
    "clean": "decrowd",
    "crowd": "decrowd",
    "denoised": "denoise",
    "noise": "denoise",
    "center": "center-side",
    "side": "center-side",
    "similarity": "center-side",
    "difference": "center-side",
    "music": "cinematic",
    "sfx": "cinematic",
    "speech": "cinematic",
    "foreground": "cinematic",
    "background": "cinematic",
    "kick": "drumsep",
    "snare": "drumsep",
    "toms": "drumsep",
    "hh": "drumsep",
    "cymbals": "drumsep",
    "hh_cymbals": "drumsep",
    "ride": "drumsep",
    "crash": "drumsep",
    "accompaniment": "instrumental",
    "drums": "instrument",
    "bass": "instrument",
    "other": "instrument",
}
_FOUR = {"drums", "bass", "other", "vocals"}
#: Stem names of publishers that sepcli spells otherwise (splifft's ``instrum``).
STEM_ALIASES = {"instrum": "instrumental"}

#: Datasets in the order the ranking rule prefers them: one table that measured
#: many models the same way first (audio-separator's medians), then ZFTurbo's
#: Multisong tables, then what each publisher's own page gives.
SCORE_PREFERENCE = ("audio-separator-median", "multisong", "musdb18hq-test", "published")


def safe_stem(name: str) -> str:
    """A published stem name as a sepcli stem name: ``No Reverb`` -> ``no_reverb``,
    ``instrum`` -> ``instrumental``."""
    safe = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return STEM_ALIASES.get(safe, safe)


def derive_purposes(task: str | None, stems: Sequence[str]) -> list[str]:
    """The tasks of a model: ``task`` (a publisher's field such as ``dereverb``;
    ``separation`` or ``None`` adds nothing) plus :data:`STEM_TASKS` of each
    output stem, plus ``multistem`` for drums, bass, other and vocals together."""
    out = [] if task in (None, "", "separation") else [safe_stem(task).replace("_", "-")]
    for stem in stems:
        out.append(STEM_TASKS.get(stem, "instrument"))
    if _FOUR <= set(stems):
        out.append("multistem")
    return sorted(set(out))


def purposes(entry: ModelEntry, sources: Sequence[str] | None = None) -> list[str]:
    """``entry``'s ``purpose`` list, else derived from its sources."""
    given = entry.raw.get("purpose")
    if isinstance(given, list) and given:
        return [str(p) for p in given]
    return derive_purposes(None, list(sources if sources is not None else entry.sources))


_ARCH = {"bs_roformer": "bs_roformer", "mel_band_roformer": "mel_roformer", "mdx23c": "mdx23c",
         "scnet": "scnet"}  # fmt: skip
_ARCH_ALIASES = {
    "bs-roformer": "bs_roformer",
    "mel-roformer": "mel_roformer",
    "mel_band_roformer": "mel_roformer",
    "demucs": "htdemucs",
    "openunmix": "umx",
}


def architecture(entry: ModelEntry) -> str:
    """A short architecture name for ``entry`` (see the module docstring)."""
    if entry.format == "msst":
        return _ARCH.get(str(entry.raw.get("model_type")), "msst")
    return {"demucs": "htdemucs", "openunmix": "umx", "bag": "bag"}.get(entry.format, "sepcli")


def normalise_arch(text: str) -> str:
    """``--arch`` spelling -> :func:`architecture`'s (``mel-roformer`` -> ``mel_roformer``)."""
    text = text.strip().lower()
    return _ARCH_ALIASES.get(text, text)


@dataclass(frozen=True)
class Score:
    """One published figure: ``value`` of ``metric`` for ``stem`` on ``dataset``,
    as ``source`` published it."""

    value: float
    metric: str
    stem: str
    dataset: str
    source: str


def _source_of(entry: ModelEntry, dataset: str) -> str:
    sources = entry.raw.get("score_sources")
    if isinstance(sources, Mapping) and dataset in sources:
        return str(sources[dataset])
    return str(entry.raw.get("scores_note") or "the registry entry")


def published_score(
    entry: ModelEntry, metric: str, stem: str, dataset: str | None = None
) -> Score | None:
    """The figure ``entry`` publishes for ``metric`` of ``stem`` (on ``dataset``, or
    on the first dataset of :data:`SCORE_PREFERENCE` that has one, then any)."""
    scores = entry.scores if isinstance(entry.scores, Mapping) else {}
    order = [dataset] if dataset else [*SCORE_PREFERENCE, *sorted(scores)]
    for name in order:
        per_stem = scores.get(name)
        if not isinstance(per_stem, Mapping):
            continue
        metrics = per_stem.get(stem)
        if isinstance(metrics, Mapping):
            value = metrics.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return Score(float(value), metric, stem, name, _source_of(entry, name))
    return None


def score_datasets(entries: Iterable[ModelEntry], metric: str, stem: str) -> dict[str, int]:
    """How many of ``entries`` publish ``metric`` of ``stem``, per dataset."""
    counts: dict[str, int] = {}
    for entry in entries:
        for name, per_stem in (entry.scores or {}).items():
            if isinstance(per_stem, Mapping) and isinstance(per_stem.get(stem), Mapping):
                if metric in per_stem[stem]:
                    counts[name] = counts.get(name, 0) + 1
    return counts


def parse_sort(text: str) -> tuple[str, str, str | None]:
    """``SDR:vocals`` or ``SDR:vocals@multisong`` -> (metric, stem, dataset or None)."""
    from sepcli.errors import UsageError

    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]*):([a-z0-9_]+)(?:@([A-Za-z0-9._-]+))?", text)
    if not match:
        raise UsageError(f"--sort {text!r}: use METRIC:STEM[@DATASET], e.g. SDR:vocals")
    return match.group(1), match.group(2), match.group(3)


_PROBLEMS: dict[tuple[str, bool], str | None] = {}


def build_problem(entry: ModelEntry, *, build: bool = False) -> str | None:
    """Why the config inline in an ``msst`` entry does not work with this sepcli,
    or ``None`` when it does (and for entries without an inline config).

    The config must convert to a sepcli family config (every key known, every
    value valid); with ``build``, the model module must also be constructed from
    it (on PyTorch's ``meta`` device: no memory, no weights). A key sepcli does
    not implement yet is named. Results are cached per config.
    """
    config = entry.raw.get("config")
    if entry.format != "msst" or not isinstance(config, Mapping):
        return None
    import json

    key = (json.dumps([entry.raw.get("model_type"), config], sort_keys=True), build)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = _problem(config, entry.raw.get("model_type"), build)
    return _PROBLEMS[key]


def _problem(config: Mapping[str, Any], model_type: Any, build: bool) -> str | None:
    from sepcli.errors import SepcliError
    from sepcli.models.importers.msst import config_from_msst

    try:
        family_config = config_from_msst(config, model_type, "config")
    except SepcliError as exc:
        return str(exc).removeprefix("config: ")
    if not build:
        return None
    import torch

    from sepcli.models.build import build_model

    try:
        with torch.device("meta"):
            build_model(family_config.family, family_config)
    except (SepcliError, ValueError, RuntimeError, NotImplementedError) as exc:
        return f"the model does not build ({type(exc).__name__}: {exc})"
    return None


def best_by_rule(
    entries: Iterable[ModelEntry], stems: Sequence[str], metric: str = "SDR"
) -> dict[str, Score | None]:
    """Per stem, the entry with the highest published ``metric`` for it.

    The rule: among verifiable, non-bag entries that output the stem themselves
    and whose config builds, take the first dataset of :data:`SCORE_PREFERENCE`
    for which at least one of them publishes a figure, and the highest figure
    there (ties: the name that sorts first). Returns ``{stem: Score}`` whose
    ``source`` is prefixed with the chosen entry's name (``NAME: source``).
    """
    pool = [
        e
        for e in entries
        if e.format != "bag" and e.verifiable and e.builtin is None and build_problem(e) is None
    ]
    out: dict[str, Score | None] = {}
    for stem in stems:
        found: Score | None = None
        for dataset in SCORE_PREFERENCE:
            ranked = []
            for e in pool:
                if stem not in e.sources:
                    continue
                score = published_score(e, metric, stem, dataset)
                if score is not None:
                    ranked.append((-score.value, e.name, score))
            if ranked:
                _, name, score = min(ranked)
                found = Score(score.value, metric, stem, dataset, f"{name}: {score.source}")
                break
        out[stem] = found
    return out


def close_names(name: str, names: Sequence[str], n: int = 3) -> list[str]:
    """The registry names nearest to ``name`` (difflib), for a typo."""
    return difflib.get_close_matches(name.lower(), list(names), n=n, cutoff=0.5)
