"""Training losses, one per kind of model output.

* ``magnitude`` output (Open-Unmix): mean squared error between estimated and
  true source magnitudes (Stöter et al., JOSS 2019).
* ``complex`` output (TFC-TDF, MDX 2021): L1 on the real and imaginary parts of
  the source spectrograms.
* ``waveform`` output (Demucs): L1 on the samples (Défossez et al. 2019),
  optionally plus the multi-resolution STFT loss of Yamamoto et al., "Parallel
  WaveGAN", ICASSP 2020 (spectral convergence + log-magnitude L1).

Every loss takes the model output and the true sources ``(batch, source,
channel, time)`` and returns a scalar tensor. Spectrograms come from
:mod:`sepcli.dsp.stft` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sepcli.dsp.stft import hann_window, stft
from sepcli.errors import TrainingError

__all__ = [
    "DEFAULT_LOSS",
    "LossFn",
    "magnitude_mse",
    "complex_l1",
    "time_l1",
    "multi_resolution_stft",
    "make_loss",
]

LossFn = Callable[[Tensor, Tensor], Tensor]

#: loss used by ``loss = "auto"`` for each output kind.
DEFAULT_LOSS = {"magnitude": "mse", "complex": "l1-complex", "waveform": "l1-time"}
_ALLOWED = {
    "magnitude": ("mse",),
    "complex": ("l1-complex",),
    "waveform": ("l1-time", "mrstft", "l1-time+mrstft"),
}
MRSTFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))


def magnitude_mse(est_mag: Tensor, targets: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """MSE between magnitudes.

    Args:
        est_mag: ``(batch, source, channel, freq, frame)`` real >= 0.
        targets: true sources ``(batch, source, channel, time)``.
    """
    true_mag = stft(targets, n_fft, hop_length, hann_window(n_fft, targets.device)).abs()
    return torch.mean((est_mag.float() - true_mag) ** 2)


def complex_l1(est_spec: Tensor, targets: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Mean absolute error of real and imaginary parts.

    Args:
        est_spec: ``(batch, source, channel, freq, frame)`` complex.
        targets: true sources ``(batch, source, channel, time)``.
    """
    true_spec = stft(targets, n_fft, hop_length, hann_window(n_fft, targets.device))
    return torch.mean(
        torch.abs(torch.view_as_real(est_spec.to(torch.complex64)) - torch.view_as_real(true_spec))
    )


def time_l1(est: Tensor, targets: Tensor) -> Tensor:
    """Mean absolute error of waveforms ``(batch, source, channel, time)``."""
    return torch.mean(torch.abs(est.float() - targets))


def multi_resolution_stft(
    est: Tensor,
    targets: Tensor,
    resolutions: Sequence[tuple[int, int]] = MRSTFT_RESOLUTIONS,
    eps: float = 1e-7,
) -> Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020), averaged over resolutions.

    For each ``(n_fft, hop_length)``: spectral convergence
    ``||S - Ŝ||_F / ||S||_F`` plus ``mean |log S - log Ŝ|`` on magnitudes.

    Args:
        est, targets: waveforms ``(batch, source, channel, time)``.
    """
    total = est.new_zeros((), dtype=torch.float32)
    for n_fft, hop in resolutions:
        window = hann_window(n_fft, est.device)
        e = stft(est.float(), n_fft, hop, window).abs()
        t = stft(targets, n_fft, hop, window).abs()
        sc = torch.linalg.vector_norm(t - e) / (torch.linalg.vector_norm(t) + eps)
        mag = torch.mean(torch.abs(torch.log(t + eps) - torch.log(e + eps)))
        total = total + sc + mag
    return total / len(resolutions)


def make_loss(
    output: str, name: str = "auto", n_fft: int = 0, hop_length: int = 0
) -> tuple[str, LossFn]:
    """The loss ``name`` for a model whose output kind is ``output``.

    Returns:
        ``(resolved_name, fn)`` with ``fn(model_output, targets) -> scalar``.

    Raises:
        TrainingError: a loss that does not fit the output kind, or missing STFT
            parameters for a spectrogram output.
    """
    if output not in _ALLOWED:
        raise TrainingError(f"unknown model output kind {output!r}")
    resolved = DEFAULT_LOSS[output] if name == "auto" else name
    if resolved not in _ALLOWED[output]:
        raise TrainingError(
            f"loss {resolved!r} does not fit a {output} model (use one of {', '.join(_ALLOWED[output])})"
        )
    if output != "waveform" and (n_fft <= 0 or hop_length <= 0):
        raise TrainingError(f"a {output} loss needs the model's STFT parameters")
    if resolved == "mse":
        return resolved, lambda out, y: magnitude_mse(out, y, n_fft, hop_length)
    if resolved == "l1-complex":
        return resolved, lambda out, y: complex_l1(out, y, n_fft, hop_length)
    if resolved == "l1-time":
        return resolved, time_l1
    if resolved == "mrstft":
        return resolved, multi_resolution_stft
    return resolved, lambda out, y: time_l1(out, y) + multi_resolution_stft(out, y)
