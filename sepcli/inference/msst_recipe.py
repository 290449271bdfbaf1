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
standard deviation when ``inference.normalize`` is true; that is not part of
``demix`` (nor of this recipe) but of the separator, around any recipe
(:mod:`sepcli.inference.normalize`, ``metadata.input_normalization``).

:func:`demix` runs a whole track at once (the reference path of the tests).
:class:`MsstRecipe` gives the same chunks to the streaming engine
(:mod:`sepcli.inference.engine`), which returns the same samples from blocks of
input, keeping a few chunks of input and output whatever the track length. A
chunk runs once its input is in and its MSST batch is known not to be the last
(or at the end), so the look-ahead grows with ``batch_size``
(:attr:`MsstRecipe.latency_samples`). Lengths are samples at the model's rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.engine import Chunk, ModelFn, Recipe, run_model
from sepcli.inference.recipes import reference_num_overlap, register_recipe
from sepcli.models.archive import ArchiveMetadata

__all__ = ["MsstPlan", "MsstRecipe", "fade_window", "demix"]


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


def demix(model: ModelFn, mix: Tensor, plan: MsstPlan, num_sources: int) -> Tensor:
    """Separate a whole track at once: ``mix (channel, length)`` -> ``(source, channel, length)``."""
    length = mix.shape[-1]
    mix = mix.to(torch.float32)
    border = plan.border if plan.pads(length) else 0
    if border:
        mix = F.pad(mix.unsqueeze(0), (border, border), mode="reflect").squeeze(0)
    total = mix.shape[-1]
    count = plan.count_chunks(length)
    cpu = torch.device("cpu")
    acc = torch.zeros(num_sources, mix.shape[0], total)
    weight = torch.zeros(total)
    for index in range(count):
        start = index * plan.step
        part = mix[:, start : start + plan.chunk]
        n = part.shape[-1]
        out = run_model(model, _fill(part, plan.chunk)[None], num_sources, cpu)[0]
        w = plan.window(index, count)[:n]
        acc[..., start : start + n] += out[..., :n] * w
        weight[start : start + n] += w
    out = torch.nan_to_num(acc / weight, nan=0.0)
    return out[..., border : border + length]


@dataclass(frozen=True)
class MsstRecipe(Recipe):
    """The ``msst`` chunking recipe of :mod:`sepcli.inference.recipes` (module docstring).

    On the streaming engine (:mod:`sepcli.inference.engine`) its chunk starts are
    positions in MSST's padded track; a chunk reading reflected samples names the
    track samples it reads (``Chunk.positions``). Chunks run one per model call.

    From an archive's config: ``chunk_size``, ``num_overlap`` and ``batch_size``.
    ``--segment`` sets the chunk (samples, rounded), ``--overlap f`` sets
    ``num_overlap`` to ``round(1 / (1 - f))`` (0.75 -> 4). Shifts and extra
    context are not part of this recipe.
    """

    name: ClassVar[str] = "msst"
    batched: ClassVar[bool] = False
    zero_weights: ClassVar[bool] = True  # MSST's fades leave some samples unweighted
    plan: MsstPlan

    @classmethod
    def from_metadata(cls, meta: ArchiveMetadata, config: SeparatorConfig) -> MsstRecipe:
        cfg = dict(meta.config)
        if not all(isinstance(cfg.get(k), int) for k in ("chunk_size", "num_overlap")):
            raise UsageError(
                f"model {meta.name!r} ({meta.family}) has no chunk_size/num_overlap in its "
                "config, which the msst recipe needs"
            )
        overlap = reference_num_overlap(config, cls.name, int(cfg["num_overlap"]))
        chunk = int(cfg["chunk_size"])
        if config.segment_seconds is not None:
            chunk = max(10, round(config.segment_seconds * meta.sample_rate))
        batch = int(cfg.get("batch_size", 1))
        return cls(MsstPlan(chunk, min(overlap, chunk), batch))

    @property
    def grid_starts(self) -> tuple[int, ...]:
        return (0,)  # chunk starts are positions in MSST's padded track

    @property
    def stride(self) -> int:
        return self.plan.step

    @property
    def latency_samples(self) -> int:
        # the padding is known after 2 * border + 1 samples, a chunk once all its
        # input is in, its window once the track is known to go on past its batch
        plan = self.plan
        after = plan.batch_size * plan.step - plan.border + 1
        return max(2 * plan.border + 1 if plan.border else 0, plan.chunk, after)

    def chunk(self, start: int, received: int, finished: bool) -> Chunk | None:
        """The chunk at ``start`` of the padded track (``border`` reflected samples
        first); before the end, once the track is known to be padded, its input is
        all in (none of it mirrored from the unknown end) and the track is known to
        go on past its MSST batch (the batch is not the last)."""
        plan = self.plan
        index = start // plan.step
        if finished:
            length = received
            border = plan.border if plan.pads(length) else 0
            if start >= length + 2 * border:
                return None
            window = plan.window(index, plan.count_chunks(length))
            n = min(plan.chunk, length + 2 * border - start)
        else:
            length, border = None, plan.border
            after = (index // plan.batch_size + 1) * plan.batch_size  # next batch's first chunk
            if (
                (border and received <= 2 * border)
                or start + plan.chunk > border + received
                or after * plan.step >= border + received + border
            ):
                return None
            window, n = plan.window(index, after + 1), plan.chunk  # after + 1: not the last batch
        at = start - border
        positions = None
        if at < 0 or n < plan.chunk or (length is not None and at + plan.chunk > length):
            positions = self._positions(start, n, border, length)
        return Chunk(at, at, plan.chunk, 0, window[:n], positions=positions)

    def _positions(self, start: int, n: int, border: int, length: int | None) -> Tensor:
        """Track positions of the samples of the chunk at ``start`` of the padded track
        with ``n`` samples there (-1: zero), as :func:`demix` builds its input."""
        chunk = self.plan.chunk
        i = torch.arange(chunk)
        if chunk // 2 < n < chunk:  # the chunk mirrored at its own end
            i = torch.where(i < n, i, 2 * (n - 1) - i)
        p = start + i - border
        if border:  # the reflected borders: -u <- u, and L - 1 + u <- L - 1 - u
            p = p.abs()
            if length is not None:
                p = torch.where(p >= length, 2 * (length - 1) - p, p)
        if n <= chunk // 2:
            p[n:] = -1  # zeros
        return p

    def reach(self, start: int, received: int) -> tuple[int, int]:
        border = self.plan.border
        if border and received <= 2 * border:  # the padding is not known yet
            return 0, 0
        # the reflected end mirrors the last border + 1 samples of the track
        return start - border, min(start - border, received - border - 1)

    def normalise(self, total: Tensor, weight: Tensor) -> Tensor:
        return torch.nan_to_num(total / weight, nan=0.0)  # no weight: 0, as MSST

    def describe(self) -> dict[str, Any]:
        fields = asdict(self.plan)  # chunk, num_overlap, batch_size
        return {"recipe": self.name, "chunk_samples": fields.pop("chunk"), **fields}


register_recipe(MsstRecipe.name, MsstRecipe.from_metadata)
