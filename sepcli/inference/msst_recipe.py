"""The MSST chunking recipe: Music-Source-Separation-Training's generic ``demix``.

Reproduces ``utils/model_utils.py::demix`` of ZFTurbo's
Music-Source-Separation-Training (MSST) in its ``generic`` mode (every model type
but ``htdemucs``; what ``inference.py`` runs SCNet with), for a track of
``length`` samples, ``chunk`` samples per model call, ``num_overlap``:

* ``step = chunk // num_overlap``, ``border = chunk - step``,
  ``fade = chunk // 10``.
* **Padding.** If ``length > 2 * border`` and ``border > 0``, the track gets
  ``border`` samples of reflection (``F.pad(mode="reflect")``, the edge sample
  not repeated) on both sides; otherwise none.
* **Chunks** start at ``0, step, 2 step, ...`` while inside the padded track. A
  chunk that runs past its end is padded to ``chunk`` samples by reflecting its
  own samples when it holds more than ``chunk // 2`` of them, else by zeros; of
  its output, the first (real) samples are kept.
* **Window.** Linear fades of ``fade`` samples at both ends
  (``linspace(0, 1, fade)`` and back), ones between. MSST changes it per *batch*
  of ``batch_size`` chunks (``inference.batch_size``): a batch that ends with the
  first chunk gets no fade-in; else the batch that ends with the last chunk gets
  no fade-out — for every chunk in it. The output is ``sum(w * y) / sum(w)``,
  NaN (no weight, the padded track's first sample) as 0, cropped back.

MSST's inference script also normalises the whole track by its mean and
standard deviation when ``inference.normalize`` is true; that needs the whole
track before the first chunk and is not part of ``demix`` (nor of this recipe:
the MSST importer refuses such configs).

:func:`demix` runs a whole track at once (the reference path of the tests);
:class:`MsstStream` gives the same samples (up to float rounding of the sums'
order) from blocks of input, keeping about ``(batch_size + 2)`` chunk steps of
input and output whatever the track length. Lengths are samples at the model's
rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.device import host_to_device
from sepcli.inference.recipes import register_recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = ["MsstPlan", "MsstRecipe", "fade_window", "demix", "MsstStream"]

#: ``model(mix (1, channel, chunk)) -> (1, source, channel, chunk)``.
ModelFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MsstPlan:
    """Chunking parameters of MSST's generic ``demix``.

    Attributes:
        chunk: samples the model sees per call (``audio.chunk_size``).
        num_overlap: chunks covering each sample (``inference.num_overlap``).
        batch_size: MSST's chunks per model call (``inference.batch_size``); only
            the windows depend on it (module docstring), chunks run one at a time.
    """

    chunk: int
    num_overlap: int
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.chunk < 10:
            raise ValueError("chunk must be >= 10 samples (the fade is chunk // 10)")
        if not 1 <= self.num_overlap <= self.chunk:
            raise ValueError(f"num_overlap must be in [1, chunk={self.chunk}]")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def step(self) -> int:
        return self.chunk // self.num_overlap

    @property
    def border(self) -> int:
        """Reflection added at each end of a long enough track, ``chunk - step``."""
        return self.chunk - self.step

    @property
    def fade(self) -> int:
        return self.chunk // 10

    def pads(self, length: int) -> bool:
        """Whether a track of ``length`` samples gets the reflected borders."""
        return length > 2 * self.border and self.border > 0

    def padded_length(self, length: int) -> int:
        return length + 2 * self.border if self.pads(length) else length

    def count_chunks(self, length: int) -> int:
        """Model calls for a track of ``length`` samples."""
        return -(-self.padded_length(length) // self.step) if length > 0 else 0

    def window(self, index: int, count: int) -> Tensor:
        """Window of chunk ``index`` of ``count`` (float32, ``chunk`` samples)."""
        w = fade_window(self.chunk, self.fade)
        last = min((index // self.batch_size + 1) * self.batch_size, count) - 1
        if last == 0:
            w[: self.fade] = 1.0
        elif last == count - 1:
            w[-self.fade :] = 1.0
        return w


def fade_window(size: int, fade: int) -> Tensor:
    """Ones with linear fades ``linspace(0, 1, fade)`` in and ``linspace(1, 0, fade)``
    out (float32); the fade-in wins where they meet."""
    w = torch.ones(size)
    w[-fade:] = torch.linspace(1, 0, fade)
    w[:fade] = torch.linspace(0, 1, fade)
    return w


def _fill(part: Tensor, chunk: int) -> Tensor:
    """``part (channel, n)``, ``n <= chunk``, padded to ``chunk`` samples as MSST does."""
    n = part.shape[-1]
    if n == chunk:
        return part
    mode = "reflect" if n > chunk // 2 else "constant"
    return F.pad(part.unsqueeze(0), (0, chunk - n), mode=mode).squeeze(0)


def _run(model: ModelFn, part: Tensor, device: torch.device) -> Tensor:
    with torch.no_grad():  # not inference_mode: scripted graphs that saw autograd fail there
        out = model(host_to_device(part.unsqueeze(0), device))
    if out.dim() != 4 or out.shape[0] != 1 or out.shape[2] != part.shape[0]:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {(1, *part.shape)}")
    return out[0].float().cpu()


def demix(model: ModelFn, mix: Tensor, plan: MsstPlan, num_sources: int) -> Tensor:
    """Separate a whole track at once: ``mix (channel, length)`` -> ``(source, channel, length)``."""
    length = mix.shape[-1]
    mix = mix.to(torch.float32)
    border = plan.border if plan.pads(length) else 0
    if border:
        mix = F.pad(mix.unsqueeze(0), (border, border), mode="reflect").squeeze(0)
    total = mix.shape[-1]
    count = plan.count_chunks(length)
    acc = torch.zeros(num_sources, mix.shape[0], total)
    weight = torch.zeros(total)
    for index in range(count):
        start = index * plan.step
        part = mix[:, start : start + plan.chunk]
        n = part.shape[-1]
        out = _run(model, _fill(part, plan.chunk), torch.device("cpu"))
        w = plan.window(index, count)[:n]
        acc[..., start : start + n] += out[..., :n] * w
        weight[start : start + n] += w
    out = torch.nan_to_num(acc / weight, nan=0.0)
    return out[..., border : border + length]


class MsstStream:
    """:func:`demix` fed with blocks: :meth:`push` returns every sample that no later
    chunk can change, :meth:`finish` the rest.

    Positions below are in the padded track (``border`` reflected samples first,
    once the track is known to be longer than ``2 * border``). A chunk runs during
    :meth:`push` once the padded track is known to go on past its end (so it is
    not the last chunk). Its fade-out depends on whether its batch is MSST's last;
    until that is known its last ``fade`` output samples wait aside.
    """

    def __init__(
        self,
        model: ModelFn,
        plan: MsstPlan,
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
        self._base = fade_window(plan.chunk, plan.fade)
        self._received = 0
        self._raw: list[Tensor] = []  # blocks before the padding is decided
        self._border: int | None = None if plan.border > 0 else 0
        self._input = torch.zeros(self.channels, 0)  # padded track from _input_start on
        self._input_start = 0
        self._acc = torch.zeros(self.num_sources, self.channels, 0)  # from _emitted on
        self._weight = torch.zeros(0)
        self._emitted = 0
        self._next = 0  # next chunk index
        self._tails: dict[int, Tensor] = {}  # chunk index -> its last `fade` output samples
        self._finished = False

    # -- bookkeeping ----------------------------------------------------------------

    def _known(self) -> int:
        """End of the padded track known so far (its reflected tail comes at finish)."""
        return self._input_start + self._input.shape[-1]

    def _extend(self, block: Tensor) -> None:
        self._input = torch.cat([self._input, block], dim=-1)

    def _accumulate(self, start: int, out: Tensor, w: Tensor) -> None:
        stop = start + out.shape[-1]
        grow = stop - self._emitted - self._acc.shape[-1]
        if grow > 0:
            self._acc = torch.cat([self._acc, self._acc.new_zeros(*self._acc.shape[:2], grow)], -1)
            self._weight = torch.cat([self._weight, self._weight.new_zeros(grow)])
        a, b = start - self._emitted, stop - self._emitted
        self._acc[..., a:b] += out * w
        self._weight[a:b] += w

    def _emit(self, upto: int) -> Tensor:
        """Finished output at padded positions ``[_emitted, upto)``, cropped to the track."""
        count = max(upto - self._emitted, 0)
        done = torch.nan_to_num(self._acc[..., :count] / self._weight[:count], nan=0.0)
        first = self._emitted
        self._acc = self._acc[..., count:]
        self._weight = self._weight[count:]
        self._emitted += count
        border = self._border or 0
        lo = max(border - first, 0)
        hi = max(min(border + self._received - first, count), lo)
        return done[..., lo:hi]

    def _chunk_input(self, index: int, total: int) -> Tensor:
        start = index * self.plan.step
        stop = min(start + self.plan.chunk, total)
        return self._input[:, start - self._input_start : stop - self._input_start]

    def _run_chunk(self, index: int, count: int | None) -> None:
        """Run chunk ``index``; ``count`` is the number of chunks when known (at finish)."""
        plan = self.plan
        start = index * plan.step
        part = self._chunk_input(index, self._known())
        n = part.shape[-1]
        out = _run(self.model, _fill(part, plan.chunk), self.device)
        if out.shape[:2] != (self.num_sources, self.channels):
            raise ValueError(
                f"model returned {out.shape[0]} sources x {out.shape[1]} channels, "
                f"expected {self.num_sources} x {self.channels}"
            )
        if self.on_chunk is not None:
            self.on_chunk(1)
        if count is not None:
            self._accumulate(start, out[..., :n], plan.window(index, count)[:n])
            return
        # a chunk run before the end is full and not the last: only its fade-out is open
        w = self._base.clone()
        if index == 0 and plan.batch_size == 1:
            w[: plan.fade] = 1.0
        head = plan.chunk - plan.fade
        self._accumulate(start, out[..., :head], w[:head])
        self._tails[index] = out[..., head:]

    def _settle(self, count: int | None) -> None:
        """Add the waiting fade-outs whose batch is now known to be (or not be) MSST's last."""
        plan = self.plan
        for index in sorted(self._tails):
            after = (index // plan.batch_size + 1) * plan.batch_size  # first chunk of next batch
            if count is None and after * plan.step >= self._known():
                continue
            if count is None or after < count:
                w = self._base[plan.chunk - plan.fade :]
            else:
                w = plan.window(index, count)[plan.chunk - plan.fade :]
            start = index * plan.step + plan.chunk - plan.fade
            self._accumulate(start, self._tails.pop(index), w)

    def _open_from(self) -> int:
        """First padded position a later chunk or a waiting fade-out may still change."""
        plan = self.plan
        tails = [i * plan.step + plan.chunk - plan.fade for i in self._tails]
        return min([self._next * plan.step, *tails])

    # -- the engine -----------------------------------------------------------------

    def push(self, block: Tensor) -> Tensor:
        """Feed ``block (channel, n)``; return the finished output ``(source, channel, k)``."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(f"blocks must be ({self.channels}, time), got {tuple(block.shape)}")
        block = block.to(torch.float32)
        self._received += block.shape[-1]
        if self._border is None:
            self._raw.append(block)
            if self._received <= 2 * self.plan.border:
                return self._acc.new_zeros(self.num_sources, self.channels, 0)
            # longer than 2 * border whatever follows: the reflected head is known now
            track = torch.cat(self._raw, dim=-1)
            self._raw = []
            self._border = self.plan.border
            head = track[:, 1 : self._border + 1].flip(-1)
            self._extend(torch.cat([head, track], dim=-1))
        else:
            self._extend(block)
        plan = self.plan
        while self._next * plan.step + plan.chunk < self._known():
            self._run_chunk(self._next, None)
            self._next += 1
        self._settle(None)
        out = self._emit(self._open_from())
        # keep what later chunks read and the samples the reflected tail will mirror
        keep = min(self._next * plan.step, self._known() - (self._border or 0) - 1)
        keep = max(keep, self._input_start)
        self._input = self._input[:, keep - self._input_start :]
        self._input_start = keep
        return out

    def finish(self) -> Tensor:
        """End of the track: run the last chunks and return the rest of the output."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        length = self._received
        if length == 0:
            return self._acc.new_zeros(self.num_sources, self.channels, 0)
        if self._border is None:  # never longer than 2 * border: no padding
            self._border = 0
            self._extend(torch.cat(self._raw, dim=-1))
            self._raw = []
        if self._border:
            end = self._known() - self._input_start
            self._extend(self._input[:, end - self._border - 1 : end - 1].flip(-1))
        plan = self.plan
        count = plan.count_chunks(length)
        self._settle(count)
        for index in range(self._next, count):
            self._run_chunk(index, count)
        self._next = count
        return self._emit(self._border + length + self._border)


@dataclass(frozen=True)
class MsstRecipe:
    """The ``msst`` chunking recipe of :mod:`sepcli.inference.recipes` (module docstring).

    From an archive's config: ``chunk_size``, ``num_overlap`` and ``batch_size``.
    ``--segment`` sets the chunk (samples, rounded), ``--overlap f`` sets
    ``num_overlap`` to ``round(1 / (1 - f))`` (0.75 -> 4). Shifts and extra
    context are not part of this recipe.
    """

    name: ClassVar[str] = "msst"
    plan: MsstPlan

    @classmethod
    def from_metadata(cls, meta: ArchiveMetadata, config: SeparatorConfig) -> MsstRecipe:
        cfg = dict(meta.config)
        if not all(isinstance(cfg.get(k), int) for k in ("chunk_size", "num_overlap")):
            raise UsageError(
                f"model {meta.name!r} ({meta.family}) has no chunk_size/num_overlap in its "
                "config, which the msst recipe needs"
            )
        if config.shifts:
            raise UsageError("--shifts is not part of the msst chunking recipe; use --shifts 0")
        if config.context_seconds is not None:
            raise UsageError("--context is not part of the msst chunking recipe")
        chunk = int(cfg["chunk_size"])
        if config.segment_seconds is not None:
            chunk = max(10, round(config.segment_seconds * meta.sample_rate))
        overlap = int(cfg["num_overlap"])
        if config.overlap is not None:
            overlap = max(1, round(1.0 / (1.0 - config.overlap)))
        batch = int(cfg.get("batch_size", 1))
        return cls(MsstPlan(chunk, min(overlap, chunk), batch))

    def engine(
        self,
        fn: Callable[[Tensor], Tensor],
        channels: int,
        num_sources: int,
        *,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        on_chunk: Callable[[int], None] | None = None,
    ) -> MsstStream:
        """A :class:`MsstStream`; chunks run one at a time (``batch_size`` is not used:
        MSST's batch size is the plan's, and only its windows depend on it)."""
        return MsstStream(fn, self.plan, num_sources, channels, device=device, on_chunk=on_chunk)

    def count_chunks(self, length: int) -> int:
        return self.plan.count_chunks(length)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "chunk_samples": self.plan.chunk,
            "num_overlap": self.plan.num_overlap,
            "batch_size": self.plan.batch_size,
        }


register_recipe(MsstRecipe.name, MsstRecipe.from_metadata)
