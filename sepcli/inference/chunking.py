"""Chunked inference with overlap-add, in pure pieces and one streaming engine.

The pieces (after Demucs ``apply.py``, see STYLE.md):

* :func:`plan_chunks` — where chunks start (pure);
* :func:`blend_window` — how much each output sample of a chunk counts (pure);
* :func:`overlap_add` — accumulate ``out += w * y``, ``weight += w``, divide (pure);
* :class:`StreamingOverlapAdd` — the same arithmetic fed block by block, so that
  memory stays bounded whatever the track length. Each chunk is given ``context``
  samples of real neighbouring audio on both sides (zero only beyond the track
  ends) and only its central ``segment`` samples are kept.

Shifts (Défossez et al., Demucs) are extra chunk grids offset by seeded random
amounts; every grid adds into the same accumulator, so the result is the
weighted mean over grids. Lengths here are in samples.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from sepcli.inference.device import host_to_device

__all__ = [
    "chunk_stride",
    "plan_chunks",
    "blend_window",
    "overlap_add",
    "shift_offsets",
    "StreamingOverlapAdd",
]


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


class StreamingOverlapAdd:
    """Feed a waveform block by block through ``fn`` in overlapping chunks.

    Args:
        fn: maps a batch of chunks ``(batch, channel, context + segment + context)``
            to ``(batch, source, channel, same length)``.
        channels: number of input channels.
        num_sources: number of sources ``fn`` outputs.
        segment: chunk length in samples (the part kept from each chunk).
        overlap: fraction of a segment shared by consecutive chunks, in [0, 1).
        context: samples of real neighbouring audio given on each side of a chunk.
        offsets: one chunk grid per offset (see :func:`shift_offsets`).
        batch_size: chunks per call of ``fn``.
        device: device the chunks are sent to; outputs come back on the CPU.
        on_chunk: called with the number of chunks just processed.
        min_length: shortest input ``fn`` accepts (e.g. an STFT window).

    A track no longer than one ``segment`` is run once at its own length
    (zero-padded to ``min_length`` at most): padding it to a whole chunk would
    cost up to a chunk of work and change what a recurrent model sees.

    Use :meth:`push` for each input block ``(channel, n)`` and :meth:`finish` at
    the end; both return the output samples that are final, ``(source, channel, m)``,
    in order. Concatenated, they have exactly as many samples as were pushed.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
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
        if context < 0:
            raise ValueError("context must be >= 0")
        self.fn = fn
        self.channels = channels
        self.num_sources = num_sources
        self.segment = segment
        self.stride = chunk_stride(segment, overlap)
        self.context = context
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.on_chunk = on_chunk
        self.min_length = max(1, min_length)
        self._ran = False
        self.window = blend_window(segment, overlap)
        for o in offsets:
            if not 0 <= o < segment:
                raise ValueError(f"offset {o} not in [0, segment)")
        # Next chunk start of each grid; a heap yields chunks in start order.
        self._heap: list[tuple[int, int]] = [(-o, g) for g, o in enumerate(offsets)]
        heapq.heapify(self._heap)
        self._inp = torch.zeros(channels, 0)  # input samples [inp_start, inp_start + len)
        self._inp_start = 0
        self._pushed = 0
        # Output accumulator for positions [out_start, out_start + acc_len); the
        # buffers have spare capacity so that chunks are added without reallocating.
        self._acc = torch.zeros(num_sources, channels, 2 * segment)
        self._wsum = torch.zeros(2 * segment)
        self._acc_len = 0
        self._out_start = 0
        self._finished = False

    # -- internals ---------------------------------------------------------
    def _chunk_input(self, start: int, total: int | None) -> Tensor:
        """Input ``[start - context, start + segment + context)``, zeros off the track."""
        lo = start - self.context
        hi = start + self.segment + self.context
        end = self._inp_start + self._inp.shape[-1]
        if lo >= max(self._inp_start, 0) and hi <= (end if total is None else min(end, total)):
            return self._inp[:, lo - self._inp_start : hi - self._inp_start]
        out = torch.zeros(self.channels, hi - lo)
        avail_lo = max(lo, self._inp_start, 0)
        avail_hi = min(hi, self._inp_start + self._inp.shape[-1])
        if total is not None:
            avail_hi = min(avail_hi, total)
        if avail_hi > avail_lo:
            out[:, avail_lo - lo : avail_hi - lo] = self._inp[
                :, avail_lo - self._inp_start : avail_hi - self._inp_start
            ]
        return out

    def _ensure_acc(self, upto: int) -> None:
        need = upto - self._out_start
        capacity = self._acc.shape[-1]
        if need > capacity:
            grown = max(need, 2 * capacity)
            acc = torch.zeros(self.num_sources, self.channels, grown)
            acc[..., :capacity] = self._acc
            wsum = torch.zeros(grown)
            wsum[:capacity] = self._wsum
            self._acc, self._wsum = acc, wsum
        self._acc_len = max(self._acc_len, need)

    def _call(self, batch: Tensor) -> Tensor:
        batch = host_to_device(batch, self.device)  # pinned and non-blocking on CUDA
        with torch.no_grad():  # not inference_mode: scripted graphs that saw autograd fail there
            y = self.fn(batch)
        if y.dim() != 4 or y.shape[1] != self.num_sources or y.shape[-1] != batch.shape[-1]:
            raise RuntimeError(
                f"model returned shape {tuple(y.shape)} for input {tuple(batch.shape)}; expected "
                f"(batch, {self.num_sources}, channel, {batch.shape[-1]})"
            )
        self._ran = True
        return y

    def _run_whole(self, total: int) -> Tensor:
        """The whole (short) track as one chunk at its own length."""
        x = self._inp[:, :total]
        if total < self.min_length:
            x = torch.nn.functional.pad(x, (0, self.min_length - total))
        y = self._call(x[None])[0, ..., :total].float().cpu()
        if self.on_chunk is not None:
            self.on_chunk(1)
        self._heap.clear()
        self._out_start = total
        return y

    def _run(self, starts: list[int], total: int | None) -> None:
        batch = torch.stack([self._chunk_input(s, total) for s in starts])
        y = self._call(batch)
        y = y[..., self.context : self.context + self.segment].float().cpu()
        for i, start in enumerate(starts):
            lo = max(start, self._out_start)
            hi = start + self.segment
            if total is not None:
                hi = min(hi, total)
            if hi <= lo:
                continue
            self._ensure_acc(hi)
            w = self.window[lo - start : hi - start]
            a, b = lo - self._out_start, hi - self._out_start
            self._acc[..., a:b] += y[i, ..., lo - start : hi - start] * w
            self._wsum[a:b] += w
        if self.on_chunk is not None:
            self.on_chunk(len(starts))

    def _process(self, total: int | None) -> Tensor:
        available = self._inp_start + self._inp.shape[-1]
        ready: list[int] = []
        while self._heap:
            start, grid = self._heap[0]
            if total is not None:
                if start >= max(total, 1):
                    heapq.heappop(self._heap)
                    continue
            elif start + self.segment + self.context > available:
                break
            heapq.heapreplace(self._heap, (start + self.stride, grid))
            ready.append(start)
            if len(ready) == self.batch_size:
                self._run(ready, total)
                ready = []
        if ready:
            self._run(ready, total)
        # Samples before the next pending chunk get no more contributions.
        final_upto = self._heap[0][0] if self._heap else (total if total is not None else 0)
        if total is not None:
            final_upto = min(final_upto, total) if self._heap else total
        emitted = self._emit(max(final_upto, self._out_start))
        keep_from = (self._heap[0][0] if self._heap else available) - self.context
        self._trim_input(keep_from)
        return emitted

    def _emit(self, upto: int) -> Tensor:
        n = upto - self._out_start
        if n <= 0:
            return torch.zeros(self.num_sources, self.channels, 0)
        weight = self._wsum[:n]
        if n > self._acc_len or bool((weight <= 0).any()):
            raise AssertionError("overlap-add: some samples are not covered by any chunk")
        out = self._acc[..., :n] / weight
        # Move what is still accumulating to the front and clear the rest.
        rest = self._acc_len - n
        if rest:
            self._acc[..., :rest] = self._acc[..., n : self._acc_len].clone()
            self._wsum[:rest] = self._wsum[n : self._acc_len].clone()
        self._acc[..., rest : self._acc_len] = 0
        self._wsum[rest : self._acc_len] = 0
        self._acc_len = rest
        self._out_start = upto
        return out

    def _trim_input(self, keep_from: int) -> None:
        drop = min(max(keep_from - self._inp_start, 0), self._inp.shape[-1])
        if drop:
            self._inp = self._inp[:, drop:]
            self._inp_start += drop

    # -- public ------------------------------------------------------------
    def push(self, block: Tensor) -> Tensor:
        """Add input samples ``(channel, n)``; returns final outputs ``(source, channel, m)``."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(
                f"expected a block of shape ({self.channels}, n), got {tuple(block.shape)}"
            )
        self._inp = torch.cat([self._inp, block.float().cpu()], dim=-1)
        self._pushed += block.shape[-1]
        return self._process(None)

    def finish(self) -> Tensor:
        """Process the last chunks (zero-padded past the end) and return the remaining output."""
        self._finished = True
        total = self._pushed
        if 0 < total <= self.segment and not self._ran and self._inp_start == 0:
            return self._run_whole(total)
        return self._process(total)

    def run(self, blocks: Iterator[Tensor]) -> Iterator[Tensor]:
        """Convenience: yield outputs for each block, then the tail."""
        for block in blocks:
            out = self.push(block)
            if out.shape[-1]:
                yield out
        tail = self.finish()
        if tail.shape[-1]:
            yield tail
