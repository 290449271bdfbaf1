"""The phase step's single entry point, sepcli.dsp.phase.reconstruct."""

from __future__ import annotations

import math

import pytest
import torch

from sepcli.dsp.phase import PHASE_METHODS, reconstruct
from sepcli.dsp.stft import istft, stft
from sepcli.errors import ConfigError

N_FFT, HOP = 512, 128
LENGTH = 6000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sources(kind: str = "music") -> torch.Tensor:
    """Three stereo sources ``(2, 3, 2, LENGTH)`` (a batch of two)."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(LENGTH) / 16000.0
    tone = torch.sin(2 * math.pi * 440 * t)
    src = torch.stack(
        [
            torch.stack([0.5 * tone, 0.3 * tone]),
            0.2 * torch.randn(2, LENGTH, generator=gen),
            torch.stack([torch.sin(2 * math.pi * 97 * t), torch.sin(2 * math.pi * 131 * t)]) * 0.4,
        ]
    )
    src = torch.stack([src, 0.5 * src.flip(-1)])
    if kind == "silent":
        return torch.zeros_like(src)
    if kind == "clipped":
        return (20 * src).clamp(-1, 1)
    return src


def run(method: str, src: torch.Tensor, **kw) -> torch.Tensor:
    mix_spec = stft(src.sum(1), N_FFT, HOP)
    mags = stft(src, N_FFT, HOP).abs()
    return reconstruct(method, mags, mix_spec, N_FFT, HOP, src.shape[-1], **kw)


def test_stft_without_centre_gives_the_frames_inside_the_signal():
    x = sources()[0, :, 0, :5000]  # (3, 5000)
    window = torch.hann_window(N_FFT, periodic=True)
    spec = stft(x, N_FFT, HOP, center=False)
    count = 1 + (5000 - N_FFT) // HOP
    assert spec.shape == (3, N_FFT // 2 + 1, count)
    for j in (0, 7, count - 1):
        frame = torch.fft.rfft(x[:, j * HOP : j * HOP + N_FFT] * window)
        torch.testing.assert_close(spec[..., j], frame, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(stft)
    assert torch.equal(scripted(x, N_FFT, HOP, None, False, False), spec)
    assert stft(x, N_FFT, HOP).shape[-1] == 1 + 5000 // HOP  # centred: the default


def test_methods():
    assert PHASE_METHODS == ("mixture", "wiener", "griffin-lim", "misi")


@pytest.mark.parametrize("method", PHASE_METHODS)
@pytest.mark.parametrize("kind", ["music", "silent", "clipped"])
def test_every_method_gives_finite_audio(method, kind):
    src = sources(kind)
    for init in ("mixture", "random"):
        out = run(
            method,
            src,
            wiener_iters=2,
            gl_iters=3,
            gl_init=init,
            generator=torch.Generator().manual_seed(0),
        )
        assert out.shape == src.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        if kind == "silent":
            assert out.abs().max() == 0


def test_wiener_zero_iterations_is_the_mixture_phase():
    src = sources()
    torch.testing.assert_close(run("wiener", src, wiener_iters=0), run("mixture", src))


def test_griffin_lim_zero_iterations_is_the_mixture_phase():
    src = sources()
    torch.testing.assert_close(run("griffin-lim", src, gl_iters=0), run("mixture", src))


def test_wiener_residual_is_dropped():
    src = sources()
    out = run("wiener", src, wiener_iters=1, wiener_residual=True)
    assert out.shape == src.shape


def test_misi_sums_to_the_mixture():
    src = sources()
    out = run("misi", src, gl_iters=4)
    mix = istft(stft(src.sum(1), N_FFT, HOP), N_FFT, HOP, LENGTH)
    torch.testing.assert_close(out.sum(1), mix, rtol=0, atol=1e-5)
    out = run("misi", src, gl_iters=4, mix_wave=src.sum(1))
    torch.testing.assert_close(out.sum(1), src.sum(1), rtol=0, atol=1e-5)


def test_oracle_methods_improve_on_mixture_phase():
    """With true magnitudes, Wiener EM and MISI beat the plain mixture phase."""
    src = sources()

    def sdr(est):
        return float(10 * torch.log10(src.pow(2).sum() / (src - est).pow(2).sum()))

    base = sdr(run("mixture", src))
    assert sdr(run("wiener", src, wiener_iters=1)) > base
    assert sdr(run("misi", src, gl_iters=16)) > base + 1.0


def test_random_init_follows_the_generator():
    src = sources()
    a = run(
        "griffin-lim", src, gl_iters=1, gl_init="random", generator=torch.Generator().manual_seed(5)
    )
    b = run(
        "griffin-lim", src, gl_iters=1, gl_init="random", generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_options_are_config_errors():
    src = sources()
    with pytest.raises(ConfigError, match="unknown phase method 'istft'"):
        run("istft", src)
    with pytest.raises(ConfigError, match="Griffin-Lim init"):
        run("griffin-lim", src, gl_init="zeros")
    with pytest.raises(ConfigError, match="iterations"):
        run("wiener", src, wiener_iters=-1)
    with pytest.raises(ConfigError, match="iterations"):
        run("misi", src, gl_iters=-1)


@pytest.mark.parametrize("method", PHASE_METHODS)
def test_separator_runs_every_method(tiny_mask_archive, method):
    """End to end through the separator (tiny random mask model, 0.5 s of audio)."""
    from sepcli.inference.separator import Separator

    sep = Separator(
        tiny_mask_archive,
        device="cpu",
        phase=method,
        wiener_iters=1,
        gl_iters=2,
        gl_init="random",
        segment_seconds=0.25,
    )
    mix = sources()[0].sum(0)[:, :4000].contiguous()
    out = sep.separate(mix, 44100)
    assert set(out) == {"drums", "bass", "other", "vocals"}
    for wave in out.values():
        assert wave.shape == mix.shape and torch.isfinite(torch.as_tensor(wave)).all()
