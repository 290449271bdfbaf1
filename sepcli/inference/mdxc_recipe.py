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

:func:`demix` runs a whole track at once (the reference path of the tests);
:class:`MdxcStream` gives the same samples from blocks of input with memory
bounded by about two chunks, whatever the track length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.device import host_to_device
from sepcli.inference.recipes import register_recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "MODES",
    "MdxcPlan",
    "MdxcRecipe",
    "hamming_window",
    "roformer_chunk_starts",
    "demix",
    "MdxcStream",
]

#: The two branches of audio-separator's MDXC ``demix``.
MODES = ("roformer", "tfc-tdf")

#: ``model(mix (1, channel, n)) -> (1, source, channel, n)``.
ModelFn = Callable[[Tensor], Tensor]


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

    def count_chunks(self, length: int) -> int:
        """Model calls for a track of ``length`` samples."""
        if length <= 0:
            return 0
        if self.mode == "roformer":
            return len(roformer_chunk_starts(length, self.chunk, self.step))
        pad = self.step - (length - self.chunk) % self.step
        padded = length + pad + 2 * (self.chunk - self.step)
        return (padded - self.chunk) // self.step + 1


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
    stream = MdxcStream(model, plan, num_sources, mix.shape[0])
    head = stream.push(mix)
    tail = stream.finish()
    return torch.cat([head, tail], dim=-1)


class MdxcStream:
    """:func:`demix` fed with blocks: :meth:`push` returns every sample that no later
    chunk can change, :meth:`finish` the rest.

    Memory holds at most about ``2 * chunk`` samples of input and output besides
    the block being pushed, independent of the track length. The outputs
    concatenated equal :func:`demix` on the whole track (the same chunks, the
    same sums, in the same order).
    """

    def __init__(
        self,
        model: ModelFn,
        plan: MdxcPlan,
        num_sources: int,
        channels: int,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.plan = plan
        self.num_sources = int(num_sources)
        self.channels = int(channels)
        self.device = torch.device(device)
        self.on_chunk = on_chunk
        self._window = hamming_window(plan.chunk) if plan.mode == "roformer" else None
        self._received = 0  # samples pushed so far
        self._input: Tensor | None = None  # input from absolute sample _input_start on
        self._input_start = 0
        # weighted output sums and summed windows (roformer) from absolute sample _emitted on
        self._acc = torch.zeros(self.num_sources, self.channels, 0)
        self._weight = torch.zeros(0)
        self._emitted = 0
        self._next = 0  # next regular chunk start (roformer) or chunk index (tfc-tdf)
        self._last_start: int | None = None
        self._finished = False

    # -- input / output bookkeeping -------------------------------------------------

    def _append(self, block: Tensor) -> None:
        if block.dim() != 2:
            raise ValueError(f"blocks must be (channel, time), got {tuple(block.shape)}")
        if block.shape[0] != self.channels:
            raise ValueError(f"blocks must have {self.channels} channels, got {block.shape[0]}")
        block = block.to(torch.float32)
        if self._input is None:
            self._input = block.clone()
        else:
            self._input = torch.cat([self._input, block], dim=-1)
        self._received += block.shape[-1]

    def _slice(self, start: int, stop: int) -> Tensor:
        """Input samples ``[start, stop)`` (absolute), zeros outside the track."""
        assert self._input is not None
        channels = self._input.shape[0]
        lo, hi = max(start, 0), min(stop, self._received)
        got = self._input[:, lo - self._input_start : hi - self._input_start]
        if lo == start and hi == stop:
            return got
        out = torch.zeros(channels, stop - start)
        if hi > lo:
            out[:, lo - start : hi - start] = got
        return out

    def _drop_input_before(self, start: int) -> None:
        assert self._input is not None
        start = min(max(start, self._input_start), self._received)
        self._input = self._input[:, start - self._input_start :]
        self._input_start = start

    def _accumulate(self, start: int, out: Tensor, weights: Tensor | None) -> None:
        """Add ``out (source, channel, n)`` (times ``weights (n,)``) at absolute ``start``."""
        stop = start + out.shape[-1]
        lo = max(start, 0)
        if out.shape[:2] != self._acc.shape[:2]:
            raise ValueError(
                f"model returned {out.shape[0]} sources x {out.shape[1]} channels, "
                f"expected {self.num_sources} x {self.channels}"
            )
        need = stop - self._emitted
        if need > self._acc.shape[-1]:
            grow = need - self._acc.shape[-1]
            self._acc = torch.cat([self._acc, self._acc.new_zeros(*self._acc.shape[:2], grow)], -1)
            self._weight = torch.cat([self._weight, self._weight.new_zeros(grow)])
        a, b = lo - self._emitted, stop - self._emitted
        part = out[..., lo - start :]
        if weights is None:
            self._acc[..., a:b] += part
        else:
            w = weights[lo - start :]
            self._acc[..., a:b] += part * w
            self._weight[a:b] += w

    def _emit(self, upto: int) -> Tensor:
        """Finished output ``[_emitted, upto)``, normalised, and drop it from memory."""
        upto = min(upto, self._received)
        count = max(upto - self._emitted, 0)
        done = self._acc[..., :count]
        if self.plan.mode == "roformer":
            done = done / self._weight[:count].clamp(min=1e-10)
        else:
            done = done / self.plan.num_overlap
        self._acc = self._acc[..., count:]
        self._weight = self._weight[count:]
        self._emitted += count
        return done

    def _run(self, part: Tensor) -> Tensor:
        """``part (channel, n)`` -> model output ``(source, channel, n)`` on the CPU."""
        with torch.no_grad():  # not inference_mode: scripted graphs that saw autograd fail there
            out = self.model(host_to_device(part.unsqueeze(0), self.device))
        if out.dim() != 4 or out.shape[0] != 1 or out.shape[2] != part.shape[0]:
            raise ValueError(
                f"model returned shape {tuple(out.shape)} for input {(1, *part.shape)}"
            )
        if self.on_chunk is not None:
            self.on_chunk(1)
        return out[0].float().cpu()

    # -- the two branches ---------------------------------------------------------------

    def _roformer_chunk(self, start: int) -> None:
        assert self._window is not None
        part = self._slice(start, min(start + self.plan.chunk, self._received))
        out = self._run(part)
        n = min(part.shape[-1], out.shape[-1], self.plan.chunk)
        self._accumulate(start, out[..., :n], self._window[:n])
        self._last_start = start

    def _tfc_tdf_chunk(self, index: int) -> None:
        start = index * self.plan.step - (self.plan.chunk - self.plan.step)
        out = self._run(self._slice(start, start + self.plan.chunk))
        self._accumulate(start, out, None)

    def push(self, block: Tensor) -> Tensor:
        """Feed ``block (channel, n)``; return the finished output ``(source, channel, k)``."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        self._append(block)
        plan = self.plan
        if plan.mode == "roformer":
            # a chunk at _next is a regular one only if the track goes on past its end
            while self._received > self._next + plan.chunk:
                self._roformer_chunk(self._next)
                self._next += plan.step
            # later chunks start at _next or at (track end - chunk) >= received - chunk
            keep = min(self._next, self._received - plan.chunk)
            out = self._emit(keep)
            self._drop_input_before(keep)
            return out
        pre = plan.chunk - plan.step
        while (self._next + 1) * plan.step <= self._received:
            # chunk k covers track samples [(k + 1) * step - chunk, (k + 1) * step)
            self._tfc_tdf_chunk(self._next)
            self._next += 1
        keep = self._next * plan.step - pre
        out = self._emit(keep)
        self._drop_input_before(keep)
        return out

    def finish(self) -> Tensor:
        """End of the track: run the last chunks and return the rest of the output."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        plan = self.plan
        length = self._received
        if length == 0:
            return self._emit(0)
        if plan.mode == "roformer":
            for offset in range(self._next, length, plan.step):
                if offset + plan.chunk >= length:
                    tail = max(length - plan.chunk, 0)
                    if self._last_start != tail:
                        self._roformer_chunk(tail)
                    break
                self._roformer_chunk(offset)
            return self._emit(length)
        pad = plan.step - (length - plan.chunk) % plan.step
        padded = length + pad + 2 * (plan.chunk - plan.step)
        chunks = (padded - plan.chunk) // plan.step + 1
        for index in range(self._next, chunks):
            self._tfc_tdf_chunk(index)
        self._next = chunks
        return self._emit(length)


@dataclass(frozen=True)
class MdxcRecipe:
    """The ``mdxc`` chunking recipe of :mod:`sepcli.inference.recipes` (module docstring).

    From an archive's metadata: the mode from its family (``mdx23c``:
    ``"tfc-tdf"``, the RoFormers: ``"roformer"``), ``chunk = hop * (dim_t - 1)``
    and ``num_overlap`` from its config. ``--segment`` sets ``dim_t - 1`` to the
    nearest whole number of hops; ``--overlap f`` sets ``num_overlap`` to
    ``round(1 / (1 - f))`` (0.75 -> 4). Shifts and extra context are not part of
    this recipe.
    """

    name: ClassVar[str] = "mdxc"
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
        if config.shifts:
            raise UsageError("--shifts is not part of the mdxc chunking recipe; use --shifts 0")
        if config.context_seconds is not None:
            raise UsageError("--context is not part of the mdxc chunking recipe (chunks abut)")
        # a RoFormer chunk that is not a whole number of hops is its ``chunk_size``
        chunk = int(cfg.get("chunk_size") or 0) or hop * (int(cfg["dim_t"]) - 1)
        if config.segment_seconds is not None:
            chunk = hop * max(1, round(config.segment_seconds * meta.sample_rate / hop))
        overlap = int(cfg["num_overlap"])
        if config.overlap is not None:
            overlap = max(1, round(1.0 / (1.0 - config.overlap)))
        return cls(MdxcPlan(mode, chunk, min(overlap, chunk)))

    def engine(
        self,
        fn: Callable[[Tensor], Tensor],
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> MdxcStream:
        """A :class:`MdxcStream`; chunks run one at a time (``batch_size`` is not used)."""
        return MdxcStream(fn, self.plan, num_sources, channels, device=device, on_chunk=on_chunk)

    def count_chunks(self, length: int) -> int:
        return self.plan.count_chunks(length)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "mode": self.plan.mode,
            "chunk_samples": self.plan.chunk,
            "num_overlap": self.plan.num_overlap,
        }


register_recipe(MdxcRecipe.name, MdxcRecipe.from_metadata)
