"""The MDXC chunking recipe: how UVR / audio-separator run RoFormer and MDX23C models.

Reproduces ``MDXCSeparator.demix`` of ``audio-separator`` 0.47.1 (the MDXC path,
``architectures/mdxc_separator.py``), which has two branches:

``"roformer"`` (BS-RoFormer, Mel-Band RoFormer)
    Chunks of ``chunk`` samples start every ``step = chunk // num_overlap``
    samples from 0; the first chunk that would reach the end of the track is
    replaced by one ending exactly at the end (``max(length - chunk, 0)``), so
    nothing is padded and a track shorter than one chunk is run at its own
    length. Each output is weighted by a symmetric Hamming window of ``chunk``
    samples (``scipy.signal.windows.hamming``; truncated for a short chunk),
    summed, and divided by the summed windows.

``"tfc-tdf"`` (MDX23C)
    The track gets ``chunk - step`` zeros in front and ``pad + chunk - step``
    behind, with ``pad = step - (length - chunk) % step``; chunks start every
    ``step`` samples of the padded track (``Tensor.unfold``); outputs are summed
    without a window, divided by ``num_overlap`` and the padding is cropped.

``chunk`` is ``hop_length * (dim_t - 1)`` with the config's ``inference.dim_t``,
``num_overlap`` is ``inference.num_overlap``. Model outputs are used as returned;
only their sum is formed here. (audio-separator also peak-normalises the input
and output files and, for inputs under 10 s, switches to a 256-frame chunk
unless told not to; those steps belong to its file pipeline, not to ``demix``.)

One difference is deliberate: for a RoFormer input shorter than one chunk whose
length is not a multiple of the STFT hop, the reference's inverse STFT stops at
the last whole hop and leaves the final ``length % hop`` samples silent; sepcli's
models return the full length, so those samples carry the model's output.

:class:`MdxcRecipe` gives these chunks to the streaming engine
(:mod:`sepcli.inference.engine`), which returns the same samples from blocks of
input with memory bounded by about two chunks, whatever the track length;
:func:`demix` runs a whole track at once through it. Chunks whose start lies
past the end of the track, which the reference runs and then crops away, are
not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.engine import Chunk, ModelFn, Recipe
from sepcli.inference.recipes import reference_num_overlap, register_recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "MODES",
    "MdxcPlan",
    "MdxcRecipe",
    "hamming_window",
    "roformer_chunk_starts",
    "demix",
]

#: The two branches of audio-separator's MDXC ``demix``.
MODES = ("roformer", "tfc-tdf")


@dataclass(frozen=True)
class MdxcPlan:
    """Chunking parameters.

    Attributes:
        mode: ``"roformer"`` or ``"tfc-tdf"`` (module docstring).
        chunk: samples the model sees per call (fewer only for a RoFormer track
            shorter than one chunk).
        num_overlap: chunks covering each sample; ``step = chunk // num_overlap``.
    """

    mode: str
    chunk: int
    num_overlap: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MDXC mode must be one of {MODES}, got {self.mode!r}")
        if self.chunk < 1:
            raise ValueError("chunk must be >= 1 sample")
        if not 1 <= self.num_overlap <= self.chunk:
            raise ValueError(f"num_overlap must be in [1, chunk={self.chunk}]")

    @property
    def step(self) -> int:
        """Samples between chunk starts, ``chunk // num_overlap``."""
        return self.chunk // self.num_overlap

    @classmethod
    def for_family(cls, family: str, config: object) -> MdxcPlan:
        """The published plan of a ``bs-roformer``, ``mel-roformer`` or ``mdx23c`` config."""
        mode = "tfc-tdf" if family == "mdx23c" else "roformer"
        return cls(mode, int(config.chunk_samples), int(config.num_overlap))  # type: ignore[attr-defined]


def hamming_window(length: int) -> Tensor:
    """Symmetric Hamming window ``0.54 - 0.46 cos(2 pi n / (length - 1))``, float32.

    Equals ``scipy.signal.windows.hamming(length)`` cast to float32.
    """
    if length == 1:
        return torch.ones(1)
    return torch.hamming_window(length, periodic=False, dtype=torch.float64).float()


def roformer_chunk_starts(length: int, chunk: int, step: int) -> list[int]:
    """Chunk starts of the RoFormer branch (regular steps, then one chunk ending at the end)."""
    if length < 0 or chunk < 1 or not 1 <= step <= chunk:
        raise ValueError(f"bad chunk schedule length={length} chunk={chunk} step={step}")
    starts: list[int] = []
    for offset in range(0, length, step):
        if offset + chunk >= length:
            tail = max(length - chunk, 0)
            if not starts or starts[-1] != tail:
                starts.append(tail)
            break
        starts.append(offset)
    return starts


def demix(model: ModelFn, mix: Tensor, plan: MdxcPlan, num_sources: int) -> Tensor:
    """Separate a whole track at once.

    Args:
        model: ``(1, channel, n) -> (1, source, channel, n)``.
        mix: ``(channel, length)`` float32.
        plan: the chunking.
        num_sources: stems the model returns.

    Returns:
        ``(source, channel, length)``.
    """
    stream = MdxcRecipe(plan).engine(model, mix.shape[0], num_sources)
    head = stream.push(mix)
    tail = stream.finish()
    return torch.cat([head, tail], dim=-1)


@dataclass(frozen=True)
class MdxcRecipe(Recipe):
    """The ``mdxc`` chunking recipe of :mod:`sepcli.inference.recipes` (module docstring).

    From an archive's metadata: the mode from its family (``mdx23c``:
    ``"tfc-tdf"``, the RoFormers: ``"roformer"``), ``chunk = hop * (dim_t - 1)``
    and ``num_overlap`` from its config. ``--segment`` sets ``dim_t - 1`` to the
    nearest whole number of hops; ``--overlap f`` sets ``num_overlap`` to
    ``round(1 / (1 - f))`` (0.75 -> 4). Shifts and extra context are not part of
    this recipe. Chunks run one per model call, as in the reference.
    """

    name: ClassVar[str] = "mdxc"
    batched: ClassVar[bool] = False
    plan: MdxcPlan

    @classmethod
    def from_metadata(cls, meta: ArchiveMetadata, config: SeparatorConfig) -> MdxcRecipe:
        cfg = dict(meta.config)
        mode = "tfc-tdf" if meta.family == "mdx23c" else "roformer"
        hop = cfg.get("hop_length" if mode == "tfc-tdf" else "stft_hop_length")
        if not isinstance(hop, int) or "dim_t" not in cfg or "num_overlap" not in cfg:
            raise UsageError(
                f"model {meta.name!r} ({meta.family}) has no hop/dim_t/num_overlap in its "
                "config, which the mdxc recipe needs"
            )
        overlap = reference_num_overlap(config, cls.name, int(cfg["num_overlap"]))
        # a RoFormer chunk that is not a whole number of hops is its ``chunk_size``
        chunk = int(cfg.get("chunk_size") or 0) or hop * (int(cfg["dim_t"]) - 1)
        if config.segment_seconds is not None:
            chunk = hop * max(1, round(config.segment_seconds * meta.sample_rate / hop))
        return cls(MdxcPlan(mode, chunk, min(overlap, chunk)))

    @property
    def grid_starts(self) -> tuple[int, ...]:
        # tfc-tdf: the track has chunk - step zeros in front
        return (0,) if self.plan.mode == "roformer" else (self.plan.step - self.plan.chunk,)

    @property
    def stride(self) -> int:
        return self.plan.step

    @property
    def latency_samples(self) -> int:
        # roformer: a chunk is a regular one once the track is known to go on past it
        return self.plan.chunk + (self.plan.mode == "roformer")

    @cached_property
    def weight(self) -> Tensor:
        """Hamming window (roformer) or ones (tfc-tdf: plain sums) of a chunk."""
        chunk = self.plan.chunk
        return hamming_window(chunk) if self.plan.mode == "roformer" else torch.ones(chunk)

    def chunk(self, start: int, received: int, finished: bool) -> Chunk | None:
        plan = self.plan
        if plan.mode == "roformer":
            if start + plan.chunk < received:  # a regular chunk
                return Chunk(start, start, plan.chunk, 0, self.weight)
            if not finished:
                return None
            tail = max(received - plan.chunk, 0)  # the one that ends at the end, unpadded
            n = received - tail
            return Chunk(tail, tail, n, 0, self.weight[:n], last=True)
        if start + plan.chunk <= received:  # a whole chunk of the track is in
            return Chunk(start, start, plan.chunk, 0, self.weight)
        if not finished:
            return None
        # the reference's chunks: Tensor.unfold over the padded track (module docstring)
        pad = plan.step - (received - plan.chunk) % plan.step
        padded = received + pad + 2 * (plan.chunk - plan.step)
        last = (padded - plan.chunk) // plan.step * plan.step + self.grid_starts[0]
        if start >= received or start > last:
            return None
        return Chunk(start, start, plan.chunk, 0, self.weight)

    def reach(self, start: int, received: int) -> tuple[int, int]:
        if self.plan.mode == "roformer":  # the last chunk ends at the track's end
            floor = min(start, received - self.plan.chunk)
            return floor, floor
        return start, start

    def normalise(self, total: Tensor, weight: Tensor) -> Tensor:
        if self.plan.mode == "roformer":
            return total / weight
        return total / self.plan.num_overlap  # as the reference, whatever the coverage

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "mode": self.plan.mode,
            "chunk_samples": self.plan.chunk,
            "num_overlap": self.plan.num_overlap,
        }


register_recipe(MdxcRecipe.name, MdxcRecipe.from_metadata)
