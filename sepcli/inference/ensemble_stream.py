"""Ensemble algorithms over a stream: blocks of member estimates in, the blend out.

:class:`StreamingEnsemble` computes exactly what :func:`sepcli.dsp.ensemble.ensemble`
computes on the whole signal, with memory bounded by the block size plus one
STFT frame. The waveform algorithms are sample by sample, so a block is blended
as it comes. The spectral ones work on the reference's STFT frames (frame ``k``
covers samples ``[k * hop - n_fft / 2, k * hop + n_fft / 2)`` of the track,
zero outside it, for ``k = 0 .. time // hop``): the stream keeps that grid
anchored at the track's first sample, computes a frame once its last input
sample has arrived, overlap-adds the frames' windowed inverse FFTs into an
accumulator together with the sum of squared windows, and emits a sample once no
later frame reaches it (``n_fft - hop`` samples of carry). Block boundaries thus
change only where the sums are cut, never what is summed: the output is the
whole-signal result up to float rounding. The last frames are known at
:meth:`StreamingEnsemble.finish`, when the track's length is known, exactly as the
reference builds ``1 + time // hop`` frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepcli.dsp.ensemble import (
    HOP_LENGTH,
    N_FFT,
    SPECTRAL_ALGORITHMS,
    analysis_frames,
    check_algorithm,
    check_stft,
    combine,
    divide_envelope,
    ensemble,
    overlap_add,
    synthesis_frames,
)
from sepcli.dsp.stft import hann_window

__all__ = ["StreamingEnsemble"]


class StreamingEnsemble:
    """Blend ``members`` estimates of one stem block by block.

    Args:
        algorithm: one of :data:`sepcli.dsp.ensemble.ALGORITHMS`.
        weights: ``(member,)`` for ``avg_*`` (``None``: equal).
        n_fft, hop_length: STFT of the spectral algorithms (the reference's 2048 / 1024).

    :meth:`push` takes ``(member, channel, n)`` float tensors and :meth:`finish`
    ends the stream; both return the samples that are final, ``(channel, m)``.
    Concatenated, they have as many samples as were pushed. The spectral
    algorithms lag by up to ``n_fft / 2 + hop`` samples.
    """

    def __init__(
        self,
        algorithm: str,
        weights: Tensor | None = None,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
    ) -> None:
        check_algorithm(algorithm)
        self.algorithm = algorithm
        self.weights = weights
        self.spectral = algorithm in SPECTRAL_ALGORITHMS
        if self.spectral:
            check_stft(n_fft, hop_length)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.window = hann_window(n_fft)
        self.channels = 0
        self.pushed = 0  # samples pushed
        self.emitted = 0  # samples returned
        self.next_frame = 0
        # Input kept from absolute sample ``buffer_start`` on (the zeros before the
        # track's start are the reference's padding).
        self.buffer: Tensor | None = None
        self.buffer_start = -(n_fft // 2)
        # Overlap-add carry: the unfinished n_fft - hop samples from the next frame's start.
        self.carry: Tensor | None = None
        self.carry_envelope = torch.zeros(n_fft - hop_length, dtype=torch.float64)

    def push(self, block: Tensor) -> Tensor:
        """``(member, channel, n)`` -> ``(channel, m)`` final samples."""
        self.channels = block.shape[1]
        if not self.spectral:
            self.pushed += block.shape[-1]
            self.emitted += block.shape[-1]
            return ensemble(block, self.algorithm, self.weights)
        if self.buffer is None:
            pad = block.new_zeros(block.shape[:-1] + (self.n_fft // 2,))
            self.buffer = torch.cat([pad, block], dim=-1)
        else:
            self.buffer = torch.cat([self.buffer, block], dim=-1)
        self.pushed += block.shape[-1]
        # frame k is complete once samples up to k * hop + n_fft / 2 have arrived
        ready = (self.pushed - self.n_fft // 2) // self.hop_length + 1
        return self._frames(max(ready, self.next_frame), limit=None)

    def finish(self) -> Tensor:
        """The rest of the blend: the last frames, now that the length is known."""
        if not self.spectral or self.buffer is None:
            return torch.zeros(self.channels, 0)
        count = 1 + self.pushed // self.hop_length
        need = (count - 1) * self.hop_length + self.n_fft // 2  # absolute end of the last frame
        have = self.buffer_start + self.buffer.shape[-1]
        if need > have:  # the reference's zero padding after the track
            pad = self.buffer.new_zeros(self.buffer.shape[:-1] + (need - have,))
            self.buffer = torch.cat([self.buffer, pad], dim=-1)
        return self._frames(count, limit=self.pushed)

    def _frames(self, end: int, limit: int | None) -> Tensor:
        """Compute frames ``next_frame .. end - 1``; return the samples that are final
        (all of them up to ``limit`` when the stream ends)."""
        assert self.buffer is not None
        n_fft, hop, half = self.n_fft, self.hop_length, self.n_fft // 2
        channels = self.buffer.shape[1]
        count = end - self.next_frame
        start = self.next_frame * hop - half  # absolute first sample of the first frame
        if count > 0:
            offset = start - self.buffer_start
            segment = self.buffer[..., offset : offset + (count - 1) * hop + n_fft]
            window = self.window.to(segment.device)
            spec = analysis_frames(segment, n_fft, hop, window)  # (M, C, F, count)
            chosen = combine(spec, self.algorithm, self.weights, dim=0)
            numerator = overlap_add(synthesis_frames(chosen, n_fft, window), hop)
            squares = (window.double() ** 2)[:, None].expand(n_fft, count)
            envelope = overlap_add(squares, hop)
            if self.carry is not None:
                numerator[..., : n_fft - hop] += self.carry
            envelope[: n_fft - hop] += self.carry_envelope
            done = count * hop
            finished, self.carry = numerator[..., :done], numerator[..., done:]
            finished_envelope, self.carry_envelope = envelope[:done], envelope[done:]
            out = divide_envelope(finished, finished_envelope)
            self.next_frame = end
            # input before the next frame's start is no longer needed
            drop = end * hop - half - self.buffer_start
            self.buffer = self.buffer[..., drop:]
            self.buffer_start += drop
        else:
            out = self.buffer.new_zeros(channels, 0)
        if limit is not None and self.carry is not None:
            # the stream ends: the carry is final too (no later frame reaches it)
            out = torch.cat([out, divide_envelope(self.carry, self.carry_envelope)], dim=-1)
            self.carry = None
        # out starts at absolute sample ``start``; keep [emitted, limit or +inf)
        lo = self.emitted - start
        out = out[..., max(lo, 0) :]
        if limit is not None:
            want = limit - self.emitted
            if out.shape[-1] < want:
                out = torch.cat([out, out.new_zeros(channels, want - out.shape[-1])], dim=-1)
            out = out[..., :want]
        self.emitted += out.shape[-1]
        return out
