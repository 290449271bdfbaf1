"""BSSEval v4 (SDR, ISR, SIR, SAR) as vectorised tensor functions.

This reproduces ``museval.evaluate`` (``mode="v4"``: ``bss_eval`` with
``framewise_filters=False``, ``bsseval_sources_version=False``, no
permutation) to floating-point accuracy, but computes it in a few batched
steps instead of Python loops over frames, sources and channel pairs:

1. Lagged cross-correlations of all references with each other and with the
   estimates, for lags ``|k| < filters_len``, by block-wise FFT (overlap-save
   with blocks much shorter than the track, summed in the frequency domain).
2. The time-invariant distortion filters: one solve of the Gram system of
   delayed references (all targets at once, ``C``), and one small solve per
   target against its own reference (``Cj``).
3. Per window, the filtered references are linear convolutions of the window
   (cut first, then filtered: museval's convention, tails of ``filters_len - 1``
   samples included); their energies and the energies of their differences with
   the estimate are read from the FFT of each window by Parseval's identity.

Windows in which any reference or any estimate is silent (every sample sums to
zero over channels) give NaN for every source, as in museval; a zero
denominator gives ``+inf`` (museval's ``_safe_db``).

References:
    E. Vincent, R. Gribonval, C. Févotte, "Performance measurement in blind
    audio source separation", IEEE TASLP 14(4), 2006.
    A. Liutkus, F.-R. Stöter, N. Ito, "The 2018 Signal Separation Evaluation
    Campaign", LVA/ICA 2018 (BSSEval v4, time-invariant filters).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BssEvalScores", "bss_eval_v4", "match_length", "num_windows"]

#: numpy's float64 epsilon, the diagonal loading museval adds to the Gram matrix.
_EPS64 = 2.220446049250313e-16


class BssEvalScores(NamedTuple):
    """Framewise BSSEval scores in dB, each ``(source, window)`` float64."""

    sdr: Tensor
    isr: Tensor
    sir: Tensor
    sar: Tensor


def num_windows(length: int, window: int, hop: int) -> int:
    """Number of evaluation windows for ``length`` samples (museval's ``Framing``).

    Only full windows count (a trailing partial window is dropped); a signal not
    longer than ``window`` is one window covering all of it.
    """
    if window < length:
        return (length - window + hop) // hop
    return 1


def match_length(estimates: Tensor, length: int) -> Tensor:
    """Zero-pad or cut ``estimates`` ``(..., time)`` to ``length`` samples
    (museval's ``pad_or_truncate``)."""
    have = estimates.shape[-1]
    if have >= length:
        return estimates[..., :length]
    return torch.nn.functional.pad(estimates, (0, length - have))


def _fast_len(n: int) -> int:
    """Smallest ``2^a 3^b 5^c 7^d >= n`` (a fast FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def _real_operand(b_t: Tensor) -> Tensor:
    """Real form of a complex right operand ``b_t (batch, n, k)`` for :func:`_complex_bmm`:
    ``(batch, 2k, 2n)`` holding ``[br, -bi]`` then ``[bi, br]`` per column."""
    batch, n, k = b_t.shape
    b_conj = torch.conj_physical(b_t.contiguous())
    b_re = torch.view_as_real(b_conj).reshape(batch, n, 2 * k)  # [br, -bi]
    b_im = torch.view_as_real(b_conj * 1j).reshape(batch, n, 2 * k)  # [bi, br]
    return torch.cat([b_re, b_im], 1).transpose(1, 2)


def _complex_bmm(a: Tensor, b_t: Tensor | None = None, operand: Tensor | None = None) -> Tensor:
    """``a @ b_t^T`` for complex ``a (batch, m, k)`` and ``b_t (batch, n, k)``.

    Done as one real batched product on interleaved (re, im) views: torch's
    complex batched matmul is many times slower on CPU for these small shapes.
    ``operand`` is ``_real_operand(b_t)``, precomputed when ``b_t`` is reused.
    Returns ``(batch, m, n)`` complex.
    """
    batch, m, k = a.shape
    if operand is None:
        assert b_t is not None
        operand = _real_operand(b_t)
    n = operand.shape[-1] // 2
    a_ri = torch.view_as_real(a.contiguous()).reshape(batch, m, 2 * k)  # [ar, ai]
    both = torch.bmm(a_ri, operand)  # (batch, m, 2n): real parts, then imaginary parts
    return torch.complex(both[..., :n], both[..., n:])


def _lagged_correlations(x: Tensor, y: Tensor, max_lag: int, chunk_blocks: int = 64) -> Tensor:
    """Linear cross-correlations for small lags, by block-wise FFT.

    The signals are cut in blocks; per block, the cross-spectrum of ``y``'s
    block with ``x``'s block extended by ``max_lag`` on both sides gives every
    needed lag without wrap-around, and cross-spectra add up over blocks.

    Args:
        x: ``(kx, time)`` float64.
        y: ``(ky, time)`` float64, same length.
        max_lag: largest absolute lag, in samples.
        chunk_blocks: blocks transformed at once (bounds memory).

    Returns:
        ``r`` of shape ``(kx, ky, 2 * max_lag + 1)`` with
        ``r[k, l, max_lag + m] = sum_n x[k, n + m] y[l, n]`` (zero outside the signals).
    """
    length = x.shape[-1]
    n_fft = max(1024, 1 << (16 * (max_lag + 1) - 1).bit_length())
    block = n_fft - 2 * max_lag
    if length <= block:
        block = length
        n_fft = _fast_len(length + 2 * max_lag)
    num_blocks = -(-length // block)
    padded = num_blocks * block
    y_pad = torch.nn.functional.pad(y, (0, padded - length))
    x_ext = torch.nn.functional.pad(x, (max_lag, padded - length + max_lag))
    cross = torch.zeros(
        n_fft // 2 + 1, x.shape[0], y.shape[0], dtype=torch.complex128, device=x.device
    )
    for first in range(0, num_blocks, chunk_blocks):
        last = min(num_blocks, first + chunk_blocks)
        x_blocks = x_ext[:, first * block : last * block + 2 * max_lag].unfold(
            -1, block + 2 * max_lag, block
        )
        y_blocks = y_pad[:, first * block : last * block].reshape(y.shape[0], last - first, block)
        xf = torch.fft.rfft(x_blocks, n=n_fft).permute(2, 0, 1)  # (freq, kx, blocks)
        yf = torch.fft.rfft(y_blocks, n=n_fft).permute(2, 0, 1)  # (freq, ky, blocks)
        cross += _complex_bmm(xf, yf.conj())  # summed over blocks
    circ = torch.fft.irfft(cross.permute(1, 2, 0), n=n_fft)  # (kx, ky, n_fft)
    return circ[..., : 2 * max_lag + 1]


def _solve(matrix: Tensor, rhs: Tensor) -> Tensor:
    """``(matrix + eps I)^-1 rhs`` for ``(..., n, n)`` and ``(..., n, k)``, like museval.

    Batches are solved one by one: batched LAPACK solves are broken in some
    MKL builds of torch (wrong pivots), and the batch here is only the sources.
    """
    if matrix.dim() > 2:
        return torch.stack([_solve(m, r) for m, r in zip(matrix, rhs, strict=True)])
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    try:
        return torch.linalg.solve((matrix + _EPS64 * eye).contiguous(), rhs.contiguous())
    except RuntimeError:  # exactly singular: museval falls back to least squares
        return torch.linalg.lstsq(matrix.cpu(), rhs.cpu(), driver="gelsd").solution.to(
            matrix.device
        )


def _basis(signals: Tensor) -> list[int]:
    """Indices of the reference signals ``(k, time)`` that span the projection space.

    An all-zero channel, or a channel equal to an earlier one (a mono stem stored
    as stereo), adds nothing to the span of delayed references but makes the Gram
    matrix exactly singular; it is left out. museval keeps it and relies on its
    ``eps`` loading and rounding; the projections are the same.
    """
    keep: list[int] = []
    for p in range(signals.shape[0]):
        if not bool(signals[p].any()):
            continue
        if any(torch.equal(signals[p], signals[q]) for q in keep):
            continue
        keep.append(p)
    return keep


def _distortion_filters(
    references: Tensor, estimates: Tensor, filters_len: int
) -> tuple[Tensor, Tensor]:
    """museval's ``C`` and ``Cj`` filters, estimated on the whole signals.

    Args:
        references, estimates: ``(source, channel, time)`` float64.

    Returns:
        ``C`` ``(target, source, channel, lag, out_channel)``: the least-squares
        filters mapping every reference to estimate ``target``; ``Cj``
        ``(target, channel, lag, out_channel)``: the same from reference
        ``target`` alone. Filters of channels left out of the basis are zero.
    """
    nsrc, nchan, length = references.shape
    k = nsrc * nchan
    lag = filters_len
    refs = references.reshape(k, length)
    keep = _basis(refs)
    kept = len(keep)
    basis = refs[keep]
    corr = _lagged_correlations(torch.cat([basis, estimates.reshape(k, length)]), basis, lag - 1)
    # Gram of delayed references: G[(p, a), (q, b)] = sum_n x_p[n - a] x_q[n - b] = r_qp(a - b)
    delays = torch.arange(lag, device=refs.device)
    index = delays[:, None] - delays[None, :] + lag - 1
    gram = corr[:kept][:, :, index]  # (q, p, a, b)
    gram = gram.permute(1, 2, 0, 3).reshape(kept * lag, kept * lag)
    # D[(p, a), (j, c)] = sum_n x_p[n - a] e_jc[n] = r_(e_jc, x_p)(a)
    cross = corr[kept:, :, lag - 1 :].permute(1, 2, 0).reshape(kept * lag, k)

    filters = torch.zeros(k, lag, k, dtype=refs.dtype, device=refs.device)
    filters[keep] = _solve(gram, cross).reshape(kept, lag, k)
    filters = filters.reshape(nsrc, nchan, lag, nsrc, nchan).permute(3, 0, 1, 2, 4)
    own = torch.zeros(nsrc, nchan, lag, nchan, dtype=refs.dtype, device=refs.device)
    for j in range(nsrc):
        rows = [i for i, p in enumerate(keep) if p // nchan == j]
        if not rows:
            continue
        sel = (torch.tensor(rows, device=refs.device)[:, None] * lag + delays).reshape(-1)
        solved = _solve(gram[sel][:, sel], cross[sel][:, j * nchan : (j + 1) * nchan])
        own[j, [keep[i] % nchan for i in rows]] = solved.reshape(len(rows), lag, nchan)
    return filters, own


def _db(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den == 0, torch.full_like(num, float("inf")), 10 * torch.log10(num / den))


def bss_eval_v4(
    references: Tensor,
    estimates: Tensor,
    window: int = 44100,
    hop: int = 44100,
    filters_len: int = 512,
    chunk_windows: int = 8,
) -> BssEvalScores:
    """Framewise BSSEval v4 images metrics, equal to ``museval.evaluate`` (v4).

    Args:
        references: true sources ``(source, channel, time)``, at least two sources.
        estimates: estimated sources ``(source, channel, time')`` in the same order;
            zero-padded or cut to the references' length (museval's padding).
        window: window length in samples (museval: 1 s = ``sample_rate``).
        hop: hop between windows in samples.
        filters_len: length of the time-invariant distortion filters (512).
        chunk_windows: windows processed at once (bounds memory: about
            ``100 * source * channel * window * chunk_windows`` bytes).

    Returns:
        :class:`BssEvalScores`, each ``(source, num_windows)`` float64 on the
        input's device, in dB; NaN in windows where any reference or estimate is
        silent, ``+inf`` where a distortion term is exactly zero.

    Computation is in float64 whatever the input dtype (museval's precision).
    """
    if references.dim() != 3 or estimates.dim() != 3 or references.shape[:2] != estimates.shape[:2]:
        raise ValueError(
            "references and estimates must be (source, channel, time) with the same sources "
            f"and channels, got {tuple(references.shape)} and {tuple(estimates.shape)}"
        )
    if window <= 0 or hop <= 0 or filters_len <= 0:
        raise ValueError("window, hop and filters_len must be positive")
    refs = references.to(torch.float64)
    ests = match_length(estimates.to(torch.float64), refs.shape[-1])
    nsrc, nchan, length = refs.shape
    filters, own = _distortion_filters(refs, ests, filters_len)

    frames = num_windows(length, window, hop)
    width = min(window, length)
    n_fft = _fast_len(width + filters_len - 1)
    # Filter spectra as one matrix per frequency, (freq, 2 * k, k): rows 0..k-1 map
    # every reference to target (j, c) (``C``), rows k..2k-1 map reference j alone
    # (``Cj``, block-diagonal).
    k = nsrc * nchan
    h_all = filters.permute(0, 4, 1, 2, 3).reshape(k, k, filters_len)  # ((j, c), p, lag)
    h_own = torch.zeros(nsrc, nchan, nsrc, nchan, filters_len, dtype=refs.dtype, device=refs.device)
    for j in range(nsrc):
        h_own[j, :, j] = own[j].permute(2, 0, 1)  # (c, cj, lag)
    h = torch.cat([h_all, h_own.reshape(k, k, filters_len)])
    h_f = _real_operand(torch.fft.rfft(h, n=n_fft).permute(2, 0, 1))  # (freq, 2k, k) as real
    weight = torch.full((n_fft // 2 + 1, 1, 1), 2.0, dtype=torch.float64, device=refs.device)
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0
    weight /= n_fft

    def energy(spec: Tensor) -> Tensor:  # (freq, window, k) -> (source, window), Parseval
        power = (spec.real.square() + spec.imag.square()) * weight
        return power.sum(0).reshape(-1, nsrc, nchan).sum(-1).T

    out = torch.empty(4, nsrc, frames, dtype=torch.float64, device=refs.device)
    for start in range(0, frames, chunk_windows):
        stop = min(frames, start + chunk_windows)
        span = slice(start * hop, (stop - 1) * hop + width)
        ref_win = refs[..., span].unfold(-1, width, hop)  # (source, channel, window, width)
        est_win = ests[..., span].unfold(-1, width, hop)
        silent = (ref_win.sum(1) == 0).all(-1).any(0) | (est_win.sum(1) == 0).all(-1).any(0)
        ref_f = torch.fft.rfft(ref_win.reshape(k, stop - start, width), n=n_fft).permute(2, 1, 0)
        est_f = torch.fft.rfft(est_win.reshape(k, stop - start, width), n=n_fft).permute(2, 1, 0)
        proj = _complex_bmm(ref_f, operand=h_f)  # (freq, window, 2k)
        proj_all, proj_own = proj[..., :k], proj[..., k:]
        true_energy = energy(ref_f)
        sdr = _db(true_energy, energy(est_f - ref_f))
        isr = _db(true_energy, energy(proj_own - ref_f))
        sir = _db(energy(proj_own), energy(proj_all - proj_own))
        sar = _db(energy(proj_all), energy(est_f - proj_all))
        scores = torch.stack([sdr, isr, sir, sar])  # (4, source, window)
        out[:, :, start:stop] = scores.masked_fill(silent, float("nan"))
    return BssEvalScores(out[0], out[1], out[2], out[3])
