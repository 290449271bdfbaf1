"""Ensembles: several models blended per stem with a weight matrix.

As in the MDX 2021 blends (e.g. vocals 0.2 / 0.4 / 0.4 across three models) and
Demucs "bags": stem ``s`` is ``sum_m w[s][m] * est_m[s] / sum_m w[s][m]`` over
the members that output ``s``. Every member is first turned into waveforms:
waveform members as they are; magnitude members with the mixture phase or,
when ``wiener_iterations > 0``, the multichannel Wiener filter
(:func:`sepcli.dsp.wiener.wiener`); complex members by inverse STFT, or Wiener
on their magnitudes. An ensemble is one module (archive output ``"waveform"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sepcli.dsp.phase import OUTPUT_KINDS, waveform_from_output
from sepcli.errors import ConfigError
from sepcli.models.archive import Archive, set_contract
from sepcli.models.configs import EnsembleConfig, EnsembleMember, config_from_dict

__all__ = ["MemberModule", "Ensemble", "MEMBER_LAYOUT"]

#: What a data archive records of each member beyond its family and config (the
#: member's chunking and phase step), with the defaults of archives written
#: before members recorded their overlap and recipe.
MEMBER_LAYOUT: dict[str, type] = {
    "output": str,
    "n_fft": int,
    "hop_length": int,
    "wiener_iterations": int,
    "segment": float,
    "context": float,
    "overlap": float,
    "recipe": str,
    "extra_json": str,
}
_LAYOUT_DEFAULTS = {"overlap": 0.25, "recipe": "overlap-add", "extra_json": "{}"}
_OUTPUT_NAMES = {code: name for name, code in OUTPUT_KINDS.items()}


class MemberModule(nn.Module):
    """Wraps one member: ``mix (B, C, T) -> (B, S_m, C, T)`` waveforms.

    ``blend`` is this member's ``(S_out, S_m)`` share of the ensemble's
    (normalised) weight matrix. ``segment``, ``context`` (seconds), ``overlap``,
    ``recipe`` and ``extra_json`` (the member archive's ``extra``, where a recipe
    keeps its own parameters) are the member's chunking: the separator runs each
    member with its own (archives written before members recorded their overlap
    and recipe get the ensemble's overlap and ``overlap-add``).
    """

    def __init__(
        self,
        model: nn.Module,
        output: str,
        n_fft: int,
        hop_length: int,
        wiener_iterations: int,
        blend: Tensor,
        segment: float,
        context: float,
        overlap: float = 0.25,
        recipe: str = "overlap-add",
        extra_json: str = "{}",
    ) -> None:
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ConfigError(f"unknown member output {output!r}")
        self.model = model
        self.kind = OUTPUT_KINDS[output]
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.wiener_iterations = int(wiener_iterations)
        self.register_buffer("blend", blend.float())
        self.segment = float(segment)
        self.context = float(context)
        # The member's own chunking: the separator runs each member with it.
        self.overlap = float(overlap)
        self.recipe = str(recipe)
        self.extra_json = str(extra_json)
        self.sample_rate = int(model.sample_rate)

    def forward(self, mix: Tensor) -> Tensor:
        return waveform_from_output(
            self.kind, self.model(mix), mix, self.n_fft, self.hop_length, self.wiener_iterations
        )


class Ensemble(nn.Module):
    """Per-stem weighted blend of members; ``forward(mix (B, C, T)) -> (B, S, C, T)``."""

    def __init__(self, members: Sequence[MemberModule], config: EnsembleConfig) -> None:
        super().__init__()
        first = members[0].model
        set_contract(
            self,
            config,
            sample_rate=int(first.sample_rate),
            audio_channels=int(first.audio_channels),
        )
        for m in members:
            if int(m.model.audio_channels) != self.audio_channels:
                raise ConfigError("ensemble members must share audio_channels")
        # Members of other rates are resampled by the separator, once per member;
        # forward() (the whole input through every member) needs one rate.
        self.single_rate = all(int(m.model.sample_rate) == self.sample_rate for m in members)
        # forward() forms the weighted mean only; a stem of another blend mode is
        # blended by the separator (spectral modes in chunks of their own), so
        # forward() refuses such an ensemble instead of returning another blend.
        other = [(s, m) for s, m in zip(config.sources, config.modes, strict=True) if m != "mean"]
        self.refusal = (
            f"this ensemble blends {other[0][0]!r} with mode {other[0][1]!r}, which only "
            "sepcli's Separator runs; forward() gives mean blends"
            if other
            else ""
        )
        self.members = nn.ModuleList(members)

    @staticmethod
    def blend_matrices(config: EnsembleConfig) -> list[Tensor]:
        """Per member, its ``(S_out, S_m)`` normalised weights."""
        cfgs = [m.member_config() for m in config.members]
        totals = [
            sum(w for w, c in zip(row, cfgs, strict=True) if s in c.sources)
            for s, row in zip(config.sources, config.weights, strict=True)
        ]
        mats = []
        for i, cfg in enumerate(cfgs):
            mat = torch.zeros(config.num_sources, len(cfg.sources))
            for s, name in enumerate(config.sources):
                if name in cfg.sources:
                    mat[s, cfg.sources.index(name)] = config.weights[s][i] / totals[s]
            mats.append(mat)
        return mats

    @classmethod
    def from_config(cls, config: EnsembleConfig) -> Ensemble:
        """Members built (random weights) from their configs."""
        from sepcli.models.build import build_model
        from sepcli.models.families import family

        members = []
        for spec, blend in zip(config.members, cls.blend_matrices(config), strict=True):
            model = build_model(spec.member_family, spec.config)
            segment, context = model.archive_timing()
            overlap = model.archive_overlap() if hasattr(model, "archive_overlap") else 0.25
            members.append(
                MemberModule(
                    model,
                    family(spec.member_family).output,
                    int(getattr(model, "n_fft", 0)),
                    int(getattr(model, "hop_length", 0)),
                    spec.wiener_iterations,
                    blend,
                    segment,
                    context,
                    overlap,
                    family(spec.member_family).recipe,
                )
            )
        return cls(members, config)

    @staticmethod
    def member_spec(archive: Archive, wiener_iterations: int = 0) -> EnsembleMember:
        """The :class:`EnsembleMember` of a loaded family archive (its config with the
        archive's source names)."""
        meta = archive.metadata
        where = str(archive.path) if archive.path else meta.name
        if meta.input_normalization is not None:
            # a member's layout has no place for it: refused rather than dropped
            raise ConfigError(
                f"{where}: cannot be an ensemble member (it normalises its input by the "
                f"whole track, input_normalization {meta.input_normalization!r})"
            )
        try:
            cfg = config_from_dict(meta.family, meta.config)
        except ConfigError as exc:
            raise ConfigError(f"{where}: cannot be an ensemble member ({exc})") from None
        if tuple(cfg.sources) != tuple(meta.sources):
            cfg = type(cfg).from_dict({**cfg.to_dict(), "sources": list(meta.sources)})
        return EnsembleMember(meta.family, cfg.to_dict(), wiener_iterations)

    @classmethod
    def from_archives(
        cls,
        archives: Sequence[Archive],
        sources: Sequence[str],
        weights: Sequence[Sequence[float]],
        wiener_iterations: Sequence[int] | None = None,
        modes: Sequence[str] = (),
    ) -> Ensemble:
        """An ensemble of loaded family archives (their modules are reused as is).

        Args:
            archives: members, loaded with :func:`sepcli.models.archive.load_archive`.
            sources: output stems.
            weights: ``len(sources)`` rows of ``len(archives)`` weights.
            wiener_iterations: per member (spectrogram members only); default 0.
            modes: per source, the blend mode (:class:`EnsembleConfig`); default ``mean``.
        """
        iters = list(wiener_iterations) if wiener_iterations is not None else [0] * len(archives)
        if len(iters) != len(archives):
            raise ConfigError("one wiener_iterations value per member is needed")
        specs = [cls.member_spec(a, n) for a, n in zip(archives, iters, strict=True)]
        config = EnsembleConfig(
            tuple(sources), tuple(specs), tuple(tuple(r) for r in weights), tuple(modes)
        )
        members = []
        for archive, spec, blend in zip(archives, specs, cls.blend_matrices(config), strict=True):
            meta = archive.metadata
            members.append(
                MemberModule(
                    archive.module,
                    meta.output,
                    meta.stft.n_fft if meta.stft else 0,
                    meta.stft.hop_length if meta.stft else 0,
                    spec.wiener_iterations,
                    blend,
                    meta.segment_seconds,
                    meta.context_seconds,
                    meta.overlap,
                    meta.recipe,
                    json.dumps(dict(meta.extra), sort_keys=True),
                )
            )
        return cls(members, config)

    @staticmethod
    def layout(module: nn.Module) -> list[dict[str, object]]:
        """Per member, its :data:`MEMBER_LAYOUT` values, read from an ensemble module
        (eager or scripted): what a data archive stores beside the weights."""
        out: list[dict[str, object]] = []
        for member in module.members.children():
            row: dict[str, object] = {}
            for key, kind in MEMBER_LAYOUT.items():
                if key == "output":
                    row[key] = _OUTPUT_NAMES[int(member.kind)]
                elif hasattr(member, key):
                    row[key] = kind(getattr(member, key))
                else:
                    row[key] = _LAYOUT_DEFAULTS[key]
            out.append(row)
        return out

    @classmethod
    def from_layout(cls, config: EnsembleConfig, layout: Sequence[object]) -> Ensemble:
        """Members built (random weights) from their configs and a data archive's
        :meth:`layout`; the weights and blend matrices are loaded afterwards."""
        from sepcli.models.build import build_model

        if not isinstance(layout, (list, tuple)) or len(layout) != len(config.members):
            raise ConfigError(f"the member layout must list {len(config.members)} members")
        members = []
        for spec, blend, row in zip(
            config.members, cls.blend_matrices(config), layout, strict=True
        ):
            if not isinstance(row, dict) or set(row) != set(MEMBER_LAYOUT):
                raise ConfigError(f"a member layout holds exactly {', '.join(MEMBER_LAYOUT)}")
            for key, kind in MEMBER_LAYOUT.items():
                value = row[key]
                ok = isinstance(value, kind) or (kind is float and type(value) is int)
                if not ok or isinstance(value, bool):
                    raise ConfigError(f"member layout {key!r} must be a {kind.__name__}")
            members.append(
                MemberModule(
                    build_model(spec.member_family, spec.config),
                    row["output"],
                    row["n_fft"],
                    row["hop_length"],
                    row["wiener_iterations"],
                    blend,
                    row["segment"],
                    row["context"],
                    row["overlap"],
                    row["recipe"],
                    row["extra_json"],
                )  # fmt: skip
            )
        return cls(members, config)

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (B, C, T)`` -> ``(B, S, C, T)``: every member on the whole input,
        each stem the weighted mean of the members' (weights of the blend matrices).

        The separator does not call this: it runs each member with its own
        chunking (and rate) and blends the waveforms with each stem's mode. An
        ensemble with a stem of another mode than ``mean``, or with members of
        other sample rates, is refused here (``RuntimeError``; ``torch.jit.Error``
        once scripted): run it with a
        :class:`~sepcli.inference.separator.Separator`.
        """
        if not self.single_rate:
            raise RuntimeError("members of other sample rates: run this ensemble with a Separator")
        if self.refusal != "":
            raise RuntimeError(self.refusal)
        b, c, t = mix.shape
        out = torch.zeros(b, self.num_sources, c * t, dtype=mix.dtype, device=mix.device)
        for member in self.members:
            est = member(mix)  # (B, S_m, C, T)
            out = out + torch.matmul(member.blend, est.reshape(b, est.shape[1], c * t))
        return out.reshape(b, self.num_sources, c, t)

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """(segment, context) in seconds: the shortest member segment, the longest context."""
        return (
            min(float(m.segment) for m in self.members),
            max(float(m.context) for m in self.members),
        )
