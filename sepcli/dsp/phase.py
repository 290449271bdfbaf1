"""Turning estimated magnitudes into waveforms: the phase step of spectrogram models.

``reconstruct`` is the single entry point the separator calls for archives whose
output is ``"magnitude"``. Methods: ``"mixture"`` (copy the mixture phase),
``"wiener"`` (multichannel Wiener EM, :mod:`sepcli.dsp.wiener`) and
``"griffin-lim"`` (:mod:`sepcli.dsp.griffinlim`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepcli.dsp.stft import istft

__all__ = ["PHASE_METHODS", "reconstruct"]

PHASE_METHODS = ("mixture", "wiener", "griffin-lim")


def reconstruct(
    method: str,
    magnitudes: Tensor,
    mix_spec: Tensor,
    n_fft: int,
    hop_length: int,
    length: int,
    *,
    wiener_iters: int = 1,
    gl_iters: int = 32,
    gl_init: str = "mixture",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Waveforms from magnitude estimates.

    Args:
        method: one of :data:`PHASE_METHODS`.
        magnitudes: ``(batch, source, channel, freq, frame)`` real, >= 0.
        mix_spec: ``(batch, channel, freq, frame)`` complex STFT of the mixture.
        n_fft, hop_length: STFT parameters (:mod:`sepcli.dsp.stft` convention).
        length: output length in samples.

    Returns:
        ``(batch, source, channel, length)`` real waveforms.
    """
    if method == "mixture":
        phase = torch.exp(1j * torch.angle(mix_spec)).unsqueeze(1)
        return istft(magnitudes * phase, n_fft, hop_length, length)
    raise ValueError(f"unknown phase method {method!r}; expected one of {PHASE_METHODS}")
