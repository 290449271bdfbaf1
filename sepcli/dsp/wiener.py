"""Multichannel Wiener filtering with expectation-maximisation (EM) refinement.

A torch port, on native complex tensors and vectorised over batch and sources,
of ``norbert.wiener`` (Liutkus, Stöter et al.), which Open-Unmix uses to refine
the magnitudes a network predicts. The sources are modelled as local Gaussian
processes: source ``j`` at bin ``f``, frame ``n`` has covariance
``v_j(f, n) R_j(f)`` with a power spectral density ``v_j`` and a spatial
covariance matrix ``R_j``. Each EM iteration re-estimates ``(v_j, R_j)`` from
the current source estimates and separates the mixture again with the
multichannel Wiener gain ``v_j R_j Cxx^-1``, ``Cxx = sum_j v_j R_j``.

The arithmetic follows norbert exactly (same scaling of the mixture by its
maximum magnitude / 10, same ``sqrt(eps)`` diagonal regularisation, same
``eps``-weighted spatial covariance update, same analytic 2x2 inverse), so that
results agree with ``norbert.wiener`` to float precision. Like Open-Unmix's
separator, long inputs are filtered in independent windows of
``window_frames`` frames, so memory is bounded by the window, not the track.

References:
    A. A. Nugraha, A. Liutkus, E. Vincent, "Multichannel audio source separation
    with deep neural networks", IEEE/ACM TASLP 24(9), 2016.
    N. Q. K. Duong, E. Vincent, R. Gribonval, "Under-determined reverberant audio
    source separation using a full-rank spatial covariance model", IEEE TASLP
    18(7), 2010.
    S. Uhlich et al., "Improving music source separation based on deep neural
    networks through data augmentation and network blending", ICASSP 2017.
    A. Liutkus, R. Badeau, G. Richard, "Kernel additive models for source
    separation", IEEE TSP 62(16), 2014.
    norbert: https://github.com/sigsep/norbert (the reference implementation).

Numerical note: the EM runs in the dtype of ``mix_spec``. In ``complex64`` the
analytic 2x2 inverse can lose precision where one source dominates and is
nearly mono (the mixture covariance is then close to rank one); pass a
``complex128`` mixture for double precision, as norbert recommends.

All functions here are TorchScript-scriptable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepcli.dsp.stft import unit_phase

__all__ = ["wiener", "softmask", "expectation_maximization", "invert_covariance"]

#: Default regularisation, the value Open-Unmix's separator uses.
DEFAULT_EPS: float = 1e-10


def softmask(magnitudes: Tensor, mix_spec: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Ratio mask: each source gets ``v_j / (eps + sum_k v_k)`` of the mixture.

    Args:
        magnitudes: ``(batch, source, channel or 1, freq, frame)`` real, >= 0.
        mix_spec: ``(batch, channel, freq, frame)`` complex.
        eps: added to the denominator.

    Returns:
        ``(batch, source, channel, freq, frame)`` complex.
    """
    total = magnitudes.sum(dim=1, keepdim=True)
    return mix_spec.unsqueeze(1) * (magnitudes / (eps + total))


def invert_covariance(cov: Tensor, eps: float) -> Tensor:
    """Inverse of a batch of small Hermitian matrices, as norbert does it.

    ``1 / (m + eps)`` for 1x1, the analytic inverse for 2x2 (no ``eps``: the
    caller regularises), a pseudo-inverse with relative cut-off ``eps`` above.

    Args:
        cov: ``(..., channel, channel)`` complex.
        eps: regularisation for the 1x1 and general cases.

    Returns:
        ``(..., channel, channel)`` complex.
    """
    channels = cov.shape[-1]
    if channels == 1:
        return 1.0 / (cov + eps)
    if channels == 2:
        a = cov[..., 0, 0]
        b = cov[..., 0, 1]
        c = cov[..., 1, 0]
        d = cov[..., 1, 1]
        inv_det = 1.0 / (a * d - b * c)
        row0 = torch.stack([inv_det * d, -inv_det * b], dim=-1)
        row1 = torch.stack([-inv_det * c, inv_det * a], dim=-1)
        return torch.stack([row0, row1], dim=-2)
    return torch.linalg.pinv(cov, rtol=eps)


def _em_step(yt: Tensor, xt: Tensor, regularization: Tensor, eps: float) -> Tensor:
    """One EM iteration on a window.

    Args:
        yt: source estimates ``(batch, source, freq, channel, frame)`` complex.
        xt: mixture ``(batch, freq, channel, frame)`` complex.
        regularization: ``(channel, channel)`` complex, ``sqrt(eps) * I``.

    Returns:
        new estimates, same shape as ``yt``.
    """
    batch, sources, freqs, channels, frames = yt.shape
    # local Gaussian model: PSD = mean power over channels ...
    v = (yt.real.square() + yt.imag.square()).mean(dim=3)  # (B, S, F, N)
    # ... and spatial covariance = sum_n y y^H / (eps + sum_n v), norbert's weighting
    r = torch.matmul(yt, yt.conj().transpose(-1, -2))  # (B, S, F, C, C)
    weight = eps + v.sum(dim=-1)  # (B, S, F)
    r = r / weight.unsqueeze(-1).unsqueeze(-1)
    # mixture covariance Cxx(f, n) = reg + sum_j v_j(f, n) R_j(f)
    v_c = v.to(yt.dtype).permute(0, 2, 3, 1)  # (B, F, N, S)
    r_flat = r.permute(0, 2, 1, 3, 4).reshape(batch, freqs, sources, channels * channels)
    cxx = torch.matmul(v_c, r_flat).reshape(batch, freqs, frames, channels, channels)
    cxx = cxx + regularization
    inv_cxx = invert_covariance(cxx, eps)  # (B, F, N, C, C)
    # posterior mean y_j = v_j R_j Cxx^-1 x
    z = torch.matmul(inv_cxx, xt.permute(0, 1, 3, 2).unsqueeze(-1)).squeeze(-1)  # (B, F, N, C)
    z = z.permute(0, 1, 3, 2).unsqueeze(1)  # (B, 1, F, C, N)
    return v.unsqueeze(3) * torch.matmul(r, z)


def _abs2(z: Tensor) -> Tensor:
    """``|z|^2`` of a complex tensor, as a real tensor."""
    return torch.view_as_real(z).square().sum(dim=-1)


def _em_step_stereo(
    y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """One EM iteration for two channels, element-wise on the Hermitian parts.

    Same arithmetic as :func:`_em_step` (norbert's), written without batched 2x2
    matrix products, which are slow: ``R_j`` and ``Cxx`` are Hermitian, so only
    their real diagonals and one off-diagonal term are formed, and the inverse
    uses the real determinant ``c00 c11 - |c01|^2``.

    Args:
        y0, y1: channel 0 and 1 of the estimates, ``(batch, source, freq, frame)`` complex.
        x0, x1: channel 0 and 1 of the mixture, ``(batch, freq, frame)`` complex.

    Returns:
        the new ``(y0, y1)``.
    """
    # torch multiplies real by complex tensors far slower than complex by complex,
    # so every factor that meets a full-size complex tensor is made complex first
    p0 = _abs2(y0)
    p1 = _abs2(y1)
    v = (p0 + p1) / 2.0  # (B, S, F, N)
    v_c = v.to(y0.dtype)
    weight = (eps + v.sum(dim=-1)).unsqueeze(-1)  # (B, S, F, 1)
    r00 = p0.sum(dim=-1, keepdim=True) / weight
    r11 = p1.sum(dim=-1, keepdim=True) / weight
    r01 = (y0 * y1.conj()).sum(dim=-1, keepdim=True) / weight.to(y0.dtype)
    reg = eps**0.5
    c00 = (v * r00).sum(dim=1) + reg  # (B, F, N)
    c11 = (v * r11).sum(dim=1) + reg
    c01 = (v_c * r01).sum(dim=1)
    inv_det = (1.0 / (c00 * c11 - _abs2(c01))).to(y0.dtype)
    z0 = ((c11.to(y0.dtype) * x0 - c01 * x1) * inv_det).unsqueeze(1)  # (B, 1, F, N)
    z1 = ((c00.to(y0.dtype) * x1 - c01.conj() * x0) * inv_det).unsqueeze(1)
    r00_c = r00.to(y0.dtype)
    r11_c = r11.to(y0.dtype)
    r10 = torch.conj_physical(r01)
    return v_c * (r00_c * z0 + r01 * z1), v_c * (r10 * z0 + r11_c * z1)


def expectation_maximization(
    estimates: Tensor, mix_spec: Tensor, iterations: int = 2, eps: float = DEFAULT_EPS
) -> Tensor:
    """Refine complex source estimates with ``iterations`` EM steps (norbert's scheme).

    No scaling is applied here (see :func:`wiener`); ``iterations == 0`` returns
    the estimates unchanged.

    Args:
        estimates: ``(batch, source, channel, freq, frame)`` complex.
        mix_spec: ``(batch, channel, freq, frame)`` complex, same dtype.
        iterations: number of EM iterations.
        eps: regularisation (``sqrt(eps) I`` is added to the mixture covariance).

    Returns:
        ``(batch, source, channel, freq, frame)`` complex.
    """
    if iterations <= 0:
        return estimates
    channels = mix_spec.shape[1]
    if channels == 2:
        y0, y1 = estimates[:, :, 0], estimates[:, :, 1]
        x0, x1 = mix_spec[:, 0], mix_spec[:, 1]
        for _ in range(iterations):
            y0, y1 = _em_step_stereo(y0, y1, x0, x1, eps)
        return torch.stack([y0, y1], dim=2)
    regularization = (eps**0.5) * torch.eye(channels, dtype=mix_spec.dtype, device=mix_spec.device)
    yt = estimates.permute(0, 1, 3, 2, 4)  # (B, S, F, C, N)
    xt = mix_spec.permute(0, 2, 1, 3)  # (B, F, C, N)
    for _ in range(iterations):
        yt = _em_step(yt, xt, regularization, eps)
    return yt.permute(0, 1, 3, 2, 4)


def _wiener_window(
    magnitudes: Tensor,
    mix_spec: Tensor,
    iterations: int,
    use_softmask: bool,
    residual: bool,
    eps: float,
) -> Tensor:
    if use_softmask:
        y = softmask(magnitudes, mix_spec, eps)
    else:
        y = magnitudes * unit_phase(mix_spec).unsqueeze(1)  # mixture phase
    if residual:
        y = torch.cat([y, (mix_spec - y.sum(dim=1)).unsqueeze(1)], dim=1)
    if iterations <= 0:
        return y
    # norbert scales the mixture so that its largest magnitude is at most 10,
    # for numerical stability; eps and the regularisation act on that scale
    peak = mix_spec.abs().flatten(1).amax(dim=1) / 10.0  # (B,)
    max_abs = torch.clamp(peak, min=1.0).to(mix_spec.dtype)
    scale = max_abs.view(-1, 1, 1, 1)
    y = expectation_maximization(y / scale.unsqueeze(1), mix_spec / scale, iterations, eps)
    return y * scale.unsqueeze(1)


def wiener(
    magnitudes: Tensor,
    mix_spec: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    window_frames: int = 300,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Multichannel Wiener filter with EM iterations (``norbert.wiener``).

    The initial estimates are the magnitudes with the mixture phase
    (``softmask=False``; Open-Unmix's default, best for good magnitude
    estimates) or a ratio mask of the mixture (``softmask=True``). With
    ``residual=True`` an extra source ``mixture - sum of estimates`` is appended
    before the EM (Open-Unmix's ``--residual``). ``iterations=0`` returns these
    initial estimates. Each window of ``window_frames`` frames is filtered
    independently (its own scaling and spatial covariances), as in Open-Unmix's
    separator; ``window_frames <= 0`` filters the whole input at once.

    Args:
        magnitudes: ``(batch, source, channel or 1, freq, frame)`` real, >= 0:
            estimated magnitude spectrograms.
        mix_spec: ``(batch, channel, freq, frame)`` complex STFT of the mixture
            (its dtype sets the working precision).
        iterations: number of EM iterations.
        softmask: initial estimates by ratio mask instead of mixture phase.
        residual: append the residual source.
        window_frames: frames per independent window.
        eps: regularisation; ``sqrt(eps)`` is added to the diagonal of the
            mixture covariance and ``eps`` to the denominators.

    Returns:
        ``(batch, source [+1 if residual], channel, freq, frame)`` complex, the
        dtype of ``mix_spec``.
    """
    if magnitudes.dim() != 5 or mix_spec.dim() != 4:
        raise ValueError(
            "wiener expects magnitudes (batch, source, channel, freq, frame) and "
            "mix_spec (batch, channel, freq, frame)"
        )
    if not mix_spec.is_complex():
        raise ValueError("wiener expects a complex mix_spec")
    if (
        magnitudes.shape[0] != mix_spec.shape[0]
        or magnitudes.shape[3] != mix_spec.shape[2]
        or magnitudes.shape[4] != mix_spec.shape[3]
        or (magnitudes.shape[2] != 1 and magnitudes.shape[2] != mix_spec.shape[1])
    ):
        raise ValueError(
            f"wiener: magnitudes {magnitudes.shape} do not match mix_spec {mix_spec.shape}"
        )
    magnitudes = magnitudes.to(mix_spec.real.dtype)
    frames = mix_spec.shape[-1]
    step = window_frames if window_frames > 0 else frames
    if step >= frames:
        return _wiener_window(magnitudes, mix_spec, iterations, softmask, residual, eps)
    out: list[Tensor] = []
    for start in range(0, frames, step):
        stop = min(frames, start + step)
        out.append(
            _wiener_window(
                magnitudes[..., start:stop],
                mix_spec[..., start:stop],
                iterations,
                softmask,
                residual,
                eps,
            )
        )
    return torch.cat(out, dim=-1)
