"""Multichannel Wiener EM (sepcli.dsp.wiener) against norbert, the reference."""

from __future__ import annotations

from pathlib import Path

import norbert
import numpy as np
import pytest
import torch
from conftest import musdb_stems

from sepcli.dsp.stft import istft, stft
from sepcli.dsp.wiener import expectation_maximization, softmask, wiener

pytestmark = pytest.mark.usefixtures("one_torch_thread")


EPS = 1e-10
N_FFT, HOP = 1024, 256
PREVIEW = "musdb18-preview/train/Actions - One Minute Smile.stem.mp4"


def norbert_wiener(
    v: np.ndarray,
    x: np.ndarray,
    iterations: int,
    use_softmask: bool,
    residual: bool,
    eps: float = EPS,
) -> np.ndarray:
    """norbert.wiener in sepcli's layout, per batch item, in float64.

    ``residual=True`` follows Open-Unmix (norbert has no such flag): the source
    ``x - sum(y)`` is appended to norbert's initial estimates, which are then
    refined with norbert's own scaling and ``expectation_maximization``.
    """
    out = []
    for b in range(v.shape[0]):
        vb = v[b].transpose(3, 2, 1, 0).astype(np.float64)  # (N, F, C, S)
        xb = x[b].transpose(2, 1, 0).astype(np.complex128)  # (N, F, C)
        if not residual:
            y = norbert.wiener(vb, xb.copy(), iterations, use_softmask=use_softmask, eps=eps)
        else:
            if use_softmask:
                y = norbert.softmask(vb, xb, eps=eps)
            else:
                y = vb * np.exp(1j * np.angle(xb[..., None]))
            y = np.concatenate([y, (xb - y.sum(-1))[..., None]], axis=-1)
            if iterations:
                scale = max(1.0, np.abs(xb).max() / 10.0)
                y = norbert.expectation_maximization(y / scale, xb / scale, iterations, eps=eps)[0]
                y = y * scale
        out.append(y.transpose(3, 2, 1, 0))
    return np.stack(out)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def synthetic(batch=2, sources=3, channels=2, freqs=33, frames=24, seed=0):
    """Random mixture STFT and source magnitudes, numpy, sepcli layout."""
    rng = np.random.default_rng(seed)
    shape = (batch, channels, freqs, frames)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * 30
    v = np.abs(rng.standard_normal((batch, sources, channels, freqs, frames))) * 20
    return v, x


@pytest.mark.parametrize("iterations", [0, 1, 2])
@pytest.mark.parametrize("use_softmask", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_matches_norbert_synthetic(iterations, use_softmask, residual, dtype):
    v, x = synthetic()
    ref = norbert_wiener(v, x, iterations, use_softmask, residual)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    out = wiener(
        torch.from_numpy(v).to(real),
        torch.from_numpy(x).to(dtype),
        iterations,
        use_softmask,
        residual,
        window_frames=0,
        eps=EPS,
    )
    assert out.dtype == dtype
    assert out.shape == ref.shape
    assert rel_err(out.numpy(), ref) < (1e-4 if dtype == torch.complex64 else 1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_norbert_other_channel_counts(channels):
    v, x = synthetic(batch=1, channels=channels, seed=1)
    for iterations in (1, 2):
        ref = norbert_wiener(v, x, iterations, False, False)
        out = wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, window_frames=0, eps=EPS)
        assert rel_err(out.numpy(), ref) < 1e-10


def test_mono_magnitudes_broadcast_over_channels():
    v, x = synthetic(batch=1, seed=2)
    v = v[:, :, :1]
    ref = norbert_wiener(v, x, 2, False, False)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), 2, window_frames=0, eps=EPS)
    assert out.shape == (1, 3, 2, 33, 24)
    assert rel_err(out.numpy(), ref) < 1e-10


def test_windows_are_independent_norbert_calls():
    v, x = synthetic(batch=1, frames=40, seed=3)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), 2, window_frames=16, eps=EPS).numpy()
    for start in (0, 16, 32):
        sl = slice(start, start + 16)
        ref = norbert_wiener(v[..., sl], x[..., sl], 2, False, False)
        assert rel_err(out[..., sl], ref) < 1e-10


def load_openunmix_filtering():
    """``openunmix/filtering.py`` alone: the package's ``__init__`` needs torchaudio."""
    import importlib.util

    spec = importlib.util.find_spec("openunmix")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("openunmix is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "filtering.py"
    module_spec = importlib.util.spec_from_file_location("_umx_filtering", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_matches_openunmix_filtering():
    filtering = load_openunmix_filtering()

    v, x = synthetic(batch=1, sources=4, seed=4)
    xt = torch.from_numpy(x[0]).permute(2, 1, 0)  # (N, F, C)
    vt = torch.from_numpy(v[0]).permute(3, 2, 1, 0)  # (N, F, C, S)
    for residual in (False, True):
        ref = filtering.wiener(vt.clone(), torch.view_as_real(xt).clone(), 1, False, residual)
        ref = torch.view_as_complex(ref.permute(0, 1, 2, 4, 3).contiguous()).permute(3, 2, 1, 0)
        out = wiener(torch.from_numpy(v), torch.from_numpy(x), 1, False, residual, 0, 1e-10)
        # openunmix computes pi and the phase in float32 (its own atan2): 1e-8 apart
        assert rel_err(out[0].numpy(), ref.numpy()) < 1e-6


def test_torchscript_matches_eager():
    scripted = torch.jit.script(wiener)
    for frames, window in ((7, 300), (50, 16), (33, 0)):
        v, x = synthetic(batch=2, frames=frames, seed=frames)
        args = (torch.from_numpy(v).float(), torch.from_numpy(x).to(torch.complex64))
        for iterations, use_softmask, residual in (
            (0, False, False),
            (1, True, False),
            (2, False, True),
        ):
            eager = wiener(*args, iterations, use_softmask, residual, window)
            script = scripted(*args, iterations, use_softmask, residual, window)
            torch.testing.assert_close(script, eager, rtol=0, atol=0)


def test_inputs_are_not_modified():
    v, x = synthetic(batch=1)
    mags, mix = torch.from_numpy(v.copy()), torch.from_numpy(x.copy())
    wiener(mags, mix, 2, residual=True)
    assert np.array_equal(mags.numpy(), v) and np.array_equal(mix.numpy(), x)


def test_residual_completes_the_mixture():
    v, x = synthetic(batch=2)
    out = wiener(torch.from_numpy(v), torch.from_numpy(x), 0, residual=True)
    assert out.shape[1] == 4
    torch.testing.assert_close(out.sum(dim=1), torch.from_numpy(x))


def test_em_estimates_sum_to_the_mixture():
    """sum_j v_j R_j Cxx^-1 x = x up to the sqrt(eps) regularisation."""
    v, x = synthetic(batch=2, seed=5)
    for eps, tol in ((1e-10, 1e-4), (1e-16, 1e-7)):
        out = wiener(torch.from_numpy(v), torch.from_numpy(x), 1, eps=eps)
        assert rel_err(out.sum(dim=1).numpy(), x) < tol


def test_softmask_is_a_ratio_mask():
    v, x = synthetic(batch=1)
    mags, mix = torch.from_numpy(v), torch.from_numpy(x)
    est = softmask(mags, mix, eps=0.0)
    torch.testing.assert_close(est.sum(dim=1), mix)
    torch.testing.assert_close(
        est.abs(), mags / mags.sum(dim=1, keepdim=True) * mix.abs().unsqueeze(1)
    )


def test_zero_iterations_em_is_identity():
    v, x = synthetic(batch=1)
    y = torch.from_numpy(x).unsqueeze(1).expand(-1, 3, -1, -1, -1)
    assert expectation_maximization(y, torch.from_numpy(x), 0) is y


@pytest.mark.parametrize("kind", ["silent", "clipped", "silent-estimates"])
def test_finite_on_silent_and_clipped_input(kind):
    t = torch.arange(44100 // 4) / 44100.0
    tone = torch.stack([torch.sin(2 * torch.pi * 440 * t), torch.sin(2 * torch.pi * 660 * t)])
    wave = torch.zeros_like(tone) if kind == "silent" else (8 * tone).clamp(-1, 1)
    mix = stft(wave.unsqueeze(0), N_FFT, HOP)
    mags = mix.abs().unsqueeze(1).expand(-1, 2, -1, -1, -1) * torch.tensor([0.7, 0.3]).view(
        1, 2, 1, 1, 1
    )
    if kind == "silent-estimates":
        mags = torch.zeros_like(mags)
    for iterations in (0, 1, 2):
        for use_softmask in (False, True):
            out = wiener(mags, mix, iterations, use_softmask, True)
            assert torch.isfinite(torch.view_as_real(out)).all()
            if kind == "silent":
                assert out.abs().max() == 0


def test_rejects_mismatched_shapes():
    v, x = synthetic(batch=1)
    with pytest.raises(ValueError, match="do not match"):
        wiener(torch.from_numpy(v[..., :-1]), torch.from_numpy(x))
    with pytest.raises(ValueError, match="complex"):
        wiener(torch.from_numpy(v), torch.from_numpy(np.abs(x)))


# --- real stems -----------------------------------------------------------------------


def sdr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Plain SDR in dB per source, ``10 log10(|s|^2 / |s - s_hat|^2)``, over ``(..., channel, time)``."""
    num = reference.pow(2).flatten(-2).sum(-1)
    return 10 * torch.log10(num / (reference - estimate).pow(2).flatten(-2).sum(-1))


def real_spectrograms(shared_data: Path, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturbed true stem magnitudes ``(1, 4, 2, F, N)`` and the mixture STFT, float32."""
    stems = musdb_stems(shared_data / PREVIEW, seconds).unsqueeze(0)  # (1, 4, 2, T)
    mix = stft(stems.sum(1), 4096, 1024)
    gen = torch.Generator().manual_seed(0)
    noise = torch.exp(0.3 * torch.randn(stems.shape[:3] + mix.shape[-2:], generator=gen))
    return stft(stems, 4096, 1024).abs() * noise, mix


def check_real(mags, mix, iterations, use_softmask, residual):
    ref = norbert_wiener(mags.numpy(), mix.numpy(), iterations, use_softmask, residual)
    out = wiener(mags, mix, iterations, use_softmask, residual, window_frames=0)
    assert out.dtype == torch.complex64
    assert rel_err(out.numpy(), ref) < 1e-4, (iterations, use_softmask, residual)


@pytest.mark.data
def test_matches_norbert_on_real_spectrograms(shared_data):
    """complex64 on 1 s of real music vs norbert in float64 (norbert is slow: few frames)."""
    mags, mix = real_spectrograms(shared_data, 1.0)
    for iterations in (0, 1, 2):
        check_real(mags, mix, iterations, False, False)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("iterations", [0, 1, 2])
@pytest.mark.parametrize("use_softmask", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_norbert_on_real_spectrograms_all_options(
    shared_data, iterations, use_softmask, residual
):
    mags, mix = real_spectrograms(shared_data, 3.0)
    check_real(mags, mix, iterations, use_softmask, residual)


@pytest.mark.data
def test_oracle_wiener_beats_ratio_mask_on_real_stems(shared_data):
    stems = musdb_stems(shared_data / PREVIEW, 3.0).unsqueeze(0)
    length = stems.shape[-1]
    mix = stft(stems.sum(1), 2048, 512)
    mags = stft(stems, 2048, 512).abs()
    ratio = istft(wiener(mags, mix, 0, softmask=True), 2048, 512, length)
    em = istft(wiener(mags, mix, 1), 2048, 512, length)
    ratio_sdr, em_sdr = sdr(stems, ratio)[0], sdr(stems, em)[0]
    assert em_sdr.mean() > ratio_sdr.mean() + 0.5, (em_sdr, ratio_sdr)
    assert (em_sdr > ratio_sdr).sum() >= 3, (em_sdr, ratio_sdr)
