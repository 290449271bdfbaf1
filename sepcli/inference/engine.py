"""The streaming engine: one input window and one output accumulator for every recipe.

A chunking recipe (:class:`Recipe`) states only what is its own: where the
chunks of each grid start (``grid_starts``, ``stride``), what a chunk sees, keeps
and how its samples are weighted (:meth:`Recipe.chunk`, a :class:`Chunk`), how
far back a chunk still to come may reach (:meth:`Recipe.reach`), how the
weighted sums become the output (:meth:`Recipe.normalise`), whether random-shift
grids share one weighted mean or are averaged afterwards (``average_grids``),
and how much input it needs ahead of an output sample (``latency_samples``).

:class:`ChunkStream` does the rest, the same way for every recipe:

* an :class:`InputWindow` holds the input from the earliest sample a chunk may
  still read, gives each chunk its samples with zeros beyond the track's ends
  (or the track samples a recipe names one by one, for reflected borders), and
  drops what no chunk needs any more;
* chunks run in order of their start (ties: grid order), ``batch_size`` at a
  time, on ``device``; a recipe's chunk runs as soon as the input it needs is
  there (and it knows the chunk is final), not at the end of the track;
* an :class:`OutputAccumulator` per weighted mean adds ``w * y`` and ``w`` for
  the kept samples of each chunk and emits, divided, every sample that no
  chunk still to come can change, asserting that each got weight.

So memory stays independent of the track length: a few chunks of input and of
output, plus the block being pushed. Lengths are in samples at the model's rate.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from sepcli.inference.device import host_to_device

__all__ = [
    "ModelFn",
    "Chunk",
    "Recipe",
    "ChunkEngine",
    "InputWindow",
    "OutputAccumulator",
    "ChunkStream",
    "run_model",
]

#: ``fn(batch (B, C, L)) -> (B, S, C, L)`` waveforms: a model with its output step.
ModelFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Chunk:
    """One model call, in absolute samples of the track.

    The model sees ``[input_start, input_start + input_length)`` of the track (zeros
    where that leaves the track); its output samples ``[keep, keep + length)`` land
    on the track's ``[at, at + length)`` with weights ``weight (length,)``
    (positions already emitted or past the end of the track are dropped).
    ``last``: no chunk of any grid follows this one. ``positions``: where the model
    input is not one stretch of the track (reflections), the track position of each
    of its ``input_length`` samples, int64 (zero where outside the track); its
    samples must lie in ``[input_start, ...)``.
    """

    at: int
    input_start: int
    input_length: int
    keep: int
    weight: Tensor
    last: bool = False
    positions: Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.weight.shape[0])


class ChunkEngine(Protocol):
    """Streaming chunked inference: blocks ``(channel, n)`` in, final outputs
    ``(source, channel, m)`` out, in order; concatenated, the outputs have exactly
    as many samples as were pushed."""

    def push(self, block: Tensor) -> Tensor: ...

    def finish(self) -> Tensor: ...


class Recipe(ABC):
    """A chunking recipe with its parameters resolved (samples at the model's rate).

    Subclasses (frozen dataclasses) give ``name``, ``grid_starts``, ``stride``,
    :meth:`chunk`, ``latency_samples`` and :meth:`describe`; the rest has defaults.
    The engine and the chunk count come from here, the same for every recipe.
    """

    name: ClassVar[str]
    #: One weighted mean per grid, averaged at the end (Demucs' shifts), instead
    #: of one weighted mean over the chunks of all grids.
    average_grids: ClassVar[bool] = False
    #: Whether several chunks may go to the model in one call.
    batched: ClassVar[bool] = True
    #: Whether an output sample whose weights sum to zero is allowed (every sample
    #: must still be reached by a chunk); :meth:`normalise` then gives its value.
    zero_weights: ClassVar[bool] = False

    @property
    @abstractmethod
    def grid_starts(self) -> tuple[int, ...]:
        """The first chunk start of each grid (one grid per random shift)."""

    @property
    @abstractmethod
    def stride(self) -> int:
        """Samples between consecutive chunk starts of a grid."""

    @property
    @abstractmethod
    def latency_samples(self) -> int:
        """Look-ahead: output sample ``t`` comes out of the ``push`` that brings the
        input to ``t + latency_samples`` samples, at the latest (so the first output
        needs ``latency_samples`` samples of input). The most any sample waits."""

    @abstractmethod
    def chunk(self, start: int, received: int, finished: bool) -> Chunk | None:
        """The chunk of the grid position ``start`` once ``received`` samples are in.

        ``None`` while ``finished`` is false: not yet (its input is not all there, or
        it is not yet known to be final). ``None`` once finished: the grid is done.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The resolved parameters (recorded with evaluation results)."""

    def reach(self, start: int, received: int) -> tuple[int, int]:
        """``(output, input)``: the earliest output and input samples that the chunks
        from grid position ``start`` on may still touch, with ``received`` samples in
        and more to come. Non-decreasing in ``start``. Default: nothing before ``start``."""
        return start, start

    def normalise(self, total: Tensor, weight: Tensor) -> Tensor:
        """Final output from the weighted sums ``total (source, channel, n)`` and the
        summed weights ``weight (n,)`` (all positive); a new tensor. Default: the
        weighted mean ``total / weight``."""
        return total / weight

    def engine(
        self,
        fn: ModelFn,
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> ChunkStream:
        """A :class:`ChunkStream` running ``fn`` through this recipe."""
        return ChunkStream(
            fn,
            self,
            channels,
            num_sources,
            batch_size=batch_size,
            device=device,
            on_chunk=on_chunk,
        )

    def count_chunks(self, length: int) -> int:
        """How many chunks the model runs for a track of ``length`` samples."""
        heap = _grids(self)
        return sum(1 for _ in _schedule(self, heap, length, True))


def _grids(recipe: Recipe) -> list[tuple[int, int]]:
    heap = [(start, grid) for grid, start in enumerate(recipe.grid_starts)]
    heapq.heapify(heap)
    return heap


def _schedule(
    recipe: Recipe, heap: list[tuple[int, int]], received: int, finished: bool
) -> Iterator[tuple[int, Chunk]]:
    """``(grid, chunk)`` for each chunk that can run now, in start order; ``heap``
    (next start, grid) is advanced past each chunk before it is yielded. An empty
    track runs no chunk."""
    if finished and received == 0:
        heap.clear()
    while heap:
        start, grid = heap[0]
        chunk = recipe.chunk(start, received, finished)
        if chunk is None:
            if not finished:
                return
            heapq.heappop(heap)
            continue
        if chunk.last:
            heap.clear()
        else:
            heapq.heapreplace(heap, (start + recipe.stride, grid))
        yield grid, chunk


def run_model(fn: ModelFn, batch: Tensor, num_sources: int, device: torch.device) -> Tensor:
    """``fn(batch (B, C, L))`` on ``device``, checked to be ``(B, num_sources, C, L)``;
    float32 on the CPU."""
    expected = (batch.shape[0], num_sources, *batch.shape[1:])
    batch = host_to_device(batch, device)  # pinned and non-blocking on CUDA
    with torch.no_grad():  # not inference_mode: scripted graphs that saw autograd fail there
        y = fn(batch)
    if tuple(y.shape) != expected:
        raise RuntimeError(
            f"model returned shape {tuple(y.shape)} for input {tuple(batch.shape)}; "
            f"expected {expected}"
        )
    return y.float().cpu()


class InputWindow:
    """The input samples ``[start, end)`` of a track of which ``end`` samples are in."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.start = 0
        self.end = 0
        self._samples = torch.zeros(channels, 0)

    @property
    def held(self) -> int:
        """Samples held in memory."""
        return int(self._samples.shape[-1])

    def append(self, block: Tensor) -> None:
        """Add ``block (channel, n)`` at the end (float32, on the CPU)."""
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(
                f"expected a block of shape ({self.channels}, n), got {tuple(block.shape)}"
            )
        self._samples = torch.cat([self._samples, block.float().cpu()], dim=-1)
        self.end += int(block.shape[-1])

    def read(self, lo: int, length: int) -> Tensor:
        """Samples ``[lo, lo + length)`` ``(channel, length)``, zeros outside ``[0, end)``."""
        hi = lo + length
        a, b = max(lo, 0), min(hi, self.end)
        if b > a and a < self.start:
            raise AssertionError("the input window dropped samples that a chunk still needs")
        if a == lo and b == hi:
            return self._samples[:, lo - self.start : hi - self.start]
        out = torch.zeros(self.channels, length)
        if b > a:
            out[:, a - lo : b - lo] = self._samples[:, a - self.start : b - self.start]
        return out

    def gather(self, positions: Tensor) -> Tensor:
        """Samples at ``positions`` (int64 ``(n,)``) ``(channel, n)``, zeros outside ``[0, end)``."""
        inside = (positions >= 0) & (positions < self.end)
        if bool((positions[inside] < self.start).any()):
            raise AssertionError("the input window dropped samples that a chunk still needs")
        if not self.held:
            return torch.zeros(self.channels, int(positions.shape[0]))
        out = self._samples[:, (positions - self.start).clamp(0, self.held - 1)]
        return torch.where(inside, out, torch.zeros(()))

    def trim(self, keep_from: int) -> None:
        """Drop the samples before ``keep_from``."""
        drop = min(max(keep_from - self.start, 0), self.held)
        if drop:
            self._samples = self._samples[:, drop:]
            self.start += drop


class OutputAccumulator:
    """Weighted sums ``sum w * y`` and summed weights ``sum w`` of chunk outputs for
    the output positions ``[start, ...)`` not yet emitted (after Demucs ``apply.py``)."""

    def __init__(self, num_sources: int, channels: int) -> None:
        self.start = 0
        self._total = torch.zeros(num_sources, channels, 0)
        self._weight = torch.zeros(0)
        self._used = 0  # positions [start, start + used) have contributions

    @property
    def held(self) -> int:
        """Positions of room held in memory."""
        return int(self._weight.shape[0])

    def add(self, at: int, y: Tensor, weight: Tensor, end: int) -> None:
        """Add ``weight * y`` (``y (source, channel, n)``, ``weight (n,)``) at position
        ``at``; positions before ``start`` or from ``end`` on are dropped."""
        lo, hi = max(at, self.start), min(at + int(weight.shape[0]), end)
        if hi <= lo:
            return
        a, b = lo - self.start, hi - self.start
        if b > self.held:
            grown = max(b, 2 * self.held)
            total = self._total.new_zeros(*self._total.shape[:2], grown)
            total[..., : self.held] = self._total
            weights = torch.zeros(grown)
            weights[: self.held] = self._weight
            self._total, self._weight = total, weights
        w = weight[lo - at : hi - at]
        self._total[..., a:b] += y[..., lo - at : hi - at] * w
        self._weight[a:b] += w
        self._used = max(self._used, b)

    def emit(
        self,
        upto: int,
        normalise: Callable[[Tensor, Tensor], Tensor],
        zero_weights: bool = False,
    ) -> Tensor:
        """The finished positions ``[start, upto)`` through ``normalise(total, weight)``;
        every one of them must have got weight (been reached, with ``zero_weights``)."""
        n = upto - self.start
        if n <= 0:
            return self._total.new_zeros(*self._total.shape[:2], 0)
        weight = self._weight[:n]
        if n > self._used or (not zero_weights and bool((weight <= 0).any())):
            raise AssertionError("chunking left output samples without weight")
        out = normalise(self._total[..., :n], weight)
        rest = self._used - n  # what is still accumulating moves to the front
        if rest:
            self._total[..., :rest] = self._total[..., n : self._used].clone()
            self._weight[:rest] = self._weight[n : self._used].clone()
        self._total[..., rest : self._used] = 0
        self._weight[rest : self._used] = 0
        self._used = rest
        self.start = upto
        return out


class ChunkStream:
    """A track fed block by block through ``fn`` in the chunks of ``recipe``.

    Args:
        fn: the model, ``(batch, channel, L) -> (batch, source, channel, L)``.
        recipe: where chunks go and how they blend.
        channels: input channels. num_sources: sources ``fn`` returns.
        batch_size: chunks per call of ``fn`` (1 where the recipe is not ``batched``).
        device: where chunks run; outputs come back on the CPU.
        on_chunk: called with the number of chunks just run.

    :meth:`push` takes ``(channel, n)`` blocks (any size, one sample included),
    :meth:`finish` ends the track; both return the output samples that are
    final, ``(source, channel, m)``, in order. Concatenated, the outputs have
    exactly as many samples as were pushed. See the module docstring.
    """

    def __init__(
        self,
        fn: ModelFn,
        recipe: Recipe,
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.recipe = recipe
        self.channels = channels
        self.num_sources = num_sources
        self.batch_size = max(1, batch_size) if recipe.batched else 1
        self.device = torch.device(device)
        self.on_chunk = on_chunk
        self.window = InputWindow(channels)
        means = len(recipe.grid_starts) if recipe.average_grids else 1
        self.accumulators = [OutputAccumulator(num_sources, channels) for _ in range(means)]
        self._heap = _grids(recipe)
        self._finished = False

    @property
    def latency_samples(self) -> int:
        """The recipe's look-ahead (:attr:`Recipe.latency_samples`)."""
        return self.recipe.latency_samples

    def push(self, block: Tensor) -> Tensor:
        """Add input ``(channel, n)``; returns the final outputs ``(source, channel, m)``."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        self.window.append(block)
        return self._process()

    def finish(self) -> Tensor:
        """End of the track: run the last chunks and return the rest of the output."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        return self._process()

    def run(self, blocks: Iterator[Tensor]) -> Iterator[Tensor]:
        """Yield the outputs for each block, then the tail."""
        for block in blocks:
            out = self.push(block)
            if out.shape[-1]:
                yield out
        tail = self.finish()
        if tail.shape[-1]:
            yield tail

    # -- internals -----------------------------------------------------------
    def _process(self) -> Tensor:
        parts: list[Tensor] = []
        batch: list[tuple[int, Chunk]] = []
        for grid, chunk in _schedule(self.recipe, self._heap, self.window.end, self._finished):
            if batch and batch[0][1].input_length != chunk.input_length:
                self._run(batch)  # no emit here: `chunk` has left the heap but not run
                batch = []
            batch.append((grid, chunk))
            if len(batch) == self.batch_size:
                self._run(batch)
                batch = []
                parts.append(self._emit())
        self._run(batch)
        parts.append(self._emit())
        self.window.trim(self._reach()[1])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _run(self, batch: Sequence[tuple[int, Chunk]]) -> None:
        if not batch:
            return
        x = torch.stack([self._input(c) for _, c in batch])
        y = run_model(self.fn, x, self.num_sources, self.device)
        single = len(self.accumulators) == 1
        for i, (grid, c) in enumerate(batch):
            acc = self.accumulators[0 if single else grid]
            acc.add(c.at, y[i, ..., c.keep : c.keep + c.length], c.weight, self.window.end)
        if self.on_chunk is not None:
            self.on_chunk(len(batch))

    def _input(self, c: Chunk) -> Tensor:
        if c.positions is None:
            return self.window.read(c.input_start, c.input_length)
        return self.window.gather(c.positions)

    def _reach(self) -> tuple[int, int]:
        end = self.window.end
        if not self._heap:
            return end, end
        out, inp = self.recipe.reach(self._heap[0][0], end)
        return min(out, end), inp

    def _emit(self) -> Tensor:
        upto = max(self._reach()[0], self.accumulators[0].start)
        zero = self.recipe.zero_weights
        outs = [acc.emit(upto, self.recipe.normalise, zero) for acc in self.accumulators]
        if len(outs) == 1:
            return outs[0]
        mean = outs[0]
        for out in outs[1:]:
            mean = mean + out
        return mean / len(outs)
