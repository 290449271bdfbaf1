"""Blend trained archives into one ensemble archive (``sepcli models blend``).

Each member keeps its own weights and inference recipe: magnitude members use
the phase their metadata recommends (``wiener`` -> one Wiener iteration, as
Open-Unmix; anything else -> the mixture phase) unless ``wiener`` says
otherwise. Stem ``s`` of the blend is the weighted mean of the members that
output ``s`` (:class:`sepcli.models.bags.ensemble.Ensemble`). The archive's
metadata names every member (name, file, SHA-256, weights) and joins their
licences and training data, so the terms a member inherits are not lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sepcli.dsp.phase import OUTPUT_KINDS
from sepcli.errors import UsageError
from sepcli.hashing import sha256_file
from sepcli.models.archive import Archive
from sepcli.models.bags.ensemble import Ensemble, MemberModule
from sepcli.models.build import export_archive
from sepcli.models.configs import EnsembleConfig, EnsembleMember

__all__ = ["blend_archives", "compose_bag", "default_weights", "export_bag", "export_blend"]

_OUTPUT_NAMES = {code: name for name, code in OUTPUT_KINDS.items()}


def default_weights(archives: Sequence[Archive], sources: Sequence[str]) -> list[list[float]]:
    """Equal weights: 1 for every member that outputs the stem, else 0."""
    return [[1.0 if s in a.metadata.sources else 0.0 for a in archives] for s in sources]


def _weights_rows(
    archives: Sequence[Archive],
    sources: Sequence[str],
    weights: Mapping[str, Sequence[float]] | None,
) -> list[list[float]]:
    rows = default_weights(archives, sources)
    for stem, row in (weights or {}).items():
        if stem not in sources:
            raise UsageError(f"weights for {stem!r}: not a blended stem ({', '.join(sources)})")
        if len(row) != len(archives):
            raise UsageError(f"weights for {stem!r}: {len(row)} values for {len(archives)} members")
        rows[sources.index(stem)] = [float(w) for w in row]
    return rows


def blend_archives(
    archives: Sequence[Archive],
    sources: Sequence[str] | None = None,
    weights: Mapping[str, Sequence[float]] | None = None,
    wiener: Sequence[int] | None = None,
    modes: Mapping[str, str] | None = None,
) -> Ensemble:
    """An :class:`Ensemble` of loaded archives.

    Args:
        archives: two or more members (any family and sample rate; same channels).
        sources: blended stems; default every member stem, in first-seen order.
        weights: per stem, one weight per member (missing stems: equal weights
            over the members that output them).
        wiener: Wiener iterations per member; default from each member's
            ``phase`` (1 for ``wiener``, else 0).
        modes: stem -> blend mode (:data:`~sepcli.models.configs.BLEND_MODES`);
            key ``"*"`` for every other stem; default ``mean``.
    """
    if len(archives) < 2:
        raise UsageError("a blend needs at least two member archives")
    if len({a.metadata.audio_channels for a in archives}) > 1:
        each = ", ".join(f"{a.metadata.name} ({a.metadata.audio_channels} ch)" for a in archives)
        raise UsageError(f"members must share their channel count: {each}")
    if sources is None:
        sources = list(dict.fromkeys(s for a in archives for s in a.metadata.sources))
    sources = list(sources)
    if not sources or len(set(sources)) != len(sources):
        raise UsageError(f"stems must be distinct and not empty, got {sources}")
    if wiener is None:
        wiener = [1 if a.metadata.phase == "wiener" else 0 for a in archives]
    modes = dict(modes or {})
    unknown = sorted(set(modes) - set(sources) - {"*"})
    if unknown:
        raise UsageError(
            f"--mode for {', '.join(unknown)}: not a blended stem ({', '.join(sources)})"
        )
    per_stem = [modes.get(s, modes.get("*", "mean")) for s in sources]
    return Ensemble.from_archives(
        archives, sources, _weights_rows(archives, sources, weights), wiener_iterations=wiener,
        modes=per_stem,
    )  # fmt: skip


def export_blend(
    archives: Sequence[Archive],
    output: str | os.PathLike[str],
    name: str,
    sources: Sequence[str] | None = None,
    weights: Mapping[str, Sequence[float]] | None = None,
    wiener: Sequence[int] | None = None,
    description: str | None = None,
    modes: Mapping[str, str] | None = None,
) -> Path:
    """Write the blend of ``archives`` to ``output`` (atomically) and return its path.

    The recommended chunk ``overlap`` is the largest any member recommends (a
    member whose edges need a long crossfade still gets it).
    """
    bag = blend_archives(archives, sources, weights, wiener, modes)
    metas = [a.metadata for a in archives]
    rows = [[float(w) for w in row] for row in bag.config.weights]
    members = []
    for m, (archive, meta) in enumerate(zip(archives, metas, strict=True)):
        member = {
            "name": meta.name,
            "family": meta.family,
            "phase": "wiener" if bag.config.members[m].wiener_iterations else "mixture",
            "weights": {s: row[m] for s, row in zip(bag.config.sources, rows, strict=True)},
        }
        if archive.path is not None:
            member["file"] = Path(archive.path).name
            member["sha256"] = sha256_file(Path(archive.path))
        members.append(member)
    licences = list(dict.fromkeys(meta.licence for meta in metas if meta.licence))
    data = [f"{meta.name}: {meta.training_data}" for meta in metas if meta.training_data]
    summary = ", ".join(f"{meta.name} ({meta.family})" for meta in metas)
    return export_archive(
        bag,
        output,
        name=name,
        licence=" | ".join(licences),
        training_data=" | ".join(data),
        description=description or f"blend of {summary}",
        overlap=max(float(meta.overlap) for meta in metas),
        extra={"blend": {"members": members}},
    )


def compose_bag(parts: Sequence[tuple[Archive, Sequence[str]]]) -> Ensemble:
    """A bag that takes each stem from one part (the per-stem choice of the MDX
    challenge winners' blends).

    Args:
        parts: ``(archive, stems)`` pairs; each stem is taken from exactly one
            part. An ensemble archive (a Demucs bag such as ``htdemucs_ft``)
            gives its members, flattened, with their weights within it; members
            that give none of the stems taken from it are left out. Every member
            keeps its own chunking, sample rate and phase step.

    Returns:
        the :class:`Ensemble`, sources in the order the parts name them.
    """
    sources = [s for _, stems in parts for s in stems]
    if len(set(sources)) != len(sources):
        raise UsageError(f"each stem must come from one part, got {sources}")
    modules: list[dict] = []  # per member: MemberModule arguments, spec, weights by stem
    for archive, stems in parts:
        meta = archive.metadata
        missing = [s for s in stems if s not in meta.sources]
        if missing:
            raise UsageError(
                f"{meta.name} has no stem {', '.join(missing)} ({', '.join(meta.sources)})"
            )
        if meta.family == "ensemble":
            inner = list(archive.module.members.children())
            for member, spec in zip(inner, meta.config["members"], strict=True):
                weights = {s: float(member.blend[meta.sources.index(s)].sum()) for s in stems}
                if not any(weights.values()):
                    continue
                modules.append(
                    {
                        "model": member.model,
                        "output": _OUTPUT_NAMES[int(member.kind)],
                        "n_fft": int(member.n_fft),
                        "hop_length": int(member.hop_length),
                        "wiener_iterations": int(member.wiener_iterations),
                        "timing": (
                            float(member.segment),
                            float(member.context),
                            float(getattr(member, "overlap", meta.overlap)),
                            str(getattr(member, "recipe", "overlap-add")),
                            str(getattr(member, "extra_json", "{}")),
                        ),
                        "spec": EnsembleMember.from_dict(spec),
                        "weights": weights,
                    }
                )
            continue
        spec = Ensemble.member_spec(archive, 1 if meta.phase == "wiener" else 0)
        modules.append(
            {
                "model": archive.module,
                "output": meta.output,
                "n_fft": meta.stft.n_fft if meta.stft else 0,
                "hop_length": meta.stft.hop_length if meta.stft else 0,
                "wiener_iterations": spec.wiener_iterations,
                "timing": (
                    meta.segment_seconds,
                    meta.context_seconds,
                    meta.overlap,
                    meta.recipe,
                    json.dumps(dict(meta.extra), sort_keys=True),
                ),
                "spec": spec,
                "weights": dict.fromkeys(stems, 1.0),
            }
        )
    rows = tuple(tuple(m["weights"].get(s, 0.0) for m in modules) for s in sources)
    config = EnsembleConfig(tuple(sources), tuple(m["spec"] for m in modules), rows)
    members = [
        MemberModule(
            m["model"],
            m["output"],
            m["n_fft"],
            m["hop_length"],
            m["wiener_iterations"],
            blend,
            *m["timing"],
        )  # fmt: skip
        for m, blend in zip(modules, Ensemble.blend_matrices(config), strict=True)
    ]
    return Ensemble(members, config)


def export_bag(
    parts: Sequence[tuple[Archive, Sequence[str]]],
    output: str | os.PathLike[str],
    name: str,
    accompaniment: str = "auto",
    description: str = "",
    scores: Mapping[str, object] | None = None,
    registry: Mapping[str, object] | None = None,
    part_names: Sequence[str] | None = None,
    licences: Sequence[str] | None = None,
) -> Path:
    """Write :func:`compose_bag` of ``parts`` to ``output`` (atomically).

    The metadata names each part and the stems it gives, joins the parts'
    licences and training data, and records the ``accompaniment`` rule
    (``mixture-minus-vocals``: the instrumental comes from the vocal model).
    ``part_names`` and ``licences`` (registry names and the licences the registry
    states) replace the parts' own where given.
    """
    bag = compose_bag(parts)
    metas = [a.metadata for a, _ in parts]
    names = list(part_names or [m.name for m in metas])
    terms = list(licences or [m.licence for m in metas])
    pairs = list(zip(names, parts, strict=True))
    summary = "; ".join(f"{', '.join(stems)} from {n}" for n, (_, stems) in pairs)
    extra: dict[str, object] = {
        "accompaniment": accompaniment,
        "bag": {
            "parts": [
                {"name": n, "family": a.metadata.family, "stems": list(stems)}
                for n, (a, stems) in pairs
            ]
        },
    }
    if registry:
        extra["registry"] = dict(registry)
    return export_archive(
        bag,
        output,
        name=name,
        licence=" | ".join(f"{n}: {t}" for n, t in zip(names, terms, strict=True)),
        training_data=" | ".join(
            f"{n}: {m.training_data}" for n, m in zip(names, metas, strict=True)
        ),
        description=description or f"per-stem bag: {summary}",
        scores=dict(scores or {}),
        overlap=max(float(m.overlap) for m in metas),
        extra=extra,
    )
