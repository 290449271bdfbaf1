"""Turning estimated magnitudes into waveforms: the phase step of spectrogram models.

``reconstruct`` is the single entry point the separator calls for archives whose
output is ``"magnitude"``. Methods (see ``docs/phase.md`` for measured quality
and speed):

* ``"mixture"``: the magnitudes with the mixture phase (fastest);
* ``"wiener"``: multichannel Wiener filter with EM iterations
  (:func:`sepcli.dsp.wiener.wiener`, Open-Unmix's post-processing);
* ``"griffin-lim"``: (fast) Griffin-Lim per source
  (:func:`sepcli.dsp.griffinlim.griffin_lim`);
* ``"misi"``: multiple input spectrogram inversion, Griffin-Lim coupled across
  sources so that they sum to the mixture (:func:`sepcli.dsp.griffinlim.misi`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sepcli.dsp.griffinlim import GL_INITS, griffin_lim, misi
from sepcli.dsp.stft import hann_window, istft, stft
from sepcli.dsp.wiener import DEFAULT_EPS, wiener
from sepcli.errors import ConfigError

__all__ = [
    "PHASE_METHODS",
    "GL_INITS",
    "OUTPUT_KINDS",
    "reconstruct",
    "spectral_blend",
    "to_waveform",
    "waveform_from_output",
]

#: What a model's ``forward`` returns (:mod:`sepcli.models.archive`), and the code
#: :func:`waveform_from_output` takes for each (TorchScript has no string enums).
OUTPUT_KINDS = {"waveform": 0, "magnitude": 1, "complex": 2}

from sepcli.dsp import PHASE_METHODS  # noqa: E402  (re-exported)


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
    gl_momentum: float = 0.99,
    wiener_softmask: bool = False,
    wiener_residual: bool = False,
    wiener_window_frames: int = 300,
    wiener_eps: float = DEFAULT_EPS,
    mix_wave: Tensor | None = None,
) -> Tensor:
    """Waveforms from magnitude estimates.

    Args:
        method: one of :data:`PHASE_METHODS`.
        magnitudes: ``(batch, source, channel, freq, frame)`` real, >= 0.
        mix_spec: ``(batch, channel, freq, frame)`` complex STFT of the mixture.
        n_fft, hop_length: STFT parameters (:mod:`sepcli.dsp.stft` convention).
        length: output length in samples.
        wiener_iters: EM iterations for ``"wiener"`` (0 = Open-Unmix's ``niter=0``:
            magnitudes with the mixture phase, i.e. the same as ``"mixture"``).
        gl_iters: iterations for ``"griffin-lim"`` and ``"misi"``.
        gl_init: ``"mixture"`` or ``"random"`` starting phase for Griffin-Lim / MISI.
        generator: random generator for ``gl_init="random"``.
        gl_momentum: fast Griffin-Lim momentum (0 = plain Griffin-Lim).
        wiener_softmask: start the EM from a ratio mask instead of the mixture phase.
        wiener_residual: model ``mixture - sum of sources`` as an extra source
            during the EM (it is dropped from the result).
        wiener_window_frames: frames per independent Wiener window.
        wiener_eps: Wiener regularisation.
        mix_wave: ``(batch, channel, length)`` mixture waveform for ``"misi"``;
            the inverse STFT of ``mix_spec`` when omitted.

    Returns:
        ``(batch, source, channel, length)`` real waveforms (float32 unless the
        inputs are float64).
    """
    if method == "mixture":
        return istft(mixture_phase(magnitudes, mix_spec), n_fft, hop_length, length)
    if method == "wiener":
        if wiener_iters < 0:
            raise ConfigError(f"Wiener iterations must be >= 0, got {wiener_iters}")
        sources = magnitudes.shape[1]
        spec = wiener(
            magnitudes,
            mix_spec,
            wiener_iters,
            wiener_softmask,
            wiener_residual,
            wiener_window_frames,
            wiener_eps,
        )
        return istft(spec[:, :sources], n_fft, hop_length, length)
    if method in ("griffin-lim", "misi"):
        if gl_iters < 0:
            raise ConfigError(f"Griffin-Lim iterations must be >= 0, got {gl_iters}")
        if gl_init not in GL_INITS:
            raise ConfigError(
                f"unknown Griffin-Lim init {gl_init!r}; expected one of {', '.join(GL_INITS)}"
            )
        if method == "griffin-lim":
            return griffin_lim(
                magnitudes,
                n_fft,
                hop_length,
                length,
                gl_iters,
                gl_init,
                mix_spec,
                gl_momentum,
                generator,
            )
        if mix_wave is None:
            window = hann_window(n_fft, mix_spec.device)
            mix_wave = istft(mix_spec, n_fft, hop_length, length, window)
        return misi(magnitudes, mix_wave, n_fft, hop_length, gl_iters, gl_init, mix_spec, generator)
    raise ConfigError(
        f"unknown phase method {method!r}; expected one of {', '.join(PHASE_METHODS)}"
    )


def mixture_phase(magnitudes: Tensor, mix_spec: Tensor) -> Tensor:
    """Magnitudes ``(B, S, C, F, N)`` with the phase of ``mix_spec`` ``(B, C, F, N)``.

    ``|S| * X / |X|`` as a real ratio times ``X`` (no complex division); bins
    where the mixture is exactly zero stay zero.
    """
    ratio = magnitudes / mix_spec.abs().clamp_min(1e-30).unsqueeze(1)
    return ratio * mix_spec.unsqueeze(1)


def waveform_from_output(
    kind: int,
    out: Tensor,
    mix: Tensor,
    n_fft: int,
    hop_length: int,
    wiener_iters: int = 0,
    wiener_residual: bool = False,
    window: Tensor | None = None,
) -> Tensor:
    """The scriptable step from a model's output to waveforms.

    Args:
        kind: :data:`OUTPUT_KINDS` code of ``out``.
        out: the model output for ``mix``: ``(B, S, C, T)`` waveforms, or
            ``(B, S, C, F, N)`` magnitudes (real) or complex spectrograms.
        mix: ``(B, C, T)`` the mixture the model saw.
        n_fft, hop_length: the model's STFT (ignored for waveforms).
        wiener_iters: ``0`` = mixture phase for magnitudes and the complex output
            as it is; ``> 0`` = multichannel Wiener EM on the magnitudes (of the
            complex output too), as in Open-Unmix and the MDX 2021 blends.
        wiener_residual: model ``mixture - sum of sources`` as an extra source
            during the EM (needed when a model estimates one source only).
        window: optional precomputed :func:`~sepcli.dsp.stft.hann_window`.

    Returns:
        ``(B, S, C, T)`` real waveforms.
    """
    if kind == 0:
        return out
    length = mix.shape[-1]
    if kind == 2 and wiener_iters == 0:
        return istft(out, n_fft, hop_length, length, window)
    mix_spec = stft(mix, n_fft, hop_length, window)
    magnitudes = out if kind == 1 else out.abs()
    if wiener_iters == 0:
        return istft(mixture_phase(magnitudes, mix_spec), n_fft, hop_length, length, window)
    spec = wiener(magnitudes, mix_spec, wiener_iters, False, wiener_residual)
    return istft(spec[:, : magnitudes.shape[1]], n_fft, hop_length, length, window)


def to_waveform(
    output: str,
    out: Tensor,
    mix: Tensor,
    n_fft: int = 0,
    hop_length: int = 0,
    *,
    phase: str = "mixture",
    wiener_iters: int = 1,
    wiener_residual: bool = False,
    gl_iters: int = 32,
    gl_init: str = "mixture",
    generator: torch.Generator | None = None,
    window: Tensor | None = None,
) -> Tensor:
    """The one step from any model output to waveforms (separator, training, ensembles).

    ``output`` is the archive's output kind; for ``"magnitude"`` the ``phase``
    method (:data:`PHASE_METHODS`) builds the phase, ``"complex"`` is inverted
    as it is, ``"waveform"`` is returned unchanged. Shapes as in
    :func:`waveform_from_output`; ``mix`` is ``(B, C, T)``.
    """
    if output not in OUTPUT_KINDS:
        raise ConfigError(f"unknown model output kind {output!r}")
    if output != "magnitude" or phase in ("mixture", "wiener"):
        iters = wiener_iters if (output == "magnitude" and phase == "wiener") else 0
        return waveform_from_output(
            OUTPUT_KINDS[output], out, mix, n_fft, hop_length, iters, wiener_residual, window
        )
    if window is None:
        window = hann_window(n_fft, mix.device)
    mix_spec = stft(mix, n_fft, hop_length, window)
    return reconstruct(
        phase,
        out,
        mix_spec,
        n_fft,
        hop_length,
        mix.shape[-1],
        gl_iters=gl_iters,
        gl_init=gl_init,
        generator=generator,
        mix_wave=mix,
    )


def spectral_blend(
    estimates: Tensor, mode: str, n_fft: int = 2048, hop_length: int = 512
) -> Tensor:
    """Combine several estimates of one source bin by bin, in the STFT domain.

    Per time-frequency bin, the member whose magnitude is the largest (``max``,
    UVR's "Max Spec": keeps everything any member found, fuller but bleedier),
    the smallest (``min``, "Min Spec": keeps only what every member agrees on,
    cleaner but thinner) or the median (``median``: the lower median for an
    even count; robust to one member's artefacts) is kept, with its phase.

    Args:
        estimates: ``(batch, member, channel, time)`` waveforms.
        mode: ``"max"``, ``"min"`` or ``"median"``.

    Returns:
        ``(batch, channel, time)``.
    """
    if mode not in ("max", "min", "median"):
        raise ConfigError(f"unknown spectral blend mode {mode!r}; use max, min or median")
    length = estimates.shape[-1]
    window = hann_window(n_fft, estimates.device)
    spec = stft(estimates, n_fft, hop_length, window)  # (B, M, C, F, N)
    mag = spec.abs()
    if mode == "max":
        index = mag.argmax(dim=1, keepdim=True)
    elif mode == "min":
        index = mag.argmin(dim=1, keepdim=True)
    else:
        order = mag.argsort(dim=1)
        index = order.narrow(1, (mag.shape[1] - 1) // 2, 1)
    chosen = torch.gather(spec, 1, index).squeeze(1)
    return istft(chosen, n_fft, hop_length, length, window)
