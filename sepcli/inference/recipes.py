"""Chunking recipes: how a track is cut into the chunks a model sees, and blended back.

A model archive names its recipe (``metadata.recipe``, one of
:data:`sepcli.dsp.CHUNKING_RECIPES`); :func:`make_recipe` turns the archive's
metadata and the user's :class:`~sepcli.inference.config.SeparatorConfig` into
a :class:`Recipe`, whose :meth:`Recipe.engine` gives a streaming
:class:`ChunkEngine`. The separator runs every model (and every member of an
ensemble) through its own recipe, so a bag can mix families whose published
chunking differs.

* ``overlap-add`` — sepcli's own: chunks of ``segment`` samples that see
  ``context`` samples of real audio on each side, blended with a trapezoid
  crossfade (:class:`sepcli.inference.chunking.StreamingOverlapAdd`). A track
  no longer than one chunk is run once at its own length.

Lengths here are in samples at the model's rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.chunking import StreamingOverlapAdd, plan_chunks, shift_offsets
from sepcli.inference.config import SeparatorConfig
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "ChunkEngine",
    "Recipe",
    "OverlapAddRecipe",
    "RECIPES",
    "register_recipe",
    "make_recipe",
    "MAX_SHIFT_SECONDS",
]

#: Largest random time shift, as in Demucs (seconds).
MAX_SHIFT_SECONDS = 0.5

#: ``fn(batch (B, C, L)) -> (B, S, C, L)`` waveforms: a model with its output step.
ModelFn = Callable[[Tensor], Tensor]


class ChunkEngine(Protocol):
    """Streaming chunked inference: blocks ``(channel, n)`` in, final outputs
    ``(source, channel, m)`` out, in order; concatenated, the outputs have exactly
    as many samples as were pushed."""

    def push(self, block: Tensor) -> Tensor: ...

    def finish(self) -> Tensor: ...


class Recipe(Protocol):
    """A chunking recipe with its parameters resolved (samples at the model rate)."""

    name: ClassVar[str]

    def engine(
        self,
        fn: ModelFn,
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> ChunkEngine: ...

    def count_chunks(self, length: int) -> int:
        """How many chunks the model runs for a track of ``length`` samples."""
        ...

    def describe(self) -> dict[str, Any]:
        """The resolved parameters (recorded with evaluation results)."""
        ...


@dataclass(frozen=True)
class OverlapAddRecipe:
    """sepcli's own chunking (see the module docstring).

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

    def engine(
        self,
        fn: ModelFn,
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> StreamingOverlapAdd:
        return StreamingOverlapAdd(
            fn,
            channels=channels,
            num_sources=num_sources,
            segment=self.segment,
            overlap=self.overlap,
            context=self.context,
            offsets=self.offsets,
            batch_size=batch_size,
            device=device,
            on_chunk=on_chunk,
            min_length=self.min_length,
        )

    def count_chunks(self, length: int) -> int:
        if 0 < length <= self.segment:
            return 1  # run once at the track's own length
        return sum(len(plan_chunks(length, self.segment, self.overlap, o)) for o in self.offsets)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "segment_samples": self.segment,
            "overlap": self.overlap,
            "context_samples": self.context,
            "offsets": list(self.offsets),
        }


#: recipe name -> ``from_metadata(meta, config)`` factory.
RECIPES: dict[str, Callable[[ArchiveMetadata, SeparatorConfig], Recipe]] = {
    OverlapAddRecipe.name: OverlapAddRecipe.from_metadata,
}


def register_recipe(
    name: str, factory: Callable[[ArchiveMetadata, SeparatorConfig], Recipe]
) -> None:
    """Add a recipe (its module calls this on import; see :func:`make_recipe`)."""
    RECIPES[name] = factory


#: recipes whose code lives in their own module, imported on first use.
_RECIPE_MODULES: dict[str, str] = {
    "demucs": "sepcli.inference.demucs_recipe",
    "mdxc": "sepcli.inference.mdxc_recipe",
    "msst": "sepcli.inference.msst_recipe",
}


def make_recipe(meta: ArchiveMetadata, config: SeparatorConfig) -> Recipe:
    """The recipe ``meta.recipe`` with the archive's recommendations and ``config``'s overrides."""
    if meta.recipe not in RECIPES and meta.recipe in _RECIPE_MODULES:
        import importlib

        importlib.import_module(_RECIPE_MODULES[meta.recipe])
    factory = RECIPES.get(meta.recipe)
    if factory is None:
        raise UsageError(f"model {meta.name!r} asks for chunking recipe {meta.recipe!r}, "
                         f"which this sepcli does not have")  # fmt: skip
    return factory(meta, config)
