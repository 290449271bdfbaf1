"""sepcli's own chunking, overlap-add: its pure pieces and its recipe.

The pieces (after Demucs ``apply.py``, see STYLE.md):

* :func:`plan_chunks` — where chunks start (pure);
* :func:`blend_window` — how much each output sample of a chunk counts (pure);
* :func:`overlap_add` — accumulate ``out += w * y``, ``weight += w``, divide (pure);
* :class:`OverlapAddRecipe` — the ``overlap-add`` recipe: what the streaming
  engine (:mod:`sepcli.inference.engine`) needs to run the same arithmetic block
  by block. Each chunk is given ``context`` samples of real neighbouring audio on
  both sides (zero only beyond the track ends) and only its central ``segment``
  samples are kept. A track no longer than one ``segment`` is run once at its own
  length (zero-padded to ``min_length`` at most): padding it to a whole chunk
  would cost up to a chunk of work and change what a recurrent model sees.

Shifts (Défossez et al., Demucs) are extra chunk grids offset by seeded random
amounts; every grid adds into the same accumulator, so the result is the
weighted mean over grids. Lengths here are in samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.engine import Chunk, ChunkStream, ModelFn, Recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "MAX_SHIFT_SECONDS",
    "chunk_stride",
    "plan_chunks",
    "blend_window",
    "overlap_add",
    "shift_offsets",
    "OverlapAddRecipe",
    "StreamingOverlapAdd",
]

#: Largest random time shift, as in Demucs (seconds).
MAX_SHIFT_SECONDS = 0.5


def chunk_stride(segment: int, overlap: float) -> int:
    """Distance in samples between chunk starts for a given ``overlap`` in [0, 1)."""
    if segment <= 0:
        raise ValueError(f"segment must be positive, got {segment}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(round(segment * (1.0 - overlap))))


def plan_chunks(length: int, segment: int, overlap: float, offset: int = 0) -> list[int]:
    """Start positions of the chunks covering ``[0, length)``.

    Chunk ``k`` covers ``[start_k, start_k + segment)`` with
    ``start_k = k * stride - offset``; starts go on while ``start < length``, so
    every sample of the track is inside at least one chunk. ``offset`` in
    ``[0, segment)`` shifts the grid left (used for random shifts).
    """
    if length < 0:
        raise ValueError("length must be >= 0")
    if not 0 <= offset < max(segment, 1):
        raise ValueError(f"offset must be in [0, segment), got {offset}")
    stride = chunk_stride(segment, overlap)
    return list(range(-offset, max(length, 1), stride))


def blend_window(segment: int, overlap: float, power: float = 1.0) -> Tensor:
    """Weight of each sample of a chunk when chunks are overlap-added.

    A trapezoid: flat in the middle, with linear ramps (raised to ``power``) over
    the ``segment - stride`` samples that neighbouring chunks share. Every value
    is strictly positive, so a sample covered by one chunk only is still
    reconstructed exactly. With ``overlap == 0`` the window is all ones.

    Returns:
        float32 tensor of shape ``(segment,)``.
    """
    stride = chunk_stride(segment, overlap)
    ramp = min(segment - stride, segment // 2)
    window = torch.ones(segment, dtype=torch.float32)
    if ramp > 0:
        up = (torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)) ** power
        window[:ramp] = up
        window[segment - ramp :] = up.flip(0)
    return window


def overlap_add(
    chunks: Sequence[Tensor], starts: Sequence[int], length: int, window: Tensor
) -> Tensor:
    """Blend chunk outputs ``(..., segment)`` placed at ``starts`` into ``(..., length)``.

    Pure reference implementation (whole track in memory); the streaming engine
    computes the same thing block by block.
    """
    if len(chunks) != len(starts) or not chunks:
        raise ValueError("need one start per chunk and at least one chunk")
    segment = window.shape[0]
    lead = chunks[0].shape[:-1]
    out = torch.zeros(*lead, length, dtype=chunks[0].dtype)
    weight = torch.zeros(length, dtype=torch.float32)
    for y, start in zip(chunks, starts, strict=True):
        lo, hi = max(start, 0), min(start + segment, length)
        if hi <= lo:
            continue
        w = window[lo - start : hi - start]
        out[..., lo:hi] += y[..., lo - start : hi - start] * w
        weight[lo:hi] += w
    if length and bool((weight <= 0).any()):
        raise AssertionError("overlap_add: some samples are not covered by any chunk")
    return out / weight.clamp_min(torch.finfo(torch.float32).tiny)


def shift_offsets(shifts: int, max_shift: int, seed: int) -> list[int]:
    """Grid offsets for ``shifts`` random time shifts (0 shifts = one grid at 0).

    Offsets are drawn uniformly in ``[0, max_shift)`` from a generator seeded
    with ``seed``, so a run is reproducible.
    """
    if shifts < 0:
        raise ValueError("shifts must be >= 0")
    if shifts == 0 or max_shift <= 1:
        return [0] * max(shifts, 1)
    gen = torch.Generator().manual_seed(seed)
    return [int(v) for v in torch.randint(0, max_shift, (shifts,), generator=gen)]


@dataclass(frozen=True)
class OverlapAddRecipe(Recipe):
    """The ``overlap-add`` recipe (module docstring).

    Attributes:
        segment: samples kept from each chunk.
        overlap: fraction of ``segment`` shared with the next chunk.
        context: samples of real audio each chunk sees on both sides.
        offsets: one chunk grid per random time shift (``(0,)`` = no shifts).
        min_length: shortest input the model accepts (an STFT window).
    """

    name: ClassVar[str] = "overlap-add"
    segment: int
    overlap: float = 0.25
    context: int = 0
    offsets: tuple[int, ...] = (0,)
    min_length: int = 1

    def __post_init__(self) -> None:
        chunk_stride(self.segment, self.overlap)  # validates both
        if self.context < 0:
            raise ValueError("context must be >= 0")
        for o in self.offsets:
            if not 0 <= o < self.segment:
                raise ValueError(f"offset {o} not in [0, segment)")

    @classmethod
    def from_metadata(cls, meta: ArchiveMetadata, config: SeparatorConfig) -> OverlapAddRecipe:
        rate = meta.sample_rate
        seconds = meta.segment_seconds if config.segment_seconds is None else config.segment_seconds
        segment = max(1, int(round(seconds * rate)))
        if meta.stft is not None and segment < meta.stft.n_fft:
            raise UsageError(
                f"segment {seconds:g}s is shorter than the model's STFT window "
                f"({meta.stft.n_fft / rate:.3f}s)"
            )
        overlap = meta.overlap if config.overlap is None else config.overlap
        if config.context_seconds is None:
            context = int(round(meta.context_seconds * rate))
            if meta.stft is not None:
                context = max(context, meta.stft.n_fft)
        else:
            context = int(round(config.context_seconds * rate))
        max_shift = min(int(MAX_SHIFT_SECONDS * rate), segment)
        offsets = tuple(shift_offsets(config.shifts, max_shift, config.seed))
        min_length = meta.stft.n_fft if meta.stft is not None else 1
        return cls(segment, overlap, context, offsets, min_length)

    @property
    def grid_starts(self) -> tuple[int, ...]:
        return tuple(-o for o in self.offsets)

    @property
    def stride(self) -> int:
        return chunk_stride(self.segment, self.overlap)

    @property
    def latency_samples(self) -> int:
        # a chunk needs its context ahead; nothing runs before the track is known
        # to be longer than one segment (a shorter one runs whole at the end)
        return max(self.segment + self.context, self.segment + 1)

    @cached_property
    def window(self) -> Tensor:
        """:func:`blend_window` of the segment."""
        return blend_window(self.segment, self.overlap)

    def chunk(self, start: int, received: int, finished: bool) -> Chunk | None:
        if finished and 0 < received <= self.segment:  # the whole track, once
            whole = max(received, self.min_length)
            return Chunk(0, 0, whole, 0, torch.ones(received), last=True)
        if finished:
            if start >= received:
                return None
        elif received <= self.segment or start + self.segment + self.context > received:
            return None
        return Chunk(
            start, start - self.context, self.segment + 2 * self.context, self.context, self.window
        )

    def reach(self, start: int, received: int) -> tuple[int, int]:
        return start, start - self.context

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "segment_samples": self.segment,
            "overlap": self.overlap,
            "context_samples": self.context,
            "offsets": list(self.offsets),
        }


class StreamingOverlapAdd(ChunkStream):
    """The engine with an :class:`OverlapAddRecipe`, from its parameters.

    ``fn`` maps ``(batch, channel, context + segment + context)`` to
    ``(batch, source, channel, same length)``; see :class:`ChunkStream`.
    """

    def __init__(
        self,
        fn: ModelFn,
        channels: int,
        num_sources: int,
        segment: int,
        overlap: float = 0.25,
        context: int = 0,
        offsets: Sequence[int] = (0,),
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
        min_length: int = 1,
    ) -> None:
        recipe = OverlapAddRecipe(segment, overlap, context, tuple(offsets), max(1, min_length))
        super().__init__(
            fn,
            recipe,
            channels,
            num_sources,
            batch_size=batch_size,
            device=device,
            on_chunk=on_chunk,
        )
