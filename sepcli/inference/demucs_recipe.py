"""Demucs' chunking for fixed-segment models (HT-Demucs), reproduced and streamed.

``demucs.apply.apply_model(model, mix, shifts, split=True, overlap,
transition_power)`` does, for a model with a fixed training segment of
``segment`` samples:

* **Chunk grid.** Chunks start at ``0, stride, 2 stride, ...`` while the start
  is inside the track, ``stride = int((1 - overlap) * segment)``. A chunk covers
  ``L = min(length - start, segment)`` samples.
* **Chunk input** (``TensorChunk.padded``). A full chunk is the track's
  ``[start, start + segment)``. A short one (``L < segment``, at the end of the
  track, or the only chunk of a short track) is *centred*: the model sees
  ``[start - d // 2, start - d // 2 + segment)`` with ``d = segment - L``, real
  neighbouring audio where the track has it and zeros beyond its ends; of the
  output, the ``L`` samples ``[d // 2, d // 2 + L)`` are kept.
* **Blend.** A triangle ``w = [1, 2, ..., segment // 2, segment - segment // 2, ..., 1]``
  divided by its maximum and raised to ``transition_power``; a chunk adds
  ``w[:L] * y`` to the output and ``w[:L]`` to the weight sum (the *first* ``L``
  weights, also for a short final chunk); the output is divided by the sum.
* **Shifts.** ``shifts > 0`` repeats the above ``shifts`` times on the track
  delayed by ``max_shift - offset`` zeros, ``offset`` uniform in
  ``[0, max_shift]`` (``max_shift = int(0.5 * sample_rate)``), drops the delay
  from each result and averages them. Demucs draws ``offset`` with Python's
  ``random.randint``; here the offsets are explicit (:func:`draw_shift_offsets`
  draws them from a seed).

:func:`apply_fixed_segment` is the whole-track reference (pure, the track in
memory). :class:`DemucsChunkRecipe` is the ``"demucs"`` entry of
:data:`sepcli.inference.recipes.RECIPES` (archives of the ``htdemucs`` family
name it): the same chunks for the streaming engine
(:mod:`sepcli.inference.engine`), which computes the same output fed block by
block with one weighted mean per shift, keeping about two segments of input
and of output per shift whatever the track length. Lengths are in samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.engine import Chunk, ModelFn, Recipe, run_model
from sepcli.inference.recipes import MAX_SHIFT_SECONDS, register_recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "DemucsRecipe",
    "DemucsChunkRecipe",
    "demucs_stride",
    "demucs_chunk_starts",
    "demucs_weight",
    "chunk_window",
    "draw_shift_offsets",
    "apply_fixed_segment",
    "apply_bag",
]


@dataclass(frozen=True)
class DemucsRecipe:
    """Parameters of Demucs' chunking for one model.

    Attributes:
        segment: the model's fixed input length in samples.
        overlap: fraction of a segment shared by consecutive chunks, in [0, 1).
        transition_power: exponent of the triangle weights (>= 1).
        max_shift: largest random delay in samples for shifts
            (Demucs: ``int(0.5 * sample_rate)``).
    """

    segment: int
    overlap: float = 0.25
    transition_power: float = 1.0
    max_shift: int = 22050

    def __post_init__(self) -> None:
        if self.segment < 1:
            raise ValueError(f"segment must be >= 1 sample, got {self.segment}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.transition_power < 1.0:
            raise ValueError("transition_power must be >= 1 (Demucs: < 1 behaves oddly)")
        if self.max_shift < 0:
            raise ValueError("max_shift must be >= 0")
        if demucs_stride(self.segment, self.overlap) < 1:
            raise ValueError(f"overlap {self.overlap} leaves no stride for segment {self.segment}")

    @classmethod
    def for_model(cls, segment: int, sample_rate: int, overlap: float = 0.25) -> DemucsRecipe:
        """Demucs' defaults for a model: ``max_shift = int(0.5 * sample_rate)``."""
        return cls(segment, overlap, 1.0, int(0.5 * sample_rate))


def demucs_stride(segment: int, overlap: float) -> int:
    """Distance between chunk starts, ``int((1 - overlap) * segment)`` as Demucs computes it."""
    return int((1 - overlap) * segment)


def demucs_chunk_starts(length: int, segment: int, overlap: float) -> list[int]:
    """Chunk starts ``range(0, length, stride)`` (empty for an empty track)."""
    return list(range(0, length, demucs_stride(segment, overlap)))


def demucs_weight(segment: int, transition_power: float = 1.0) -> Tensor:
    """The triangle blend weights ``(segment,)`` float32, maximum 1 (see module docstring)."""
    half = segment // 2
    weight = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)])
    return (weight / weight.max()) ** transition_power


def chunk_window(start: int, length: int, segment: int) -> tuple[int, int]:
    """Where the model input of the chunk at ``start`` begins, and the crop offset.

    Returns:
        ``(input_start, keep_from)``: the model sees ``[input_start, input_start +
        segment)`` of the track (zeros outside it) and its outputs
        ``[keep_from, keep_from + L)`` are the chunk's ``L = min(length - start,
        segment)`` samples.
    """
    kept = min(length - start, segment)
    delta = segment - kept
    return start - delta // 2, delta // 2


def _slice_padded(mix: Tensor, lo: int, hi: int) -> Tensor:
    """``mix[..., lo:hi]`` with zeros where ``[lo, hi)`` leaves ``[0, length)``."""
    length = mix.shape[-1]
    a, b = max(lo, 0), min(hi, length)
    if a == lo and b == hi:
        return mix[..., lo:hi]
    out = mix.new_zeros(mix.shape[:-1] + (hi - lo,))
    if b > a:
        out[..., a - lo : b - lo] = mix[..., a:b]
    return out


def draw_shift_offsets(shifts: int, max_shift: int, seed: int | torch.Generator) -> list[int]:
    """``shifts`` offsets uniform in ``[0, max_shift]`` (both ends, like ``random.randint``)."""
    if shifts < 0:
        raise ValueError("shifts must be >= 0")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    return [int(v) for v in torch.randint(0, max_shift + 1, (shifts,), generator=gen)]


def _delays(recipe: DemucsRecipe, offsets: Sequence[int]) -> list[int]:
    """Delay of each shifted copy of the track (``[0]`` without shifts)."""
    if not offsets:
        return [0]
    for o in offsets:
        if not 0 <= o <= recipe.max_shift:
            raise ValueError(f"shift offset {o} not in [0, {recipe.max_shift}]")
    return [recipe.max_shift - int(o) for o in offsets]


def apply_fixed_segment(
    fn: ModelFn,
    mix: Tensor,
    num_sources: int,
    recipe: DemucsRecipe,
    offsets: Sequence[int] = (),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Whole-track reference of Demucs' ``apply_model(split=True)`` for one model.

    Args:
        fn: the model, ``(batch, channel, segment) -> (batch, source, channel, segment)``.
        mix: the track ``(channel, length)``.
        num_sources: sources ``fn`` returns.
        recipe: segment, overlap, transition power, max shift.
        offsets: one random offset in ``[0, max_shift]`` per shift (empty = shifts 0).
        batch_size: chunks per call of ``fn``.

    Returns:
        ``(source, channel, length)`` float32 on the CPU.
    """
    channels, length = mix.shape
    mix = mix.float().cpu()
    device = torch.device(device)
    seg = recipe.segment
    weight = demucs_weight(seg, recipe.transition_power)
    result = torch.zeros(num_sources, channels, length)
    delays = _delays(recipe, offsets)
    for delay in delays:
        # The delayed track is `delay` zeros then the mix; positions are in mix samples.
        total = length + delay
        out = torch.zeros(num_sources, channels, total)
        wsum = torch.zeros(total)
        starts = demucs_chunk_starts(total, seg, recipe.overlap)
        for i in range(0, len(starts), max(1, batch_size)):
            group = starts[i : i + max(1, batch_size)]
            inputs = []
            for s in group:
                lo, _ = chunk_window(s, total, seg)
                inputs.append(_slice_padded(mix, lo - delay, lo - delay + seg))
            y = run_model(fn, torch.stack(inputs), num_sources, device)
            for k, s in enumerate(group):
                _, keep = chunk_window(s, total, seg)
                kept = min(total - s, seg)
                out[..., s : s + kept] += weight[:kept] * y[k, ..., keep : keep + kept]
                wsum[s : s + kept] += weight[:kept]
        if total and bool((wsum <= 0).any()):
            raise AssertionError("Demucs chunking left samples without weight")
        result += (out / wsum)[..., delay:]
    return result / len(delays) if offsets else result


def apply_bag(
    fns: Sequence[ModelFn],
    weights: Tensor,
    mix: Tensor,
    recipes: Sequence[DemucsRecipe],
    offsets: Sequence[Sequence[int]] | None = None,
    batch_size: int = 1,
) -> Tensor:
    """Whole-track reference of ``apply_model`` on a Demucs ``BagOfModels``.

    Each member runs with its own recipe (and its own shift offsets); stems are
    blended per source: ``sum_m w[m, s] * out_m[s] / sum_m w[m, s]``.

    Args:
        weights: ``(model, source)``.
        offsets: per member, its shift offsets (``None``: no shifts).
    """
    if len(fns) != weights.shape[0] or len(recipes) != len(fns):
        raise ValueError("need one weight row and one recipe per member")
    num_sources = weights.shape[1]
    total = None
    for m, (fn, recipe) in enumerate(zip(fns, recipes, strict=True)):
        out = apply_fixed_segment(
            fn, mix, num_sources, recipe, offsets[m] if offsets else (), batch_size
        )
        out = out * weights[m].float()[:, None, None]
        total = out if total is None else total + out
    assert total is not None
    return total / weights.float().sum(0)[:, None, None]


@dataclass(frozen=True)
class DemucsChunkRecipe(Recipe):
    """The ``"demucs"`` chunking recipe, resolved for one archive (or ensemble member).

    Each shift is a grid of its own with its own weighted mean; the shifts'
    results are averaged (``average_grids``), as ``apply_model`` does.

    Attributes:
        recipe: segment, overlap, transition power and max shift in samples.
        offsets: one random shift offset per ``--shifts`` pass (empty: none).
    """

    name: ClassVar[str] = "demucs"
    average_grids: ClassVar[bool] = True
    recipe: DemucsRecipe
    offsets: tuple[int, ...] = ()

    @property
    def segment(self) -> int:
        return self.recipe.segment

    @property
    def overlap(self) -> float:
        return self.recipe.overlap

    @property
    def context(self) -> int:
        return 0

    @classmethod
    def from_metadata(cls, meta: ArchiveMetadata, config: SeparatorConfig) -> DemucsChunkRecipe:
        """The archive's fixed segment (``extra["chunking"]["segment_samples"]``, else
        ``segment_seconds``) and overlap, with the user's overrides: a shorter
        ``segment_seconds`` (the model zero-pads each chunk to its own, as Demucs'
        ``--segment`` does), ``overlap``, ``shifts`` and ``seed``."""
        rate = meta.sample_rate
        params = meta.extra.get("chunking") if isinstance(meta.extra, Mapping) else None
        params = params if isinstance(params, Mapping) else {}
        own = int(params.get("segment_samples", 0)) or int(round(meta.segment_seconds * rate))
        segment = own
        if config.segment_seconds is not None:
            segment = int(config.segment_seconds * rate)  # as Demucs: int(segment * samplerate)
            if segment > own:
                raise UsageError(
                    f"model {meta.name!r} was trained on {own / rate:g}-s segments and takes at "
                    f"most that; got --segment {config.segment_seconds:g}"
                )
            if segment < 1:
                raise UsageError(f"segment {config.segment_seconds:g}s is shorter than a sample")
        if config.context_seconds is not None:
            logging.getLogger(__name__).warning(
                "%s: the demucs recipe gives chunks no context; ignoring --context", meta.name
            )
        overlap = meta.overlap if config.overlap is None else config.overlap
        power = float(params.get("transition_power", 1.0))
        max_shift = int(MAX_SHIFT_SECONDS * rate)
        offsets = draw_shift_offsets(config.shifts, max_shift, config.seed) if config.shifts else []
        return cls(DemucsRecipe(segment, overlap, power, max_shift), tuple(offsets))

    @property
    def grid_starts(self) -> tuple[int, ...]:
        """One grid per shift, on the track delayed by ``max_shift - offset`` zeros."""
        return tuple(-d for d in _delays(self.recipe, self.offsets))

    @property
    def stride(self) -> int:
        return demucs_stride(self.recipe.segment, self.recipe.overlap)

    @property
    def latency_samples(self) -> int:
        return self.recipe.segment

    @cached_property
    def weight(self) -> Tensor:
        """:func:`demucs_weight` of the recipe."""
        return demucs_weight(self.recipe.segment, self.recipe.transition_power)

    def chunk(self, start: int, received: int, finished: bool) -> Chunk | None:
        seg = self.recipe.segment
        if not finished:  # a full chunk; a short, centred one only at the end
            return Chunk(start, start, seg, 0, self.weight) if start + seg <= received else None
        if start >= received:
            return None
        lo, keep = chunk_window(start, received, seg)
        return Chunk(start, lo, seg, keep, self.weight[: min(received - start, seg)])

    def reach(self, start: int, received: int) -> tuple[int, int]:
        # a short final chunk is centred: its input reaches back up to half a segment
        return start, start - self.recipe.segment // 2 - 1

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "segment_samples": self.recipe.segment,
            "overlap": self.recipe.overlap,
            "transition_power": self.recipe.transition_power,
            "offsets": list(self.offsets),
        }


register_recipe(DemucsChunkRecipe.name, DemucsChunkRecipe.from_metadata)
