"""Griffin-Lim, fast Griffin-Lim and MISI (sepcli.dsp.griffinlim)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import musdb_stems

from sepcli.dsp.griffinlim import griffin_lim, initial_phase, misi, spectral_convergence
from sepcli.dsp.stft import istft, stft
from sepcli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_FFT, HOP = 512, 128
RATE = 16000
PREVIEW = "musdb18-preview/train/Actions - One Minute Smile.stem.mp4"
# above this SDR both sides are float32 rounding noise, not a phase difference
NUMERICALLY_EXACT_DB = 80.0


def sources(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Two stereo sources ``(1, 2, 2, T)``: a chord and amplitude-modulated noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    chord = sum(torch.sin(2 * math.pi * f * t + p) for f, p in ((220, 0.0), (277, 1.0), (330, 2.0)))
    chord = torch.stack([0.3 * chord, 0.2 * chord])
    noise = torch.randn(2, t.numel(), generator=gen) * (0.2 * (1 + torch.sin(2 * math.pi * 3 * t)))
    return torch.stack([chord, noise]).unsqueeze(0).float()


def sdr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """``10 log10(|s|^2 / |s - s_hat|^2)`` per source, over ``(..., channel, time)``."""
    num = reference.pow(2).flatten(-2).sum(-1)
    return 10 * torch.log10(num / (reference - estimate).pow(2).flatten(-2).sum(-1))


def check_true_phase_fixed_point(src: torch.Tensor, n_fft: int, hop: int, iterations: int) -> None:
    spec = stft(src, n_fft, hop)
    true = sdr(src, istft(spec, n_fft, hop, src.shape[-1])).clamp(max=NUMERICALLY_EXACT_DB)
    for momentum in (0.0, 0.99):
        est = griffin_lim(
            spec.abs(), n_fft, hop, src.shape[-1], iterations, "mixture", spec, momentum
        )
        got = sdr(src, est).clamp(max=NUMERICALLY_EXACT_DB)
        assert (got >= true - 0.1).all(), (momentum, got, true)


def test_true_phase_is_a_fixed_point():
    """Started from the true phase with the true magnitudes, GL stays within 0.1 dB."""
    check_true_phase_fixed_point(sources(), N_FFT, HOP, 32)


def test_zero_iterations_is_the_initial_phase():
    src = sources()
    mix = stft(src.sum(1), N_FFT, HOP)
    mags = stft(src, N_FFT, HOP).abs()
    est = griffin_lim(mags, N_FFT, HOP, src.shape[-1], 0, "mixture", mix)
    expected = istft(
        mags * torch.exp(1j * torch.angle(mix)).unsqueeze(1), N_FFT, HOP, src.shape[-1]
    )
    torch.testing.assert_close(est, expected)


def test_plain_griffin_lim_spectral_convergence_decreases():
    src = sources(seed=1)
    mags = stft(src, N_FFT, HOP).abs()
    values = []
    for iterations in (0, 2, 8, 32):
        gen = torch.Generator().manual_seed(0)
        est = griffin_lim(
            mags, N_FFT, HOP, src.shape[-1], iterations, "random", momentum=0.0, generator=gen
        )
        values.append(float(spectral_convergence(est, mags, N_FFT, HOP)))
    assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True)), values


def test_fast_griffin_lim_converges_faster():
    src = sources(seed=2)
    mags = stft(src, N_FFT, HOP).abs()
    length = src.shape[-1]
    results = {}
    for momentum in (0.0, 0.99):
        gen = torch.Generator().manual_seed(0)
        est = griffin_lim(mags, N_FFT, HOP, length, 32, "random", momentum=momentum, generator=gen)
        results[momentum] = float(spectral_convergence(est, mags, N_FFT, HOP))
    start = float(
        spectral_convergence(
            griffin_lim(
                mags, N_FFT, HOP, length, 0, "random", generator=torch.Generator().manual_seed(0)
            ),
            mags,
            N_FFT,
            HOP,
        )
    )
    assert results[0.99] < results[0.0] < start, (results, start)


def test_random_init_is_seeded():
    src = sources()
    mags = stft(src, N_FFT, HOP).abs()
    length = src.shape[-1]

    def run(seed: int) -> torch.Tensor:
        return griffin_lim(
            mags, N_FFT, HOP, length, 2, "random", generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.allclose(run(3), run(4))
    phase = initial_phase(mags, "random", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(phase.abs(), torch.ones_like(mags))


def test_per_source_initial_phase():
    src = sources()
    spec = stft(src, N_FFT, HOP)
    phase = initial_phase(spec.abs(), "mixture", spec)
    torch.testing.assert_close(phase * spec.abs(), spec, rtol=1e-5, atol=1e-5)


def test_misi_sums_to_the_mixture_whatever_the_magnitudes():
    src = sources(seed=3)
    mix = src.sum(1)
    gen = torch.Generator().manual_seed(0)
    mags = stft(src, N_FFT, HOP).abs() * torch.rand(
        src.shape[:3] + (N_FFT // 2 + 1, 1), generator=gen
    )
    for init in ("mixture", "random"):
        est = misi(mags, mix, N_FFT, HOP, 8, init, generator=torch.Generator().manual_seed(1))
        assert est.shape == src.shape
        torch.testing.assert_close(est.sum(1), mix, rtol=0, atol=1e-5)


def test_misi_beats_mixture_phase_with_true_magnitudes():
    src = sources(seed=4)
    mix = src.sum(1)
    mags = stft(src, N_FFT, HOP).abs()
    mix_spec = stft(mix, N_FFT, HOP)
    plain = griffin_lim(mags, N_FFT, HOP, src.shape[-1], 0, "mixture", mix_spec)
    est = misi(mags, mix, N_FFT, HOP, 16, "mixture", mix_spec)
    assert (sdr(src, est) > sdr(src, plain) + 1.0).all(), (sdr(src, est), sdr(src, plain))


@pytest.mark.parametrize("kind", ["silent", "clipped"])
def test_finite_on_silent_and_clipped_input(kind):
    src = sources()
    if kind == "silent":
        src = torch.zeros_like(src)
    else:
        src = (10 * src).clamp(-1, 1)
    mix = src.sum(1)
    mix_spec = stft(mix, N_FFT, HOP)
    mags = stft(src, N_FFT, HOP).abs()
    for init in ("mixture", "random"):
        for momentum in (0.0, 0.99):
            est = griffin_lim(mags, N_FFT, HOP, src.shape[-1], 4, init, mix_spec, momentum)
            assert torch.isfinite(est).all()
        est = misi(mags, mix, N_FFT, HOP, 4, init)
        assert torch.isfinite(est).all()
        if kind == "silent":
            assert est.abs().max() == 0


def test_float64():
    src = sources().double()
    spec = stft(src, N_FFT, HOP)
    est = griffin_lim(spec.abs(), N_FFT, HOP, src.shape[-1], 4, "mixture", spec)
    assert est.dtype == torch.float64
    assert (sdr(src, est) > 200).all()
    est = misi(spec.abs(), src.sum(1), N_FFT, HOP, 2, "random")
    assert est.dtype == torch.float64


def test_bad_arguments():
    src = sources()
    mags = stft(src, N_FFT, HOP).abs()
    length = src.shape[-1]
    with pytest.raises(ConfigError, match="init"):
        griffin_lim(mags, N_FFT, HOP, length, 1, "zeros")
    with pytest.raises(ConfigError, match="mixture spectrogram"):
        griffin_lim(mags, N_FFT, HOP, length, 1, "mixture")
    with pytest.raises(ConfigError, match="momentum"):
        griffin_lim(mags, N_FFT, HOP, length, 1, "random", momentum=1.0)
    with pytest.raises(ValueError, match="frames"):
        griffin_lim(mags, N_FFT, HOP, length + HOP, 1, "random")
    with pytest.raises(ValueError, match="batch, source"):
        misi(mags[0], src.sum(1), N_FFT, HOP, 1)


@pytest.mark.data
def test_true_phase_fixed_point_on_real_stems(shared_data: Path):
    src = musdb_stems(shared_data / PREVIEW, 1.0).unsqueeze(0)
    check_true_phase_fixed_point(src, 2048, 512, 8)
