"""The one separation pipeline shared by the CLI, ``evaluate`` and Python users.

decode -> channels to the model's -> resample to the model rate (soxr) ->
chunked inference with overlap-add (optional shifts) -> phase step for
spectrogram models -> resample back to the input rate -> stems (derived ones
too) -> encode to temporary files -> rename. Every stage is streaming, so
memory does not grow with the track length.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sepcli import audio
from sepcli.dsp.ensemble import ALGORITHMS as ENSEMBLE_ALGORITHMS
from sepcli.dsp.phase import spectral_blend, to_waveform
from sepcli.dsp.stft import hann_window
from sepcli.errors import AudioDecodeError, UsageError
from sepcli.inference.chunking import StreamingOverlapAdd
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.device import (
    BatchLimit,
    DevicePlan,
    OomSafeFn,
    auto_batch_size,
    autocast,
    plan_devices,
    resolve_device,
)
from sepcli.inference.ensemble_stream import StreamingEnsemble
from sepcli.inference.heap import HeapTrimmer
from sepcli.inference.normalize import (
    RunningStats,
    TrackStats,
    constant_track,
    denormalize,
    normalize,
    stream_refusal,
)
from sepcli.inference.pipeline import Prefetch, WriteBehind
from sepcli.inference.recipes import ChunkEngine, Recipe, make_recipe
from sepcli.inference.stems import StemRecipe, plan_stems
from sepcli.models.archive import (
    Archive,
    ArchiveMetadata,
    StftParams,
    load_archive,
    probe_archive,
)
from sepcli.progress import Progress, ProgressFn

__all__ = ["Separator", "SeparatorConfig", "StemPlan", "FileResult", "resolve_device", "track_name"]

log = logging.getLogger(__name__)

#: Input is decoded and fed to the pipeline in blocks of this many seconds.
BLOCK_SECONDS = 10.0

#: Blocks decoded ahead (and stem blocks waiting to be written) when threads are on.
PREFETCH_BLOCKS = 2


def _stft_needs(archive: Archive) -> tuple[bool, bool]:
    """``(network computes an STFT, output step outside the network)`` of an archive.

    Hybrid and band-split families (HT-Demucs, RoFormers, MDX23C) give waveforms
    but take an STFT inside: their metadata has ``stft`` (members: ``n_fft``).
    """
    meta = archive.metadata
    if meta.family == "ensemble" and hasattr(archive.module, "members"):
        members = list(archive.module.members.children())
        return any(int(m.kind) != 0 or int(getattr(m, "n_fft", 0)) > 0 for m in members), False
    return meta.stft is not None or meta.output != "waveform", meta.output != "waveform"


def _forward_works(archive: Archive) -> bool:
    """The network runs once on a short silent input on its device (MPS lacks some ops)."""
    try:
        probe_archive(archive)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        log.warning("%s does not run on MPS with this torch (%s); it runs on the CPU",
                    archive.metadata.name, str(e).strip().splitlines()[0] if str(e) else e)  # fmt: skip
        return False
    return True


def _as_tensor(array: np.ndarray) -> Tensor:
    """A tensor over ``array`` (copied when it is read-only, e.g. memory-mapped)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def track_name(path: str | os.PathLike[str]) -> str:
    """File name without its audio suffixes (``song.stem.mp4`` -> ``song``)."""
    name = Path(path).name
    if name.lower().endswith(".stem.mp4"):
        return name[: -len(".stem.mp4")]
    return Path(name).stem if Path(name).suffix else name


class _Fifo:
    """Samples ``(channels, n)`` waiting to be taken in order."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.parts: deque[np.ndarray] = deque()
        self.length = 0

    def put(self, x: np.ndarray) -> None:
        if x.shape[-1]:
            self.parts.append(x)
            self.length += x.shape[-1]

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples (zeros past what was put: resampler rounding at the end)."""
        parts = []
        need = n
        while need > 0 and self.parts:
            head = self.parts[0]
            if head.shape[-1] <= need:
                parts.append(self.parts.popleft())
                need -= head.shape[-1]
            else:
                parts.append(head[:, :need])
                self.parts[0] = head[:, need:]
                need = 0
        got = np.concatenate(parts, axis=-1) if parts else np.zeros((self.channels, 0), np.float32)
        self.length -= got.shape[-1]
        if need > 0:
            got = np.concatenate([got, np.zeros((self.channels, need), np.float32)], axis=-1)
        return got


@dataclass
class FileResult:
    """What :meth:`Separator.separate_file` did for one input."""

    input: Path
    outputs: dict[str, Path]
    duration: float  # seconds of audio
    seconds: float  # wall-clock seconds taken
    sample_rate: int
    channels: int
    extra: dict = field(default_factory=dict)


#: Phase steps that treat each source on its own: a subset of sources gives the same stems.
_PER_SOURCE_PHASES = ("mixture", "griffin-lim")


@dataclass(frozen=True)
class StemPlan:
    """What :meth:`Separator.plan` decided for a set of stems.

    Attributes:
        recipes: how each stem is made from the model's sources.
        sources: indices of the sources whose networks run (``None``: all).
        note: why every network runs although fewer would do (for the CLI).
    """

    recipes: list[StemRecipe]
    sources: tuple[int, ...] | None
    note: str | None


@dataclass(frozen=True)
class _Unit:
    """One model run through its own chunking recipe: a whole archive, or one
    member of an ensemble (Demucs' ``BagOfModels``: each member keeps its own
    chunking and sample rate, and the bag blends waveforms per stem).

    ``make_fn(generator)`` gives ``(B, C, L) -> (B, S_unit, C, L)`` waveforms at
    ``sample_rate``; ``blend`` is the ``(S, S_unit)`` share of the model's
    sources (``None``: the unit's sources are the model's); ``normalization``
    is the archive's ``input_normalization`` (``"track"``: the unit's input is
    standardised by the whole track's statistics, :mod:`sepcli.inference.normalize`).
    """

    name: str
    make_fn: Callable[[torch.Generator], Callable[[Tensor], Tensor]]
    recipe: Recipe
    sample_rate: int
    num_sources: int
    blend: Tensor | None = None
    normalization: str | None = None


class _UnitStream:
    """Input blocks at the track's rate -> the unit's share of the needed sources,
    back at the track's rate: resample in, (normalise,) chunked inference,
    (denormalise,) blend, resample out."""

    def __init__(
        self,
        unit: _Unit,
        engine: ChunkEngine,
        sample_rate: int,
        channels: int,
        needed: list[int],
        stats: TrackStats | None = None,
    ) -> None:
        self.engine = engine
        self.stats = stats
        self.channels = channels
        self.needed = needed
        self.sample_rate = sample_rate
        # Which of the unit's sources is each needed source (0/1 rows), and its weight
        # in the blend; the weighting happens in the _Combiner.
        if unit.blend is None:
            self.select = torch.eye(unit.num_sources)[needed]
        else:
            self.select = (unit.blend[needed] > 0).float()
        self.gains = (
            torch.ones(len(needed)) if unit.blend is None else unit.blend[needed].sum(dim=1)
        )
        self.res_in = audio.StreamResampler(sample_rate, unit.sample_rate, channels)
        self.res_out = audio.StreamResampler(unit.sample_rate, sample_rate, len(needed) * channels)
        self.frames_out = 0

    def _through(self, est: Tensor) -> np.ndarray:
        """``(S_unit, C, m)`` at the unit rate -> ``(K * C, m')`` at the track rate:
        the unit's own estimate of each needed source (zeros where it has none)."""
        k = len(self.needed)
        if est.shape[-1] == 0:
            return np.zeros((k * self.channels, 0), np.float32)
        sel = torch.matmul(self.select, est.reshape(est.shape[0], -1))
        out = self.res_out.process(sel.reshape(k * self.channels, -1).numpy())
        self.frames_out += out.shape[-1]
        return out

    def _in(self, x: np.ndarray) -> Tensor:
        """Model-rate input as the network sees it (MSST: ``(x - mean) / std``)."""
        t = _as_tensor(x)
        return t if self.stats is None else normalize(t, self.stats)

    def _out(self, est: Tensor) -> Tensor:
        """The network's sources back at the track's scale (MSST: ``y * std + mean``)."""
        return est if self.stats is None else denormalize(est, self.stats)

    def push(self, block: np.ndarray) -> np.ndarray:
        return self._through(self._out(self.engine.push(self._in(self.res_in.process(block)))))

    def finish(self, frames_in: int) -> np.ndarray:
        """The rest of the output; in all, exactly ``frames_in`` samples (soxr rounds)."""
        tail_in = self.res_in.flush()
        parts = [self.engine.push(self._in(tail_in))] if tail_in.shape[-1] else []
        parts.append(self.engine.finish())
        rest = self._through(self._out(torch.cat(parts, dim=-1)))
        flushed = self.res_out.flush()
        rest = np.concatenate([rest, flushed], axis=-1)
        want = frames_in - (self.frames_out - rest.shape[-1] + flushed.shape[-1])
        if rest.shape[-1] > want:
            rest = rest[:, : max(want, 0)]
        elif rest.shape[-1] < want:
            pad = np.zeros((rest.shape[0], want - rest.shape[-1]), np.float32)
            rest = np.concatenate([rest, pad], axis=-1)
        return rest


#: STFT of the spectrogram-domain blend modes (at the track's rate).
SPECTRAL_BLEND_FFT = 2048
SPECTRAL_BLEND_HOP = 512


class _Combiner:
    """The units' estimates of the needed sources -> one waveform per needed source.

    ``mean`` sources are the weighted sum (the weights of an ensemble sum to one
    per source); audio-separator's algorithms (``avg_wave`` ... ``uvr_max_spec``)
    go through :class:`~sepcli.inference.ensemble_stream.StreamingEnsemble`
    (exact over the stream); ``max``/``min``/``median`` sources go through
    :func:`~sepcli.dsp.phase.spectral_blend` in 10-s chunks with one STFT window
    of context (a streaming overlap-add of its own, so their output lags).
    """

    def __init__(
        self, units: list[_UnitStream], modes: list[str], channels: int, sample_rate: int
    ) -> None:
        self.units = units
        self.modes = modes
        self.channels = channels
        self.ready = [_Fifo(channels) for _ in modes]
        self.spectral: dict[int, tuple[list[int], StreamingOverlapAdd]] = {}
        # audio-separator's algorithms (sepcli.dsp.ensemble), exact over the stream
        self.algorithms: dict[int, tuple[list[int], StreamingEnsemble]] = {}
        for k, mode in enumerate(modes):
            if mode == "mean":
                continue
            members = [i for i, u in enumerate(units) if float(u.gains[k]) > 0]
            if mode in ENSEMBLE_ALGORITHMS:
                gains = torch.tensor([float(units[i].gains[k]) for i in members])
                self.algorithms[k] = (members, StreamingEnsemble(mode, gains))
                continue
            width = len(members) * channels

            def fn(batch: Tensor, mode: str = mode, m: int = len(members)) -> Tensor:
                est = batch.reshape(batch.shape[0], m, channels, batch.shape[-1])
                out = spectral_blend(est, mode, SPECTRAL_BLEND_FFT, SPECTRAL_BLEND_HOP)
                return out.repeat(1, m, 1)[:, None]  # the engine keeps the input's width

            engine = StreamingOverlapAdd(
                fn,
                channels=width,
                num_sources=1,
                segment=int(10 * sample_rate),
                overlap=0.05,
                context=SPECTRAL_BLEND_FFT,
                min_length=SPECTRAL_BLEND_FFT,
            )
            self.spectral[k] = (members, engine)

    def push(self, parts: list[np.ndarray]) -> None:
        """One ``(K * C, n)`` block per unit, all of the same length."""
        n = parts[0].shape[-1]
        if n == 0:
            return
        per_unit = [p.reshape(len(self.modes), self.channels, n) for p in parts]
        for k, mode in enumerate(self.modes):
            if mode == "mean":
                y = sum(
                    float(u.gains[k]) * est[k] for u, est in zip(self.units, per_unit, strict=True)
                )
                self.ready[k].put(np.asarray(y, dtype=np.float32))
            elif k in self.algorithms:
                members, blender = self.algorithms[k]
                stacked = np.stack([per_unit[i][k] for i in members])
                self.ready[k].put(blender.push(_as_tensor(stacked)).numpy())
            else:
                members, engine = self.spectral[k]
                stacked = np.concatenate([per_unit[i][k] for i in members], axis=0)
                self.ready[k].put(engine.push(_as_tensor(stacked))[0, : self.channels].numpy())

    def finish(self) -> None:
        for k, (_, engine) in self.spectral.items():
            self.ready[k].put(engine.finish()[0, : self.channels].numpy())
        for k, (_, blender) in self.algorithms.items():
            self.ready[k].put(blender.finish().reshape(self.channels, -1).numpy())

    @property
    def length(self) -> int:
        return min(f.length for f in self.ready)

    def take(self, n: int) -> np.ndarray:
        """``(K, C, n)``."""
        return np.stack([f.take(n) for f in self.ready])


class Separator:
    """Separate audio with a model archive.

    Args:
        model: a loaded :class:`~sepcli.models.archive.Archive` or the path of an
            archive file (model names are resolved by :func:`sepcli.hub.load_model`).
        config: how to run it (:class:`~sepcli.inference.config.SeparatorConfig`;
            default: the archive's recommendations).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
            (:func:`~sepcli.inference.device.resolve_device`). On MPS, a step
            whose complex ops are missing there runs on the CPU
            (:func:`~sepcli.inference.device.plan_devices`; see ``devices``).
        **options: fields of :class:`SeparatorConfig` (``segment_seconds=``,
            ``shifts=``...), applied over ``config``.

    A ``Separator`` holds no per-call state: several threads may call
    :meth:`stream`, :meth:`separate` or :meth:`separate_file` on one instance.
    """

    def __init__(
        self,
        model: Archive | str | os.PathLike[str],
        config: SeparatorConfig | None = None,
        *,
        device: str | torch.device = "auto",
        **options: Any,
    ) -> None:
        config = config or SeparatorConfig()
        self.config = config.replace(**options) if options else config
        self.device = resolve_device(device)
        # MPS: load on the CPU first; whether the network can go there depends on it.
        load_on = self.device if self.device.type != "mps" else torch.device("cpu")
        if not isinstance(model, Archive):
            model = load_archive(model, device=load_on)
        self.devices = plan_devices(self.device, *_stft_needs(model))
        archive = model
        if next(archive.module.parameters(), torch.zeros(0)).device != self.devices.model:
            archive = Archive(archive.module.to(self.devices.model), archive.metadata, archive.path)
        if self.devices.model.type == "mps" and not _forward_works(archive):
            cpu = torch.device("cpu")
            self.devices = DevicePlan(cpu, cpu)
            archive = Archive(archive.module.to(cpu), archive.metadata, archive.path)
        self.archive = archive
        self.phase = self.config.phase or archive.metadata.phase
        self.units = self._plan_units()
        batch = self.config.batch_size or auto_batch_size(self.devices.model)
        #: per unit, the largest batch known to fit (lowered on out-of-memory errors)
        self.batch_limits = [BatchLimit(batch) for _ in self.units]
        #: decode ahead and write behind in threads (on by default when a GPU computes)
        self.threads = self.devices.model.type != "cpu"

    # -- properties -------------------------------------------------------
    @property
    def metadata(self) -> ArchiveMetadata:
        return self.archive.metadata

    @property
    def sources(self) -> tuple[str, ...]:
        return self.archive.metadata.sources

    @property
    def sample_rate(self) -> int:
        return self.archive.metadata.sample_rate

    @property
    def blend_modes(self) -> tuple[str, ...]:
        """Per source, how an ensemble combines its members (``mean`` for other models)."""
        config = self.archive.metadata.config
        modes = config.get("modes") if self.archive.metadata.family == "ensemble" else None
        return tuple(modes) if modes else ("mean",) * len(self.sources)

    @property
    def recipe(self) -> Recipe:
        """The chunking recipe of the model (of the first member, for an ensemble)."""
        return self.units[0].recipe

    @property
    def overlap(self) -> float:
        return float(getattr(self.recipe, "overlap", 0.0))

    @property
    def segment_samples(self) -> int:
        return int(getattr(self.recipe, "segment", 0))

    @property
    def context_samples(self) -> int:
        return int(getattr(self.recipe, "context", 0))

    def identity(self) -> dict[str, Any]:
        """What determines this separator's output besides the weights (run records)."""
        config = self.config.to_dict()
        del config["batch_size"]  # chunks per forward pass: speed, not output
        return {
            **config,
            "phase": self.phase,
            "units": [{"name": u.name, **u.recipe.describe()} for u in self.units],
        }

    def stems(self, requested: Sequence[str] | None = None) -> list[StemRecipe]:
        """Recipes for ``requested`` stems (raises ``UsageError`` for unknown ones)."""
        rule = str(self.archive.metadata.extra.get("accompaniment", "auto"))
        return plan_stems(self.sources, requested, rule)

    # -- the models and their recipes -------------------------------------
    def _plan_units(self) -> list[_Unit]:
        meta = self.archive.metadata
        if meta.family == "ensemble" and hasattr(self.archive.module, "members"):
            members = list(self.archive.module.members.children())
            return [self._member_unit(i, m) for i, m in enumerate(members)]
        return [self._archive_unit()]

    def plan(self, stems: Sequence[str] | None = None) -> StemPlan:
        """How ``stems`` are made, and which source networks run for them.

        A model with one network per source (Open-Unmix: ``forward_sources``)
        run with a phase step that treats sources one by one (mixture phase,
        Griffin-Lim) only runs the networks the stems need; a derived stem is
        then made as the mixture minus the sources it leaves out when that needs
        fewer networks (``accompaniment`` = mixture - vocals instead of drums +
        bass + other). Wiener filtering and MISI need every source's estimate.
        """
        recipes = self.stems(stems)
        everything = StemPlan(recipes, None, None)
        meta = self.archive.metadata
        if len(self.units) != 1 or not hasattr(self.archive.module, "forward_sources"):
            return everything
        direct = {i for r in recipes if r.kind != "sum" for i in r.indices}
        chosen = []
        for r in recipes:
            if r.kind == "sum":
                rest = tuple(i for i in range(meta.num_sources) if i not in r.indices)
                if len(set(rest) - direct) < len(set(r.indices) - direct):
                    r = StemRecipe(r.name, "mix_minus", rest)
            chosen.append(r)
        needed = sorted({i for r in chosen for i in r.indices})
        if len(needed) == meta.num_sources:
            return everything
        if meta.output == "magnitude" and self.phase not in _PER_SOURCE_PHASES:
            note = (
                f"the {self.phase} phase step needs every source, so all {meta.num_sources} "
                f"networks run; --phase mixture runs only the {len(needed)} these stems need"
            )
            return StemPlan(recipes, None, note)
        return StemPlan(chosen, tuple(needed), None)

    def _archive_unit(self, subset: tuple[int, ...] | None = None) -> _Unit:
        """The archive as one unit; ``subset``: only these sources' networks run."""
        meta = self.archive.metadata
        module = self.archive.module
        cfg = self.config
        blend = None
        if subset is not None:
            indices = list(subset)
            blend = torch.zeros(meta.num_sources, len(indices))
            blend[indices, range(len(indices))] = 1.0
            run = functools.partial(module.forward_sources, indices=indices)
        else:
            run = module
        n_fft = meta.stft.n_fft if meta.stft else 0
        hop = meta.stft.hop_length if meta.stft else 0
        out_dev = self.devices.output
        window = hann_window(n_fft, out_dev) if meta.stft else None
        model_dev, precision = self.devices.model, cfg.precision

        def make_fn(generator: torch.Generator) -> Callable[[Tensor], Tensor]:
            def fn(batch: Tensor) -> Tensor:
                with autocast(model_dev, precision):
                    y = run(batch)
                # the output step (phase, inverse STFT) in float32, on the CPU where
                # its complex ops are missing on the device (MPS)
                y, batch = y.to(out_dev), batch.to(out_dev)
                return to_waveform(
                    meta.output,
                    y.to(torch.complex64) if y.is_complex() else y.float(),
                    batch,
                    n_fft,
                    hop,
                    phase=self.phase,
                    wiener_iters=cfg.wiener_iters,
                    # One estimated source: Wiener needs the rest of the mixture as a
                    # residual source, or its single mask would be 1 everywhere.
                    wiener_residual=meta.num_sources == 1,
                    gl_iters=cfg.gl_iters,
                    gl_init=cfg.gl_init,
                    generator=generator,
                    window=window,
                )

            return fn

        recipe = make_recipe(meta, cfg)
        count = meta.num_sources if subset is None else len(subset)
        return _Unit(
            meta.name, make_fn, recipe, meta.sample_rate, count, blend, meta.input_normalization
        )

    def _member_unit(self, index: int, member: Any) -> _Unit:
        """A member of an ensemble archive, with the chunking it recommends."""
        meta = self.archive.metadata
        kind = int(member.kind)
        rate = int(member.model.sample_rate)
        stft_params = None if kind == 0 else StftParams(int(member.n_fft), int(member.hop_length))
        blend = member.blend.detach().float().cpu()
        member_meta = ArchiveMetadata(
            name=f"{meta.name}.member{index}",
            sources=tuple(f"s{j}" for j in range(blend.shape[1])),
            sample_rate=rate,
            audio_channels=meta.audio_channels,
            output="waveform",
            family="member",
            stft=stft_params,
            segment_seconds=float(member.segment),
            context_seconds=float(member.context),
            # archives written before members recorded their own overlap and recipe
            overlap=float(getattr(member, "overlap", meta.overlap)),
            recipe=str(getattr(member, "recipe", "overlap-add")),
            extra=json.loads(str(getattr(member, "extra_json", "{}"))),
        )

        model_dev, precision = self.devices.model, self.config.precision

        def make_fn(generator: torch.Generator) -> Callable[[Tensor], Tensor]:
            if precision == "fp32" and model_dev.type != "cuda":
                return member

            def fn(batch: Tensor) -> Tensor:
                with autocast(model_dev, precision):
                    return member(batch).float()

            return fn

        recipe = make_recipe(member_meta, self.config)
        return _Unit(member_meta.name, make_fn, recipe, rate, blend.shape[1], blend)

    def _units_for(self, plan: StemPlan, needed: list[int]) -> list[_Unit]:
        """The units that run for ``plan``: a subset of an archive's networks, or the
        members of a bag that give at least one of the ``needed`` sources."""
        units = self.units if plan.sources is None else [self._archive_unit(plan.sources)]
        return [u for u in units if u.blend is None or bool(u.blend[needed].any())]

    # -- whole-track input normalisation (MSST's inference.normalize) -----
    @property
    def needs_track_stats(self) -> bool:
        """Whether a unit standardises its input by whole-track statistics
        (``input_normalization``): :meth:`stream` then needs ``track_stats``,
        which :meth:`measure` computes in a first pass over the track."""
        return any(u.normalization is not None for u in self.units)

    def measure(
        self, blocks: Iterable[np.ndarray], sample_rate: int, channels: int
    ) -> dict[int, TrackStats]:
        """The first pass: per model rate of a unit that needs them, the
        :class:`~sepcli.inference.normalize.TrackStats` of the track as that unit
        is fed (the model's channels, resampled to its rate, then the mean over
        channels). ``blocks`` are float32 ``(channels, n)`` at ``sample_rate``, as
        :meth:`stream` takes them; memory does not grow with their number."""
        rates = sorted({u.sample_rate for u in self.units if u.normalization is not None})
        model_channels = self.metadata.audio_channels
        resamplers = {r: audio.StreamResampler(sample_rate, r, model_channels) for r in rates}
        sums = {r: RunningStats() for r in rates}
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[0] != channels:
                raise ValueError(f"expected blocks of shape ({channels}, n), got {block.shape}")
            x = audio.convert_channels(block, model_channels)
            for r in rates:
                sums[r].add(resamplers[r].process(x).mean(axis=0, dtype=np.float64))
        for r in rates:
            sums[r].add(resamplers[r].flush().mean(axis=0, dtype=np.float64))
        return {r: sums[r].stats() for r in rates}

    def _unit_stats(
        self, unit: _Unit, track_stats: Mapping[int, TrackStats] | TrackStats | None, where: str
    ) -> TrackStats | None:
        if unit.normalization is None:
            return None
        if track_stats is None:
            raise stream_refusal(self.metadata.name)
        if isinstance(track_stats, TrackStats):
            stats = track_stats
        elif unit.sample_rate in track_stats:
            stats = track_stats[unit.sample_rate]
        else:
            raise UsageError(
                f"no track statistics at {unit.sample_rate} Hz, the rate model "
                f"{self.metadata.name!r} runs at (Separator.measure gives them)"
            )
        if not stats.usable:
            raise constant_track(where, self.metadata.name)
        return stats

    def count_chunks(
        self, frames: int, sample_rate: int, stems: Sequence[str] | None = None
    ) -> int:
        """Number of chunks the models will run for ``frames`` input samples and ``stems``."""
        plan = self.plan(stems)
        needed = sorted({i for r in plan.recipes for i in r.indices})
        return sum(
            u.recipe.count_chunks(int(math.ceil(frames * u.sample_rate / sample_rate)))
            for u in self._units_for(plan, needed)
        )

    # -- streaming core -----------------------------------------------------
    def stream(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate: int,
        channels: int,
        stems: Sequence[str] | None = None,
        out_channels: int | None = None,
        on_chunk: Callable[[int], None] | None = None,
        track_stats: Mapping[int, TrackStats] | TrackStats | None = None,
        where: str = "input",
    ) -> Iterator[dict[str, np.ndarray]]:
        """Separate a stream of input blocks.

        Args:
            blocks: float32 arrays ``(channels, n)`` at ``sample_rate``.
            sample_rate: input rate in Hz.
            channels: input channels.
            stems: stem names (``None`` = the model's sources).
            out_channels: channels of the output stems (default: the input's,
                or the model's for inputs with more than 2 channels).
            on_chunk: called with the number of chunks processed each time.
            track_stats: for a model with ``input_normalization``
                (:attr:`needs_track_stats`): the whole track's statistics per model
                rate, from :meth:`measure` over the same blocks (or one
                :class:`~sepcli.inference.normalize.TrackStats` for every rate).
                Without them such a model is refused (:class:`UsageError`): a
                stream cannot know them before it ends.
            where: the input's name in errors.

        Yields:
            dicts stem -> float32 ``(out_channels, m)``; concatenated, each stem
            has exactly as many samples as the input.
        """
        meta = self.archive.metadata
        plan = self.plan(stems)
        recipes = plan.recipes
        needed = sorted({i for r in recipes for i in r.indices})
        plan_units = self._units_for(plan, needed)
        model_channels = meta.audio_channels
        if channels < 1:
            raise UsageError("input has no channels")
        if channels > 2:
            log.warning(
                "input has %d channels; downmixing to %d for the model", channels, model_channels
            )
        if out_channels is None:
            out_channels = channels if channels <= 2 else model_channels
        use_mix = any(r.kind == "mix_minus" for r in recipes)
        # Random phase initialisation is seeded, so a run is reproducible.
        generator = torch.Generator(device=self.devices.output).manual_seed(self.config.seed)
        # a subset of an archive's networks shares the archive's batch limit (same name)
        limits = {u.name: lim for u, lim in zip(self.units, self.batch_limits, strict=True)}
        trim = HeapTrimmer()

        def chunk_done(n: int) -> None:
            trim()  # a long track must not creep up through heap fragmentation
            if on_chunk is not None:
                on_chunk(n)

        units = [
            _UnitStream(
                u,
                u.recipe.engine(
                    OomSafeFn(u.make_fn(generator), limit),
                    model_channels,
                    u.num_sources,
                    batch_size=limit.size,
                    device=self.devices.model,
                    on_chunk=chunk_done,
                ),
                sample_rate,
                model_channels,
                needed,
                self._unit_stats(u, track_stats, where),
            )
            for u in plan_units
            for limit in (limits[u.name],)
        ]
        pending: list[_Fifo] = [_Fifo(len(needed) * model_channels) for _ in units]
        combiner = _Combiner(
            units, [self.blend_modes[i] for i in needed], model_channels, sample_rate
        )
        mix_fifo = _Fifo(out_channels)
        frames_in = 0
        frames_out = 0

        def combine(n: int) -> None:
            if n > 0:
                combiner.push([fifo.take(n) for fifo in pending])

        def finish_block(n: int) -> dict[str, np.ndarray] | None:
            nonlocal frames_out
            if n == 0:
                return None
            per_source = combiner.take(n)
            src = {
                idx: audio.convert_channels(per_source[k], out_channels)
                for k, idx in enumerate(needed)
            }
            mix = mix_fifo.take(n) if use_mix else None
            result: dict[str, np.ndarray] = {}
            for r in recipes:
                if r.kind == "source":
                    y = src[r.indices[0]]
                else:
                    y = np.sum([src[i] for i in r.indices], axis=0)
                    if r.kind == "mix_minus":
                        assert mix is not None
                        y = mix - y
                result[r.name] = np.ascontiguousarray(y, dtype=np.float32)
            frames_out += n
            return result

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[0] != channels:
                raise ValueError(f"expected blocks of shape ({channels}, n), got {block.shape}")
            if block.shape[-1] == 0:
                continue
            frames_in += block.shape[-1]
            if use_mix:
                mix_fifo.put(audio.convert_channels(block, out_channels))
            x = audio.convert_channels(block, model_channels)
            for unit, fifo in zip(units, pending, strict=True):
                fifo.put(unit.push(x))
            combine(min(f.length for f in pending))
            done = finish_block(combiner.length)
            if done:
                yield done
        for unit, fifo in zip(units, pending, strict=True):
            fifo.put(unit.finish(frames_in))
        combine(min(f.length for f in pending))
        combiner.finish()
        done = finish_block(frames_in - frames_out)
        if done:
            yield done
        if frames_out != frames_in:
            raise AssertionError(
                f"separator produced {frames_out} samples for {frames_in} input samples"
            )

    # -- in memory ----------------------------------------------------------
    def separate(
        self,
        mix: np.ndarray | Tensor,
        sample_rate: int,
        stems: Sequence[str] | None = None,
        out_channels: int | None = None,
    ) -> dict[str, Tensor]:
        """Separate a whole track held in memory.

        Args:
            mix: ``(channel, time)`` (or ``(time,)`` for mono) float waveform.
            sample_rate: its rate in Hz.
            stems: stem names (``None`` = the model's sources).

        Returns:
            stem -> float32 tensor ``(channel, time)`` at ``sample_rate``.
        """
        if isinstance(mix, Tensor):
            mix = mix.detach().cpu().numpy()
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim == 1:
            mix = mix[None]
        if mix.ndim != 2:
            raise UsageError(f"expected a (channel, time) waveform, got shape {mix.shape}")
        block = max(1, int(BLOCK_SECONDS * sample_rate))

        def blocks() -> Iterator[np.ndarray]:
            return (mix[:, i : i + block] for i in range(0, mix.shape[-1], block))

        stats = None
        if self.needs_track_stats:  # MSST's inference.normalize: a first pass for its figures
            stats = self.measure(blocks(), sample_rate, mix.shape[0])
        parts: dict[str, list[np.ndarray]] = {}
        for out in self.stream(
            blocks(), sample_rate, mix.shape[0], stems, out_channels, track_stats=stats
        ):
            for name, y in out.items():
                parts.setdefault(name, []).append(y)
        names = [r.name for r in self.stems(stems)]
        oc = out_channels or (mix.shape[0] if mix.shape[0] <= 2 else self.metadata.audio_channels)
        return {
            n: torch.from_numpy(np.concatenate(parts[n], axis=-1))
            if n in parts
            else torch.zeros(oc, 0)
            for n in names
        }

    # -- files --------------------------------------------------------------
    def separate_file(
        self,
        path: str | os.PathLike[str],
        outputs: Mapping[str, str | os.PathLike[str]],
        *,
        format: str | None = None,
        bit_depth: int | None = 16,
        clip: str = "rescale",
        out_channels: int | None = None,
        on_progress: ProgressFn | None = None,
        allow_truncated: bool = False,
        mp3_bitrate: int | None = None,
        mp3_vbr: int | None = None,
    ) -> FileResult:
        """Separate one file and write each stem to ``outputs[stem]``.

        Outputs are written to temporary files and renamed only when every stem
        is complete; on any error (or Ctrl-C) no output file is left behind and
        existing files are untouched. ``bit_depth=None`` follows the input
        (24-bit in, 24-bit out; 16 for lossy input). With ``allow_truncated`` an
        input cut short is separated as far as it decodes, and
        ``result.extra["missing_seconds"]`` says how much was missing.
        ``mp3_bitrate`` (constant, kb/s) or ``mp3_vbr`` (LAME ``-V`` 0-9) set
        the MP3 encoder. A model with ``input_normalization`` reads the file
        twice (:meth:`measure`, then the separation). ``on_progress`` gets :class:`~sepcli.progress.Progress`
        events (task ``separate``, unit ``chunks``, item the file name).
        """
        path = Path(path)
        started = time.perf_counter()
        stems = list(outputs)
        self.stems(stems)  # unknown stems fail before decoding
        stats = None
        if self.needs_track_stats:  # a first pass over the file: its mean and std
            if path.exists() and not path.is_file():  # a FIFO or device: no second pass
                raise stream_refusal(self.metadata.name)
            with audio.open_audio(path, allow_truncated=allow_truncated) as reader:
                info = reader.info
                block = max(1, int(BLOCK_SECONDS * info.sample_rate))
                stats = self.measure(reader.blocks(block), info.sample_rate, info.channels)
        with audio.open_audio(path, allow_truncated=allow_truncated) as reader:
            info = reader.info
            block = max(1, int(BLOCK_SECONDS * info.sample_rate))
            total_chunks = (
                self.count_chunks(info.frames, info.sample_rate, stems) if info.frames else 0
            )
            done_chunks = 0

            def on_chunk(n: int) -> None:
                nonlocal done_chunks
                done_chunks += n
                if on_progress is not None:
                    total = max(total_chunks, done_chunks)
                    on_progress(Progress("separate", done_chunks, total, "chunks", path.name))

            oc = out_channels or (
                info.channels if info.channels <= 2 else self.metadata.audio_channels
            )
            writers: dict[str, audio.AudioWriter] = {}
            frames = 0

            def write(out: dict[str, np.ndarray]) -> None:
                for stem, y in out.items():
                    writers[stem].write(y)

            # With a GPU computing, decoding and writing run in threads beside it.
            blocks: Iterable[np.ndarray] = reader.blocks(block)
            prefetch = Prefetch(blocks, PREFETCH_BLOCKS) if self.threads else None
            behind = WriteBehind(write, PREFETCH_BLOCKS) if self.threads else None
            try:
                for stem in stems:
                    writers[stem] = audio.AudioWriter(
                        outputs[stem],
                        info.sample_rate,
                        oc,
                        format=format,
                        bit_depth=audio.output_bit_depth(
                            bit_depth, info.bit_depth, audio.output_format(outputs[stem], format)
                        ),
                        clip=clip,
                        mp3_bitrate=mp3_bitrate,
                        mp3_vbr=mp3_vbr,
                    )
                for out in self.stream(
                    prefetch if prefetch is not None else blocks,
                    info.sample_rate,
                    info.channels,
                    stems,
                    oc,
                    on_chunk,
                    track_stats=stats,
                    where=str(path),
                ):
                    if behind is not None:
                        behind.put(out)
                    else:
                        write(out)
                    frames += next(iter(out.values())).shape[-1]
                if behind is not None:
                    behind.finish()
                if frames == 0:
                    raise AudioDecodeError(f"{path}: no audio samples")
                for w in writers.values():  # encode every stem first, so the renames
                    w.prepare()  # publish all of them or (on error) none
                written = {stem: writers[stem].commit() for stem in stems}
            except BaseException:
                # stop the threads first: nothing may write into an aborted output
                for thread in (behind, prefetch):
                    if thread is not None:
                        thread.close()
                for w in writers.values():
                    w.abort()
                raise
            finally:
                if prefetch is not None:
                    prefetch.close()  # before the reader closes
        extra: dict[str, float] = {}
        if reader.missing_frames:
            extra["missing_seconds"] = reader.missing_frames / info.sample_rate
        return FileResult(
            input=path,
            outputs=written,
            duration=frames / info.sample_rate,
            seconds=time.perf_counter() - started,
            sample_rate=info.sample_rate,
            channels=oc,
            extra=extra,
        )
