"""The one STFT convention of sepcli.

Every spectrogram in the project is made here, so that models, phase
reconstruction, metrics and training agree bit for bit. The convention is the
one of Open-Unmix's separator (``openunmix.transforms.TorchSTFT`` with
``center=True``): periodic Hann window, ``center=True`` with reflect padding,
one-sided, unnormalised. All functions are TorchScript-scriptable.

Layouts: waveforms ``(..., time)``; complex spectrograms ``(..., freq, frame)``
with ``freq = n_fft // 2 + 1`` and ``frame = 1 + time // hop_length``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["stft", "istft", "num_frames", "hann_window", "unit_phase"]


def hann_window(n_fft: int, device: torch.device | None = None) -> Tensor:
    """Periodic Hann window of ``n_fft`` samples (float32)."""
    return torch.hann_window(n_fft, periodic=True, device=device, dtype=torch.float32)


def num_frames(length: int, hop_length: int) -> int:
    """Number of STFT frames for a waveform of ``length`` samples (``center=True``)."""
    return 1 + length // hop_length


def stft(
    x: Tensor,
    n_fft: int,
    hop_length: int,
    window: Tensor | None = None,
    normalized: bool = False,
    center: bool = True,
) -> Tensor:
    """Complex STFT of a real waveform.

    Args:
        x: waveform, shape ``(..., time)``, float.
        n_fft: FFT size in samples.
        hop_length: hop in samples.
        window: optional precomputed :func:`hann_window` (same device as ``x``).
        normalized: ``torch.stft(normalized=True)``, times ``n_fft ** -0.5``;
            only for models trained so (some RoFormer checkpoints).
        center: ``True`` (the convention): frame ``j`` is centred on sample
            ``j * hop_length`` of ``x`` reflect-padded by ``n_fft // 2``.
            ``False``: only the frames that lie wholly inside ``x``, frame ``j``
            starting at sample ``j * hop_length`` (``time >= n_fft``); for a
            caller that pads or streams the signal itself.

    Returns:
        complex tensor of shape ``(..., n_fft // 2 + 1, frames)``: ``1 + time //
        hop_length`` frames, or ``1 + (time - n_fft) // hop_length`` with
        ``center=False``.
    """
    if window is None:
        window = hann_window(n_fft, x.device)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    spec = torch.stft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        window=window.to(flat.dtype),
        center=center,
        normalized=normalized,
        onesided=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(shape[:-1] + spec.shape[-2:])


def istft(
    spec: Tensor,
    n_fft: int,
    hop_length: int,
    length: int,
    window: Tensor | None = None,
    normalized: bool = False,
) -> Tensor:
    """Inverse of :func:`stft`.

    Args:
        spec: complex tensor ``(..., freq, frame)``.
        n_fft: FFT size used by the forward transform.
        hop_length: hop used by the forward transform.
        length: number of output samples (the original waveform's length).
        window: optional precomputed :func:`hann_window`.
        normalized: as given to :func:`stft`.

    Returns:
        real waveform ``(..., length)``.
    """
    if window is None:
        window = hann_window(n_fft, spec.device)
    shape = spec.shape
    flat = spec.reshape(-1, shape[-2], shape[-1])
    y = torch.istft(
        flat,
        n_fft=n_fft,
        hop_length=hop_length,
        window=window,
        center=True,
        normalized=normalized,
        onesided=True,
        length=length,
    )
    return y.reshape(shape[:-2] + y.shape[-1:])


def unit_phase(spec: Tensor) -> Tensor:
    """``spec / |spec|``: the phase of a complex tensor as unit-modulus values.

    Equal to ``exp(1j * angle(spec))`` (1 where ``spec == 0``) but with no
    trigonometry, so it is several times cheaper.
    """
    magnitude = spec.abs()
    return torch.where(magnitude > 0, spec / magnitude, torch.ones_like(spec))
