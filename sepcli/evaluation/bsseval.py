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

When windows tile the track (``hop == window``, or a single window; the common
case) on CPU, one FFT of every window of every reference and estimate (numpy's
pocketfft, written straight into a frequency-major layout) serves steps 1 and 3:
step 1 sums the windows' cross-spectra with one batched matrix product and adds
the pairs of samples that straddle window edges from short segments around
each edge; step 3 reuses the same spectra, in frequency chunks that stay in
cache. The Gram system is built from strided (Toeplitz) views of the
correlations and solved by Cholesky (half the work of LU), falling back to LU
when rounding makes the loaded Gram matrix indefinite. The window FFTs and the
energy loop, made of many small steps, are numpy code split over as many Python
threads as torch has intra-op threads (numpy releases the GIL), so every core
works without a thread wake-up per step; torch's own thread setting, which is
process-wide, is only read, never changed.

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

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
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


def _solve(loaded: Tensor, rhs: Tensor) -> Tensor:
    """``loaded^-1 rhs`` for a symmetric ``(n, n)`` Gram matrix already loaded with
    ``eps I`` (museval's ``G + eps I``) and ``(n, k)`` ``rhs``.

    Cholesky when ``loaded`` is positive definite in floating point (half the
    work of LU), else LU (museval's ``np.linalg.solve``), else least squares
    (exactly singular, museval's fallback).
    """
    factor, info = torch.linalg.cholesky_ex(loaded)
    if int(info) == 0:
        half = torch.linalg.solve_triangular(factor, rhs, upper=False)
        return torch.linalg.solve_triangular(factor.mT, half, upper=True)
    try:
        return torch.linalg.solve(loaded, rhs.contiguous())
    except RuntimeError:
        return torch.linalg.lstsq(loaded.cpu(), rhs.cpu(), driver="gelsd").solution.to(
            loaded.device
        )


def _basis(signals: Tensor, energy: Tensor) -> list[int]:
    """Indices of the reference signals ``(k, time)`` that span the projection space.

    An all-zero channel, or a channel equal to an earlier one (a mono stem stored
    as stereo), adds nothing to the span of delayed references but makes the Gram
    matrix exactly singular; it is left out. museval keeps it and relies on its
    ``eps`` loading and rounding; the projections are the same. ``energy`` ``(k,)``
    (lag-0 autocorrelations) only prefilters the exact comparisons, which read the
    whole signals.
    """
    keep: list[int] = []
    for p in range(signals.shape[0]):
        if float(energy[p]) <= 1e-300 and not bool(signals[p].any()):
            continue
        if any(
            abs(float(energy[p] - energy[q])) <= 1e-6 * float(energy[q])
            and torch.equal(signals[p], signals[q])
            for q in keep
        ):
            continue
        keep.append(p)
    return keep


def _distortion_filters(
    corr: Tensor, references: Tensor, filters_len: int
) -> tuple[Tensor, Tensor]:
    """museval's ``C`` and ``Cj`` filters, estimated on the whole signals.

    Args:
        corr: ``(2 * k, k, 2 * filters_len - 1)`` lagged correlations of the
            references then the estimates (``k = source * channel`` each) with the
            references (see :func:`_lagged_correlations`).
        references: ``(source, channel, time)`` float64.

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
    keep = _basis(refs, corr[torch.arange(k), torch.arange(k), lag - 1])
    kept = len(keep)
    index_keep = torch.tensor(keep, dtype=torch.long, device=refs.device)
    # Gram of delayed references: G[(p, a), (q, b)] = sum_n x_p[n - a] x_q[n - b] = r_qp(a - b),
    # Toeplitz in (a, b): windows of the lag-reversed correlations, one copy.
    kept_corr = corr[:k][index_keep][:, index_keep].flip(-1)  # (q, p, 2 lag - 1), lag b - a
    windows = kept_corr.unfold(-1, lag, 1).flip(2)  # (q, p, a, b) = r_qp(a - b)
    gram = windows.permute(1, 2, 0, 3).reshape(kept * lag, kept * lag)
    gram.diagonal().add_(_EPS64)  # museval's loading, also of each source's own block
    # D[(p, a), (j, c)] = sum_n x_p[n - a] e_jc[n] = r_(e_jc, x_p)(a)
    cross = corr[k:][:, index_keep][:, :, lag - 1 :].permute(1, 2, 0).reshape(kept * lag, k)

    filters = torch.zeros(k, lag, k, dtype=refs.dtype, device=refs.device)
    filters[keep] = _solve(gram, cross).reshape(kept, lag, k)
    filters = filters.reshape(nsrc, nchan, lag, nsrc, nchan).permute(3, 0, 1, 2, 4)
    own = torch.zeros(nsrc, nchan, lag, nchan, dtype=refs.dtype, device=refs.device)
    for j in range(nsrc):
        rows = [i for i, p in enumerate(keep) if p // nchan == j]
        if not rows:
            continue
        sel = slice(rows[0] * lag, (rows[-1] + 1) * lag)  # keep is sorted: j's rows are adjacent
        solved = _solve(gram[sel, sel], cross[sel, j * nchan : (j + 1) * nchan])
        own[j, [keep[i] % nchan for i in rows]] = solved.reshape(len(rows), lag, nchan)
    return filters, own


def _block_spectra(signals: tuple[Tensor, ...], block: int, n_fft: int) -> Tensor:
    """rfft of consecutive blocks of every signal, frequency-major.

    Args:
        signals: CPU float64 tensors ``(k_i, time)``, all the same length.
        block: block length in samples; the last block may be shorter.
        n_fft: FFT size (``>= block``; blocks are zero-padded).

    Returns:
        ``(n_fft // 2 + 1, blocks, sum k_i)`` complex128: spectrum of block ``b``
        of channel ``c`` (channels of the signals in order) at ``[:, b, c]``.
    """
    length = signals[0].shape[-1]
    full, rest = divmod(length, block)
    blocks = full + (rest > 0)
    total = sum(x.shape[0] for x in signals)
    out = np.empty((n_fft // 2 + 1, blocks, total), dtype=np.complex128)
    jobs: list[Callable[[], None]] = []
    first = 0
    for x in signals:
        data = np.ascontiguousarray(x.detach().numpy())
        k = data.shape[0]
        step = max(1, -(-k // 2))  # two jobs per signal: every thread gets work
        for c0 in range(0, k, step):
            c1 = min(k, c0 + step)
            jobs.append(
                lambda d=data[c0:c1], o=out[:, :, first + c0 : first + c1]: _rfft_blocks(
                    d, o, block, full, rest, n_fft
                )
            )
        first += k
    _in_parallel(jobs)
    return torch.from_numpy(out)


def _rfft_blocks(
    data: np.ndarray, out: np.ndarray, block: int, full: int, rest: int, n_fft: int
) -> None:
    """rfft of the blocks of ``data`` ``(k, time)`` into ``out`` ``(freq, blocks, k)``."""
    # (time in block, block, channel) view: pocketfft reads contiguous lines and
    # writes the frequency-major layout that the batched products need.
    k = data.shape[0]
    view = np.lib.stride_tricks.as_strided(
        data, shape=(block, full, k), strides=(8, 8 * block, data.strides[0])
    )
    np.fft.rfft(view, n=n_fft, axis=0, out=out[:, :full])
    if rest:
        out[:, full] = np.fft.rfft(data[:, full * block :], n=n_fft).T


def _cross_spectrum(x: Tensor, y: Tensor) -> Tensor:
    """``sum_b x[f, b, k] conj(y[f, b, l])`` for complex ``(freq, blocks, kx)`` and
    ``(freq, blocks, ky)`` (``y`` may be a slice of ``x``'s last axis): ``(freq, kx, ky)``.

    One real batched product on the interleaved (re, im) views gives every
    re*re, re*im, im*re, im*im sum; complex batched products are slower on CPU.
    """
    freq, blocks, kx = x.shape
    ky = y.shape[-1]
    a = torch.view_as_real(x).reshape(freq, blocks, 2 * kx)
    b = torch.view_as_real(y).reshape(freq, blocks, 2 * ky) if y.is_contiguous() else None
    if b is None:  # a slice of x's channels: a strided view of the same memory
        b = (
            a[..., : 2 * ky]
            if y.data_ptr() == x.data_ptr()
            else torch.view_as_real(y.contiguous()).reshape(freq, blocks, 2 * ky)
        )
    prod = torch.bmm(a.transpose(1, 2), b).reshape(freq, kx, 2, ky, 2)
    return torch.complex(
        prod[:, :, 0, :, 0] + prod[:, :, 1, :, 1], prod[:, :, 1, :, 0] - prod[:, :, 0, :, 1]
    )


def _in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs`` on as many Python threads as torch has intra-op threads.

    For loops of small steps (numpy's FFT, small matrix products) that release
    the GIL but gain little from a thread team per op: splitting the work in
    independent parts keeps every core busy without a wake-up per op. The jobs
    use numpy only, so no torch thread setting is touched: torch's is
    process-wide, and library code must not change it.
    """
    workers = min(len(jobs), torch.get_num_threads())
    if workers <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def _tiled_correlations(
    spectra: Tensor, signals: tuple[Tensor, ...], n_fft: int, block: int, max_lag: int
) -> Tensor:
    """Linear cross-correlations for small lags from the spectra of a tiling.

    The cross-spectra of the zero-padded blocks sum to the correlation of the
    signals minus the pairs of samples that straddle a block edge; those are added
    from segments of ``2 * max_lag`` samples around each edge (blocks must be at
    least ``max_lag`` long, except the last).

    Args:
        spectra: ``(freq, blocks, kx)`` from :func:`_block_spectra`.
        signals: the signals of ``spectra``, float64 ``(k_i, time)`` each; ``x`` is
            all their channels, ``y`` the channels of the first one.
        n_fft: FFT size of ``spectra``, ``>= block + max_lag``.
        block: block length of ``spectra``.
        max_lag: largest absolute lag, in samples.

    Returns:
        ``(kx, ky, 2 * max_lag + 1)`` as :func:`_lagged_correlations`.
    """
    freq, blocks, kx = spectra.shape
    num_y = signals[0].shape[0]
    circ = torch.fft.irfft(_cross_spectrum(spectra, spectra[..., :num_y]).permute(1, 2, 0), n=n_fft)
    corr = torch.cat([circ[..., n_fft - max_lag :], circ[..., : max_lag + 1]], -1)
    if blocks == 1 or max_lag == 0:
        return corr
    length = signals[0].shape[-1]
    edges = torch.arange(1, blocks) * block
    index = edges[:, None] + torch.arange(-max_lag, max_lag)
    inside = index < length
    index = index.clamp(max=length - 1)
    seg = torch.cat([x[:, index] * inside for x in signals])  # (kx, edges, 2 max_lag)
    left, right = seg.clone(), seg
    left[..., max_lag:] = 0.0
    right[..., :max_lag] = 0.0
    n_seg = _fast_len(3 * max_lag + 1)
    lf = torch.fft.rfft(left, n=n_seg).permute(2, 1, 0).contiguous()  # (freq, edge, kx)
    rf = torch.fft.rfft(right, n=n_seg).permute(2, 1, 0).contiguous()
    # (l + r) x (l + r)* - l l* - r r*: only the pairs across the edge
    edge_cross = _cross_spectrum(lf, rf[..., :num_y]) + _cross_spectrum(rf, lf[..., :num_y])
    circ = torch.fft.irfft(edge_cross.permute(1, 2, 0), n=n_seg)
    return corr + torch.cat([circ[..., n_seg - max_lag :], circ[..., : max_lag + 1]], -1)


def _silent_windows(signals: Tensor, frames: int, width: int, hop: int, chunk: int = 8) -> Tensor:
    """``(frames,)`` bool: windows where some source sums to zero over channels at
    every sample (museval's ``_any_source_silent``), for ``(source, channel, time)``."""
    if signals.device.type == "cpu":  # numpy: no torch thread team for these small steps
        x = signals.detach().numpy()
        out = np.empty(frames, dtype=bool)
        for start in range(0, frames, chunk):
            stop = min(frames, start + chunk)
            span = x[..., start * hop : (stop - 1) * hop + width]
            win = np.lib.stride_tricks.sliding_window_view(span, width, axis=-1)[..., ::hop, :]
            out[start:stop] = (win.sum(1) == 0).all(-1).any(0)
        return torch.from_numpy(out)
    out_t = torch.empty(frames, dtype=torch.bool, device=signals.device)
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        win_t = signals[..., start * hop : (stop - 1) * hop + width].unfold(-1, width, hop)
        out_t[start:stop] = (win_t.sum(1) == 0).all(-1).any(0)
    return out_t


def _tiled_energies(
    spectra: Tensor, h: Tensor, n_fft: int, frames: int, nsrc: int, chunk: int = 32
) -> Tensor:
    """The seven energies of museval's decomposition per window, by Parseval.

    Args:
        spectra: ``(freq, blocks, 2 * k)`` window spectra, references then estimates.
        h: ``(2 * k, k, filters_len)`` filters: rows ``0..k-1`` map every reference
            to target ``(j, c)`` (``C``), rows ``k..2k-1`` reference ``j`` alone (``Cj``).
        n_fft: FFT size of ``spectra``.
        frames: number of windows (the first ``frames`` blocks).
        nsrc: number of sources.
        chunk: frequencies per step (keeps the temporaries in cache).

    Returns:
        ``(7, source, frames)``: energies of ``s``, ``e - s``, ``P_j - s``, ``P_j``,
        ``P - P_j``, ``P``, ``e - P`` (``s`` the reference, ``e`` the estimate,
        ``P``/``P_j`` the projections on all references / on reference ``j``),
        summed over channels.
    """
    freq, _, k2 = spectra.shape
    k = k2 // 2
    hf = torch.fft.rfft(h, n=n_fft).permute(2, 1, 0)  # (freq, in p, out o)
    # real operands: [xr, xi] per input -> [yr, yi] per output, y = sum_p x_p h_p
    to_all = torch.empty(freq, k, 2, k, 2, dtype=torch.float64)
    to_own = torch.empty(freq, k, 2, k, 2, dtype=torch.float64)
    for operand, part in ((to_all, hf[..., :k]), (to_own, hf[..., k:])):
        operand[:, :, 0, :, 0] = part.real
        operand[:, :, 0, :, 1] = part.imag
        operand[:, :, 1, :, 0] = -part.imag
        operand[:, :, 1, :, 1] = part.real
    to_all, to_own = to_all.reshape(freq, 2 * k, 2 * k), to_own.reshape(freq, 2 * k, 2 * k)
    weight = torch.full((freq,), 2.0 / n_fft, dtype=torch.float64)
    weight[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        weight[-1] = 1.0 / n_fft  # the Nyquist bin counts once
    # numpy from here: the parts run on worker threads (see _in_parallel)
    a = torch.view_as_real(spectra).reshape(freq, spectra.shape[1], 2 * k2)[:, :frames].numpy()
    all_np, own_np, weight_np = to_all.numpy(), to_own.numpy(), weight.numpy()

    def part(f_start: int, f_stop: int, total: np.ndarray) -> None:
        buf = np.empty((7, chunk, frames, 2 * k))
        for f0 in range(f_start, f_stop, chunk):
            f1 = min(f_stop, f0 + chunk)
            s, e = a[f0:f1, :, : 2 * k], a[f0:f1, :, 2 * k :]
            d = buf[:, : f1 - f0]
            p_all, p_own = d[5], d[3]
            np.matmul(s, all_np[f0:f1], out=p_all)
            np.matmul(s, own_np[f0:f1], out=p_own)
            d[0] = s
            np.subtract(e, s, out=d[1])
            np.subtract(p_own, s, out=d[2])
            np.subtract(p_all, p_own, out=d[4])
            np.subtract(e, p_all, out=d[6])
            np.square(d, out=d)
            total += weight_np[f0:f1] @ d.reshape(7, f1 - f0, -1)

    # contiguous frequency ranges, whole chunks, one per thread
    chunks = -(-freq // chunk)
    parts = max(1, min(torch.get_num_threads(), chunks))
    per = -(-chunks // parts) * chunk
    totals = [np.zeros((7, frames * 2 * k)) for _ in range(parts)]
    _in_parallel([
        lambda i=i: part(i * per, min(freq, (i + 1) * per), totals[i]) for i in range(parts)
    ])  # fmt: skip
    total = torch.from_numpy(np.stack(totals).sum(0))
    return total.reshape(7, frames, nsrc, -1).sum(-1).transpose(1, 2)


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
        chunk_windows: windows processed at once when windows overlap (bounds
            memory: about ``100 * source * channel * window * chunk_windows``
            bytes). Windows that tile the track (``hop == window``) are all
            transformed at once: about twice the float64 input's size.

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
    k = nsrc * nchan
    frames = num_windows(length, window, hop)
    width = min(window, length)
    n_fft = _fast_len(width + filters_len - 1)
    max_lag = filters_len - 1
    # Windows that tile the track: their spectra also give the correlations.
    tiled = refs.device.type == "cpu" and (hop == width or frames == 1) and width >= max_lag
    flat_refs, flat_ests = refs.reshape(k, length), ests.reshape(k, length)
    if tiled:
        spectra = _block_spectra((flat_refs, flat_ests), width, n_fft)
        corr = _tiled_correlations(spectra, (flat_refs, flat_ests), n_fft, width, max_lag)
    else:
        corr = _lagged_correlations(torch.cat([flat_refs, flat_ests]), flat_refs, max_lag)
    filters, own = _distortion_filters(corr, refs, filters_len)

    # Filter spectra as one matrix per frequency, (freq, 2 * k, k): rows 0..k-1 map
    # every reference to target (j, c) (``C``), rows k..2k-1 map reference j alone
    # (``Cj``, block-diagonal).
    h_all = filters.permute(0, 4, 1, 2, 3).reshape(k, k, filters_len)  # ((j, c), p, lag)
    h_own = torch.zeros(nsrc, nchan, nsrc, nchan, filters_len, dtype=refs.dtype, device=refs.device)
    for j in range(nsrc):
        h_own[j, :, j] = own[j].permute(2, 0, 1)  # (c, cj, lag)
    h = torch.cat([h_all, h_own.reshape(k, k, filters_len)])
    silent = _silent_windows(refs, frames, width, hop) | _silent_windows(ests, frames, width, hop)
    if tiled:
        energies = _tiled_energies(spectra, h, n_fft, frames, nsrc)
        true_energy, err, spat, own_e, interf, all_e, artif = energies
        scores = torch.stack([
            _db(true_energy, err),
            _db(true_energy, spat),
            _db(own_e, interf),
            _db(all_e, artif),
        ])  # fmt: skip
        out = scores.masked_fill(silent, float("nan"))
        return BssEvalScores(out[0], out[1], out[2], out[3])

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
        ref_f = torch.fft.rfft(ref_win.reshape(k, stop - start, width), n=n_fft).permute(2, 1, 0)
        est_f = torch.fft.rfft(est_win.reshape(k, stop - start, width), n=n_fft).permute(2, 1, 0)
        proj = _complex_bmm(ref_f, operand=h_f)  # (freq, window, 2k)
        proj_all, proj_own = proj[..., :k], proj[..., k:]
        true_energy = energy(ref_f)
        sdr = _db(true_energy, energy(est_f - ref_f))
        isr = _db(true_energy, energy(proj_own - ref_f))
        sir = _db(energy(proj_own), energy(proj_all - proj_own))
        sar = _db(energy(proj_all), energy(est_f - proj_all))
        out[:, :, start:stop] = torch.stack([sdr, isr, sir, sar])  # (4, source, window)
    out = out.masked_fill(silent, float("nan"))
    return BssEvalScores(out[0], out[1], out[2], out[3])
