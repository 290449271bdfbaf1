"""Ensemble algorithms: several estimates of one stem combined into one.

The ten algorithms of UVR and audio-separator (``Ensembler`` in audio-separator
0.47.1), under their names there:

* in the waveform domain, sample by sample: ``avg_wave`` (weighted mean),
  ``median_wave`` (the median; the mean of the two middle values for an even
  count), ``min_wave`` / ``max_wave`` (the member whose sample has the smallest
  / largest absolute value, the first one on a tie);
* in the STFT domain, bin by bin: ``avg_fft`` (weighted mean of the complex
  bins), ``median_fft`` (median of the real and of the imaginary parts, taken
  separately), ``min_fft`` / ``max_fft`` (the bin of smallest / largest
  magnitude, the first member on a tie), ``uvr_min_spec`` / ``uvr_max_spec``
  (UVR's "Min Spec" / "Max Spec": the same choice made member after member
  with ``<=`` / ``>=``, so the *last* member wins a tie).

Only ``avg_wave`` and ``avg_fft`` use weights; the others take every member
with weight > 0 alike (as the reference does).

The STFT of the spectral algorithms is librosa's default, which the reference
uses: ``n_fft`` 2048, ``hop_length`` 1024, periodic Hann window, frames centred
on ``k * hop_length`` with the signal zero-extended by ``n_fft // 2`` at both
ends (``center=True``, ``pad_mode="constant"``), ``1 + time // hop_length``
frames, and the inverse by windowed overlap-add divided by the sum of squared
windows of the frames that exist. The pieces are separate functions
(:func:`analysis_frames`, :func:`combine`, :func:`synthesis_frames`,
:func:`overlap_add`, :func:`window_envelope`) so that a stream can compute the
same frames block by block (:class:`sepcli.inference.ensemble_stream.StreamingEnsemble`):
each frame's blend depends only on that frame's ``n_fft`` input samples, so a
stream that keeps the frame grid anchored at the track's first sample, and the
zero extension at its two ends, computes exactly the frames the whole-track
function does.

Layouts: estimates ``(..., member, channel, time)``; results ``(..., channel, time)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepcli.dsp import ENSEMBLE_ALGORITHMS
from sepcli.dsp.stft import hann_window, stft
from sepcli.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "HOP_LENGTH",
    "N_FFT",
    "SPECTRAL_ALGORITHMS",
    "WAVE_ALGORITHMS",
    "WEIGHTED_ALGORITHMS",
    "analysis_frames",
    "check_algorithm",
    "check_stft",
    "divide_envelope",
    "combine",
    "ensemble",
    "overlap_add",
    "synthesis_frames",
    "window_envelope",
]

ALGORITHMS = ENSEMBLE_ALGORITHMS
WAVE_ALGORITHMS = tuple(a for a in ALGORITHMS if a.endswith("_wave"))
SPECTRAL_ALGORITHMS = tuple(a for a in ALGORITHMS if not a.endswith("_wave"))
#: The algorithms whose result depends on the weights' values (not only on which are > 0).
WEIGHTED_ALGORITHMS = ("avg_wave", "avg_fft")
#: STFT of the spectral algorithms (librosa's defaults, as the reference uses).
N_FFT = 2048
HOP_LENGTH = 1024


def check_algorithm(algorithm: str) -> None:
    """Raise :class:`ConfigError` unless ``algorithm`` is one of :data:`ALGORITHMS`."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"unknown ensemble algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}"
        )


def check_stft(n_fft: int, hop_length: int) -> None:
    if hop_length < 1 or n_fft % 2 or n_fft % hop_length or n_fft < 2 * hop_length:
        raise ConfigError(
            f"ensemble STFT needs an even n_fft that is a multiple of hop_length (at least 2x), "
            f"got n_fft={n_fft}, hop_length={hop_length}"
        )


def _pick(values: Tensor, key: Tensor, dim: int, largest: bool, last: bool) -> Tensor:
    """``values`` at the index along ``dim`` where ``key`` is smallest/largest; on
    a tie the first index, or the last with ``last``."""
    if last:
        key = key.flip(dim)
    index = key.argmax(dim=dim, keepdim=True) if largest else key.argmin(dim=dim, keepdim=True)
    if last:
        index = key.shape[dim] - 1 - index
    return torch.gather(values, dim, index).squeeze(dim)


def _median(values: Tensor, dim: int) -> Tensor:
    """Median along ``dim``; for an even count the mean of the two middle values
    (``numpy.median``; ``torch.median`` would give the lower one)."""
    ordered = values.sort(dim=dim).values
    count = values.shape[dim]
    upper = ordered.narrow(dim, count // 2, 1).squeeze(dim)
    if count % 2:
        return upper
    lower = ordered.narrow(dim, count // 2 - 1, 1).squeeze(dim)
    return (lower + upper) / 2


def combine(values: Tensor, algorithm: str, weights: Tensor | None = None, dim: int = 0) -> Tensor:
    """Combine members element by element: the core of every algorithm.

    Args:
        values: real samples (``*_wave``) or complex STFT bins (``*_fft``,
            ``uvr_*``), members along ``dim``.
        algorithm: one of :data:`ALGORITHMS` (the ``_wave`` / ``_fft`` suffix only
            names the domain; ``min``/``max`` compare absolute values).
        weights: ``(member,)`` non-negative, used by ``avg_*`` only
            (``None``: equal weights).
        dim: the member axis.

    Returns:
        ``values`` with ``dim`` removed.
    """
    check_algorithm(algorithm)
    dim = dim % values.dim()
    kind = algorithm.split("_")[0] if not algorithm.startswith("uvr_") else algorithm
    if kind == "avg":
        if weights is None:
            return values.mean(dim=dim)
        w = weights.to(device=values.device, dtype=values.real.dtype)
        if w.shape != (values.shape[dim],) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ConfigError(
                f"ensemble weights must be {values.shape[dim]} values >= 0 with a positive sum"
            )
        shape = [1] * values.dim()
        shape[dim] = -1
        return (values * w.reshape(shape)).sum(dim=dim) / w.sum()
    if kind == "median":
        if values.is_complex():
            return torch.complex(_median(values.real, dim), _median(values.imag, dim))
        return _median(values, dim)
    magnitude = values.abs()
    if kind in ("min", "max"):
        return _pick(values, magnitude, dim, largest=kind == "max", last=False)
    return _pick(values, magnitude, dim, largest=kind == "uvr_max_spec", last=True)


def analysis_frames(
    x: Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, window: Tensor | None = None
) -> Tensor:
    """Spectra of the frames of ``x`` that lie wholly inside it (no padding).

    Args:
        x: ``(..., length)`` real, ``length >= n_fft``.

    Returns:
        complex ``(..., n_fft // 2 + 1, frames)``, ``frames = 1 + (length - n_fft) // hop_length``;
        frame ``j`` is the windowed FFT of ``x[..., j * hop_length : j * hop_length + n_fft]``.
    """
    return stft(x, n_fft, hop_length, window, center=False)


def synthesis_frames(spec: Tensor, n_fft: int = N_FFT, window: Tensor | None = None) -> Tensor:
    """Windowed inverse FFT of every frame: ``(..., freq, frames)`` complex ->
    ``(..., n_fft, frames)`` real, ready for :func:`overlap_add`."""
    if window is None:
        window = hann_window(n_fft, spec.device)
    frames = torch.fft.irfft(spec, n=n_fft, dim=-2)
    return frames * window.to(frames.dtype)[:, None]


def overlap_add(frames: Tensor, hop_length: int = HOP_LENGTH) -> Tensor:
    """Sum frames placed ``hop_length`` apart.

    Args:
        frames: ``(..., n_fft, frames)`` with ``n_fft`` a multiple of ``hop_length``.

    Returns:
        ``(..., (frames - 1) * hop_length + n_fft)``.
    """
    n_fft, count = frames.shape[-2], frames.shape[-1]
    ratio = n_fft // hop_length
    # (..., ratio, hop, frames): piece j of frame k lands in output hop k + j.
    pieces = frames.reshape(frames.shape[:-2] + (ratio, hop_length, count)).transpose(-1, -2)
    out = frames.new_zeros(frames.shape[:-2] + (count + ratio - 1, hop_length))
    for j in range(ratio):
        out[..., j : j + count, :] += pieces[..., j, :, :]
    return out.reshape(frames.shape[:-2] + ((count + ratio - 1) * hop_length,))


def window_envelope(
    count: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH, window: Tensor | None = None
) -> Tensor:
    """Sum of squared windows of ``count`` frames ``hop_length`` apart: the divisor
    of the inverse STFT, ``((count - 1) * hop_length + n_fft,)``."""
    if window is None:
        window = hann_window(n_fft)
    squares = (window.double() ** 2)[:, None].expand(n_fft, count)
    return overlap_add(squares, hop_length)


def divide_envelope(numerator: Tensor, envelope: Tensor) -> Tensor:
    """``numerator / envelope`` where the envelope is not (nearly) zero, as librosa's istft."""
    tiny = torch.finfo(torch.float32).tiny
    safe = envelope > tiny
    scale = torch.where(safe, 1.0 / torch.where(safe, envelope, 1.0), 1.0)
    return numerator * scale.to(device=numerator.device, dtype=numerator.dtype)


def ensemble(
    estimates: Tensor,
    algorithm: str,
    weights: Tensor | None = None,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
) -> Tensor:
    """Combine the members' estimates of one stem, over the whole signal.

    Args:
        estimates: ``(..., member, channel, time)`` waveforms of equal length.
        algorithm: one of :data:`ALGORITHMS`.
        weights: ``(member,)``, used by ``avg_wave`` and ``avg_fft``.
        n_fft, hop_length: STFT of the spectral algorithms (default: the
            reference's 2048 / 1024 samples).

    Returns:
        ``(..., channel, time)``. For ``uvr_*`` the reference returns only the
        first ``hop_length * (time // hop_length)`` samples; here the rest comes
        from the same frames, as for the ``*_fft`` algorithms.
    """
    check_algorithm(algorithm)
    if estimates.dim() < 3:
        raise ConfigError(
            f"estimates must be (..., member, channel, time), got {tuple(estimates.shape)}"
        )
    if algorithm in WAVE_ALGORITHMS:
        return combine(estimates, algorithm, weights, dim=-3)
    check_stft(n_fft, hop_length)
    length = estimates.shape[-1]
    count = 1 + length // hop_length
    half = n_fft // 2
    # The frames cover [-half, (count - 1) * hop + half): zeros outside the signal.
    right = (count - 1) * hop_length + half - length
    padded = torch.nn.functional.pad(estimates, (half, max(right, 0)))
    if right < 0:
        padded = padded[..., : padded.shape[-1] + right]
    window = hann_window(n_fft, estimates.device)
    spec = analysis_frames(padded, n_fft, hop_length, window)
    chosen = combine(spec, algorithm, weights, dim=-4)
    numerator = overlap_add(synthesis_frames(chosen, n_fft, window), hop_length)
    out = divide_envelope(numerator, window_envelope(count, n_fft, hop_length, window.cpu()))
    return out[..., half : half + length]
