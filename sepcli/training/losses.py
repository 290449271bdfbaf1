"""Training losses, one per kind of model output.

* ``magnitude`` output (Open-Unmix): mean squared error between estimated and
  true source magnitudes (Stöter et al., JOSS 2019).
* ``complex`` output (TFC-TDF, MDX 2021): L1 on the real and imaginary parts of
  the source spectrograms.
* ``waveform`` output (Demucs): L1 on the samples (Défossez et al. 2019),
  optionally plus the multi-resolution STFT loss of Yamamoto et al., "Parallel
  WaveGAN", ICASSP 2020 (spectral convergence + log-magnitude L1).
* any output: ``sdr``, the negative signal-to-distortion ratio of the waveforms
  the separator would write (a magnitude with the mixture phase, a complex
  spectrogram through the inverse STFT), soft-thresholded at 30 dB below the
  mixture (Wisdom et al., "Unsupervised sound separation using mixture
  invariant training", NeurIPS 2020). A one-source model is also scored on
  ``mixture - source``, the accompaniment ``sepcli separate`` derives from it
  (the combination idea of CrossNet-Open-Unmix, Sawata et al., ICASSP 2021).
* magnitude output: ``mse-complex``, the phase-sensitive approximation
  (Erdogan et al., ICASSP 2015): MSE between the complex spectrogram of the
  estimate with the mixture phase and the true complex spectrogram.

Every loss takes the model output, the true sources ``(batch, source,
channel, time)`` and the mixture ``(batch, channel, time)`` and returns a
scalar tensor. Spectrograms come from :mod:`sepcli.dsp.stft` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sepcli.dsp.phase import to_waveform
from sepcli.dsp.stft import hann_window, stft, unit_phase
from sepcli.errors import TrainingError

__all__ = [
    "DEFAULT_LOSS",
    "LossFn",
    "magnitude_mse",
    "complex_l1",
    "time_l1",
    "multi_resolution_stft",
    "sdr_loss",
    "make_loss",
]

#: ``fn(model_output, targets, mixture) -> scalar``.
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: loss used by ``loss = "auto"`` for each output kind.
DEFAULT_LOSS = {"magnitude": "mse", "complex": "l1-complex", "waveform": "l1-time"}
_ALLOWED = {
    "magnitude": ("mse", "mse-complex", "sdr"),
    "complex": ("l1-complex", "sdr"),
    "waveform": ("l1-time", "mrstft", "l1-time+mrstft", "sdr"),
}
#: soft threshold of :func:`sdr_loss`: errors 30 dB below the mixture count as none.
SDR_TAU = 1e-3
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


def _with_rest(est: Tensor, targets: Tensor, mixture: Tensor) -> tuple[Tensor, Tensor]:
    """Append ``mixture - sum of sources`` as one more source to both."""
    est = torch.cat([est, (mixture - est.sum(1)).unsqueeze(1)], 1)
    targets = torch.cat([targets, (mixture - targets.sum(1)).unsqueeze(1)], 1)
    return est, targets


def sdr_loss(
    est: Tensor, targets: Tensor, mixture: Tensor, rest: bool = False, tau: float = SDR_TAU
) -> Tensor:
    """Negative soft-thresholded SDR in dB, averaged over chunks and sources.

    Per chunk and source, over all channels and samples:
    ``10 log10(||s - ŝ||² + τ||x||²) - 10 log10(||s||² + τ||x||²)``, with ``x``
    the chunk's mixture. The threshold keeps the loss bounded for silent
    sources (a silent true source gives ``10 log10(1 + ||ŝ||² / τ||x||²)``,
    zero for a silent estimate) and stops one nearly perfect chunk from
    dominating the batch.

    Args:
        est, targets: waveforms ``(batch, source, channel, time)``.
        mixture: ``(batch, channel, time)``.
        rest: also score ``mixture - sum of sources`` (for one-source models).
        tau: the threshold, relative to the mixture energy.
    """
    est = est.float()
    if rest:
        est, targets = _with_rest(est, targets, mixture)
    floor = tau * mixture.pow(2).sum((-2, -1)).unsqueeze(1) + 1e-8
    err = (targets - est).pow(2).sum((-2, -1))
    ref = targets.pow(2).sum((-2, -1))
    return 10.0 * torch.mean(torch.log10(err + floor) - torch.log10(ref + floor))


def complex_mse(
    est_mag: Tensor, targets: Tensor, mixture: Tensor, n_fft: int, hop_length: int
) -> Tensor:
    """Mean over bins of ``|Ŝ e^{iφ_X} - S|²``: magnitudes with the mixture phase
    against the true complex spectrogram (phase-sensitive approximation).

    Computed on real tensors as ``(Ŝ - P)² + |S|² - P²`` with ``P = Re(S e^{-iφ_X})``,
    the phase-sensitive target. For a one-source model the error of ``mixture -
    source`` is exactly minus the source's, so no separate rest term is needed.
    """
    window = hann_window(n_fft, targets.device)
    phase = unit_phase(stft(mixture, n_fft, hop_length, window)).unsqueeze(1)
    true = stft(targets, n_fft, hop_length, window)
    psa = true.real * phase.real + true.imag * phase.imag
    residual = true.real.square() + true.imag.square() - psa.square()
    return torch.mean((est_mag.float() - psa).square() + residual)


def _waveforms(output: str, out: Tensor, mixture: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """What the separator makes of a model output: ``(batch, source, channel, time)``
    (magnitudes with the mixture phase)."""
    if output == "complex":
        out = out.to(torch.complex64)
    elif output == "magnitude":
        out = out.float()
    return to_waveform(output, out, mixture, n_fft, hop_length, phase="mixture")


def make_loss(
    output: str,
    name: str = "auto",
    n_fft: int = 0,
    hop_length: int = 0,
    num_sources: int = 0,
) -> tuple[str, LossFn]:
    """The loss ``name`` for a model whose output kind is ``output``.

    ``num_sources == 1`` adds the ``mixture - source`` term of ``sdr``.

    Returns:
        ``(resolved_name, fn)`` with ``fn(model_output, targets, mixture) -> scalar``.

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
    rest = num_sources == 1
    if resolved == "mse":
        return resolved, lambda out, y, x: magnitude_mse(out, y, n_fft, hop_length)
    if resolved == "mse-complex":
        return resolved, lambda out, y, x: complex_mse(out, y, x, n_fft, hop_length)
    if resolved == "sdr":
        return resolved, lambda out, y, x: sdr_loss(
            _waveforms(output, out, x, n_fft, hop_length), y, x, rest
        )
    if resolved == "l1-complex":
        return resolved, lambda out, y, x: complex_l1(out, y, n_fft, hop_length)
    if resolved == "l1-time":
        return resolved, lambda out, y, x: time_l1(out, y)
    if resolved == "mrstft":
        return resolved, lambda out, y, x: multi_resolution_stft(out, y)
    return resolved, lambda out, y, x: time_l1(out, y) + multi_resolution_stft(out, y)
