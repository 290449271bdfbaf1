"""Phase retrieval from magnitudes: Griffin-Lim, fast Griffin-Lim and MISI.

A spectrogram model predicts magnitudes only. Griffin-Lim looks, per source,
for a signal whose STFT magnitude matches the estimate by alternating two
projections: onto consistent spectrograms (``stft(istft(X))``) and onto the
set with the given magnitude (keep the phase, replace the magnitude). MISI
couples the sources: every iteration it spreads the error between the mixture
and the sum of the estimates equally over the sources, so the estimates keep
summing to the mixture.

References:
    D. Griffin, J. Lim, "Signal estimation from modified short-time Fourier
    transform", IEEE TASSP 32(2), 1984.
    N. Perraudin, P. Balazs, P. L. Søndergaard, "A fast Griffin-Lim algorithm",
    IEEE WASPAA 2013 (the momentum / "fast" variant).
    D. Gunawan, D. Sen, "Iterative phase estimation for the synthesis of
    separated sources from single-channel under-determined mixtures", IEEE
    Signal Processing Letters 17(5), 2010 (MISI, multiple input spectrogram
    inversion).

All transforms use :mod:`sepcli.dsp.stft`. Lengths are in samples. The code is
device-agnostic: everything runs on the device of ``magnitudes``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sepcli.dsp.stft import hann_window, istft, num_frames, stft, unit_phase
from sepcli.errors import ConfigError

__all__ = ["GL_INITS", "griffin_lim", "misi", "initial_phase", "spectral_convergence"]

#: Ways to start the phase: the mixture's (or any given spectrogram's), or uniform random.
GL_INITS = ("mixture", "random")

# added to magnitudes before dividing, so that silent bins give phase 0, not NaN
_TINY = 1e-16


def _with_magnitude(magnitudes: Tensor, spec: Tensor) -> Tensor:
    """``magnitudes * spec / |spec|`` (0 where ``spec`` is 0).

    Written on the real view: torch multiplies and divides complex tensors by
    real ones several times slower than real by real.
    """
    parts = torch.view_as_real(spec)
    norm = parts.square().sum(dim=-1, keepdim=True).sqrt_().add_(_TINY)
    return torch.view_as_complex(parts * (magnitudes.unsqueeze(-1) / norm))


def initial_phase(
    magnitudes: Tensor,
    init: str,
    mix_spec: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unit-modulus complex starting phase for every source.

    Args:
        magnitudes: ``(batch, source, channel, freq, frame)`` real (for shape, device, dtype).
        init: ``"mixture"``: the phase of ``mix_spec``; ``"random"``: uniform in
            ``[0, 2 pi)`` drawn from ``generator``.
        mix_spec: complex ``(batch, channel, freq, frame)`` (shared by all
            sources) or ``(batch, source, channel, freq, frame)`` (one phase per
            source, e.g. the true phase or a Wiener estimate); needed for
            ``"mixture"``.
        generator: random generator for ``"random"`` (its device is used to
            draw, then the result is moved to the device of ``magnitudes``).

    Returns:
        complex tensor shaped like ``magnitudes``.
    """
    complex_dtype = torch.complex128 if magnitudes.dtype == torch.float64 else torch.complex64
    if init == "mixture":
        if mix_spec is None:
            raise ConfigError("Griffin-Lim init 'mixture' needs the mixture spectrogram")
        ref = mix_spec if mix_spec.dim() == 5 else mix_spec.unsqueeze(1)
        return unit_phase(ref).to(complex_dtype).expand(magnitudes.shape)
    if init == "random":
        device = generator.device if generator is not None else magnitudes.device
        angles = torch.rand(
            magnitudes.shape, generator=generator, device=device, dtype=magnitudes.dtype
        )
        angles = angles.to(magnitudes.device) * (2.0 * math.pi)
        return torch.polar(torch.ones_like(angles), angles)
    raise ConfigError(f"unknown Griffin-Lim init {init!r}; expected one of {', '.join(GL_INITS)}")


def _check(magnitudes: Tensor, hop_length: int, length: int) -> None:
    if magnitudes.dim() != 5:
        raise ValueError(
            f"magnitudes must be (batch, source, channel, freq, frame), got {tuple(magnitudes.shape)}"
        )
    if magnitudes.shape[-1] != num_frames(length, hop_length):
        raise ValueError(
            f"{magnitudes.shape[-1]} frames do not match length {length} with hop {hop_length}"
        )


def griffin_lim(
    magnitudes: Tensor,
    n_fft: int,
    hop_length: int,
    length: int,
    iterations: int = 32,
    init: str = "mixture",
    mix_spec: Tensor | None = None,
    momentum: float = 0.99,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Griffin-Lim phase retrieval, each source on its own (Griffin & Lim 1984).

    With ``momentum > 0`` this is the fast Griffin-Lim of Perraudin et al. (2013):
    ``c_n = t_n + momentum * (t_n - t_(n-1))``, where ``t_n`` is the consistent
    projection; only the phase of ``c_n`` is kept, so the update is written as
    ``t_n - momentum / (1 + momentum) * t_(n-1)`` (as in librosa). ``momentum = 0``
    is the plain algorithm, whose spectral convergence never increases.
    ``iterations = 0`` returns the inverse STFT of the magnitudes with the
    initial phase (for ``init="mixture"``: the mixture-phase method).

    Args:
        magnitudes: ``(batch, source, channel, freq, frame)`` real >= 0, with
            ``frame = 1 + length // hop_length``.
        n_fft, hop_length: STFT parameters (:mod:`sepcli.dsp.stft` convention).
        length: output length in samples.
        iterations: fixed number of iterations.
        init: ``"mixture"`` or ``"random"`` (see :func:`initial_phase`).
        mix_spec: complex spectrogram giving the initial phase for ``"mixture"``.
        momentum: fast Griffin-Lim momentum in ``[0, 1)``; 0 = plain Griffin-Lim.
        generator: random generator for ``init="random"``.

    Returns:
        ``(batch, source, channel, length)`` real waveforms.
    """
    _check(magnitudes, hop_length, length)
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"Griffin-Lim momentum must be in [0, 1), got {momentum}")
    window = hann_window(n_fft, magnitudes.device).to(magnitudes.dtype)
    spec = _with_magnitude(magnitudes, initial_phase(magnitudes, init, mix_spec, generator))
    previous: Tensor | None = None
    for _ in range(iterations):
        rebuilt = stft(istft(spec, n_fft, hop_length, length, window), n_fft, hop_length, window)
        if previous is not None and momentum > 0:
            spec = _with_magnitude(magnitudes, rebuilt - (momentum / (1.0 + momentum)) * previous)
        else:
            spec = _with_magnitude(magnitudes, rebuilt)
        previous = rebuilt
    return istft(spec, n_fft, hop_length, length, window)


def misi(
    magnitudes: Tensor,
    mix_wave: Tensor,
    n_fft: int,
    hop_length: int,
    iterations: int = 32,
    init: str = "mixture",
    mix_spec: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiple input spectrogram inversion (Gunawan & Sen 2010).

    Each iteration: invert every source, add ``(mixture - sum of sources) / S``
    to each, take the STFT, and keep its phase with the estimated magnitude.
    The returned waveforms get the same final error distribution, so they sum to
    ``mix_wave`` (to float precision) whatever the magnitudes.

    Args:
        magnitudes: ``(batch, source, channel, freq, frame)`` real >= 0.
        mix_wave: ``(batch, channel, time)`` mixture waveform.
        n_fft, hop_length: STFT parameters (:mod:`sepcli.dsp.stft` convention).
        iterations: fixed number of iterations.
        init: ``"mixture"`` or ``"random"`` (see :func:`initial_phase`).
        mix_spec: complex spectrogram for the initial phase; computed from
            ``mix_wave`` when omitted.
        generator: random generator for ``init="random"``.

    Returns:
        ``(batch, source, channel, time)`` real waveforms summing to ``mix_wave``.
    """
    length = mix_wave.shape[-1]
    _check(magnitudes, hop_length, length)
    window = hann_window(n_fft, magnitudes.device).to(magnitudes.dtype)
    mix_wave = mix_wave.to(magnitudes.dtype)
    if mix_spec is None and init == "mixture":
        mix_spec = stft(mix_wave, n_fft, hop_length, window)
    sources = magnitudes.shape[1]
    spec = _with_magnitude(magnitudes, initial_phase(magnitudes, init, mix_spec, generator))
    for _ in range(iterations):
        waves = istft(spec, n_fft, hop_length, length, window)
        waves = waves + ((mix_wave - waves.sum(dim=1)) / sources).unsqueeze(1)
        spec = _with_magnitude(magnitudes, stft(waves, n_fft, hop_length, window))
    waves = istft(spec, n_fft, hop_length, length, window)
    return waves + ((mix_wave - waves.sum(dim=1)) / sources).unsqueeze(1)


def spectral_convergence(waves: Tensor, magnitudes: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """``|| |stft(waves)| - magnitudes ||_F / || magnitudes ||_F`` per batch item.

    The usual convergence measure of Griffin-Lim (lower is better, 0 when the
    magnitudes are consistent and matched).

    Args:
        waves: ``(batch, source, channel, time)``.
        magnitudes: ``(batch, source, channel, freq, frame)``.

    Returns:
        ``(batch,)`` real.
    """
    rebuilt = stft(waves, n_fft, hop_length).abs()
    diff = (rebuilt - magnitudes).flatten(1).norm(dim=1)
    return diff / magnitudes.flatten(1).norm(dim=1).clamp_min(_TINY)
