"""The Separator pipeline: chunking, shifts, resampling, channels, derived stems, files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_tone, save_torchscript_archive, write_wav
from snr import snr_db

from sepcli.dsp.stft import stft
from sepcli.errors import ConfigError, UsageError
from sepcli.inference.separator import Separator
from sepcli.models.archive import ArchiveMetadata, StftParams


@pytest.mark.parametrize("length", [1, 999, 22050, 44101, 100_003])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("shifts", [0, 2])
def test_identity_archive_returns_the_input(identity_archive, length, overlap, shifts):
    """An identity model through the chunker gives the input back (Asteroid's OLA test)."""
    x = np.random.default_rng(length).standard_normal((2, length)).astype(np.float32) * 0.3
    sep = Separator(
        identity_archive, device="cpu", segment_seconds=0.5, overlap=overlap, shifts=shifts
    )
    y = sep.separate(x, 44100)["vocals"].numpy()
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-5)


@pytest.mark.parametrize("sample_rate", [48000, 22050])
def test_other_sample_rates_keep_length_and_content(identity_archive, sample_rate):
    t = np.arange(int(1.3 * sample_rate)) / sample_rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 3000 * t)]).astype(
        np.float32
    )
    y = (
        Separator(identity_archive, device="cpu", segment_seconds=0.5)
        .separate(x, sample_rate)["vocals"]
        .numpy()
    )
    assert y.shape == x.shape
    core = slice(2000, -2000)  # resampler filters ramp up at the very ends
    assert snr_db(x[:, core], y[:, core]) > 60


def test_mono_input_gives_mono_stems_unless_asked(tiny_wave_archive):
    x = make_tone(0.7, channels=1)
    sep = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.5)
    out = sep.separate(x, 44100)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "vocals": (1, x.shape[1]),
        "accompaniment": (1, x.shape[1]),
    }
    stereo = sep.separate(x, 44100, out_channels=2)
    assert stereo["vocals"].shape == (2, x.shape[1])


def test_more_than_two_channels_are_downmixed(identity_archive, caplog):
    caplog.set_level("WARNING", logger="sepcli")  # a CLI test before may have quietened it
    x = np.tile(make_tone(0.5, channels=1), (6, 1))
    out = Separator(identity_archive, device="cpu", segment_seconds=0.5).separate(x, 44100)
    assert out["vocals"].shape == (2, x.shape[1])
    np.testing.assert_allclose(out["vocals"][0].numpy(), x[0], atol=1e-5)
    assert "downmixing" in caplog.text


def test_derived_stems(tiny_mask_archive, identity_archive):
    x = make_tone(1.2)
    four = Separator(tiny_mask_archive, device="cpu", segment_seconds=0.5)
    out = four.separate(x, 44100, ["drums", "bass", "other", "vocals", "accompaniment"])
    expected = out["drums"] + out["bass"] + out["other"]
    torch.testing.assert_close(out["accompaniment"], expected, atol=1e-5, rtol=0)
    one = Separator(identity_archive, device="cpu", segment_seconds=0.5)
    out = one.separate(x, 44100, ["vocals", "accompaniment"])
    assert float(out["accompaniment"].abs().max()) < 1e-5  # mixture - vocals, vocals == mixture


def test_magnitude_model_with_mixture_phase_sums_to_mixture(tiny_mask_archive):
    """Softmax masks sum to one, so with mixture phase the stems add up to the input."""
    x = make_tone(1.0)
    out = Separator(tiny_mask_archive, device="cpu", segment_seconds=0.5, overlap=0.5).separate(
        x, 44100
    )
    total = sum(out.values()).numpy()
    np.testing.assert_allclose(total, x, atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_wave_archive", "tiny_mask_archive"])
def test_silent_input_gives_silent_finite_stems(fixture, request):
    archive = request.getfixturevalue(fixture)
    out = Separator(archive, device="cpu", segment_seconds=0.5).separate(
        np.zeros((2, 30000), np.float32), 44100
    )
    for y in out.values():
        assert torch.isfinite(y).all()
    if fixture == "tiny_mask_archive":
        assert all(float(y.abs().max()) == 0.0 for y in out.values())


def test_shifts_are_reproducible_and_seeded(tiny_wave_archive):
    x = make_tone(1.0)
    a = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.3, shifts=2, seed=1).separate(
        x, 44100
    )
    b = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.3, shifts=2, seed=1).separate(
        x, 44100
    )
    c = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.3, shifts=2, seed=2).separate(
        x, 44100
    )
    assert torch.equal(a["vocals"], b["vocals"])
    assert not torch.equal(a["vocals"], c["vocals"])


def test_overlap_defaults_to_the_archives(tmp_path, identity_archive):
    from sepcli.models.archive import load_archive

    archive = load_archive(identity_archive)
    assert Separator(archive, device="cpu").overlap == 0.25
    short = save_torchscript_archive(
        archive.module, archive.metadata.replace(overlap=0.05), tmp_path / "short.sepcli"
    )
    assert Separator(short, device="cpu").overlap == 0.05
    assert Separator(short, device="cpu", overlap=0.5).overlap == 0.5
    x = make_tone(1.3)
    out = Separator(short, device="cpu", segment_seconds=0.4).separate(x, 44100)["vocals"]
    assert torch.allclose(out, torch.as_tensor(x), atol=1e-5)


def test_bad_options(identity_archive):
    with pytest.raises(ConfigError, match="overlap"):
        Separator(identity_archive, device="cpu", overlap=0.95)
    with pytest.raises(ConfigError, match="segment"):
        Separator(identity_archive, device="cpu", segment_seconds=0)
    with pytest.raises(UsageError, match="unknown stem 'piano'"):
        Separator(identity_archive, device="cpu").stems(["piano"])
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            Separator(identity_archive, device="cuda")


@pytest.mark.parametrize("sample_rate,channels", [(44100, 2), (48000, 1), (22050, 2)])
def test_separate_file_writes_same_length_and_rate(
    tmp_path, tiny_wave_archive, sample_rate, channels
):
    src = write_wav(tmp_path / "song.wav", make_tone(1.1, sample_rate, channels), sample_rate)
    outputs = {
        "vocals": tmp_path / "out" / "vocals.wav",
        "accompaniment": tmp_path / "out" / "acc.flac",
    }
    result = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.5).separate_file(
        src, outputs
    )
    for stem, path in outputs.items():
        info = sf.info(str(path))
        assert info.samplerate == sample_rate and info.channels == channels
        assert info.frames == int(round(1.1 * sample_rate)), stem
    assert result.outputs == outputs
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_separate_file_failure_leaves_nothing(tmp_path, tiny_wave_archive, monkeypatch):
    src = write_wav(tmp_path / "song.wav", make_tone(1.5))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "vocals.wav"
    existing.write_bytes(b"keep me")
    sep = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.2)
    calls = {"n": 0}
    import sepcli.inference.separator as separator_module

    forward = separator_module.to_waveform

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(separator_module, "to_waveform", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sep.separate_file(src, {"vocals": existing, "accompaniment": out_dir / "acc.wav"})
    assert sorted(p.name for p in out_dir.iterdir()) == ["vocals.wav"]
    assert existing.read_bytes() == b"keep me"


class _HalfMagnitude(torch.nn.Module):
    """One source whose magnitude is half the mixture's (magnitude output)."""

    def __init__(self):
        super().__init__()
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return (stft(mix, 512, 128).abs() * self.scale).unsqueeze(1)


@pytest.mark.parametrize("phase", ["mixture", "wiener", "griffin-lim", "misi"])
def test_single_source_magnitude_model_every_phase(tmp_path, phase):
    """Wiener on a one-source model uses the residual; every method gives half the mixture
    (MISI: all of it), exactly up to float32 or, for Wiener, its eps loading."""
    meta = ArchiveMetadata(
        name="half",
        sources=("vocals",),
        sample_rate=44100,
        audio_channels=2,
        output="magnitude",
        family="test",
        stft=StftParams(512, 128),
        segment_seconds=0.5,
    )
    path = save_torchscript_archive(_HalfMagnitude(), meta, tmp_path / "half.sepcli")
    x = make_tone(0.6)
    sep = Separator(path, device="cpu", phase=phase, gl_iters=8)
    out = sep.separate(x, 44100, ["vocals", "accompaniment"])
    vocals = out["vocals"].numpy()
    assert np.isfinite(vocals).all()
    ratio = np.sqrt((vocals**2).sum() / (x**2).sum())
    # |S| = |X| / 2 is consistent with the mixture phase, so mixture phase and Griffin-Lim
    # (started from it) give x / 2 to float32 precision; MISI keeps the estimates summing
    # to the mixture, so its one source is the mixture itself.
    exact = {"mixture": x / 2, "griffin-lim": x / 2, "misi": x}
    if phase in exact:
        np.testing.assert_allclose(vocals, exact[phase], rtol=0, atol=1e-6)
    else:
        # Wiener with the residual as second source: both have |X| / 2, so the gains are
        # 1/2 but for the eps loading of the EM (v / (v + eps) in quiet bins): measured
        # ratio 0.499987 and at most 3e-4 per sample; with eps -> 0 it tends to x / 2.
        assert ratio == pytest.approx(0.5, rel=1e-4)
        np.testing.assert_allclose(vocals, x / 2, rtol=0, atol=5e-4)


@pytest.fixture(scope="module")
def four_source_umx(tmp_path_factory):
    from sepcli.models import UMXConfig, build_model, export_archive, load_verified

    torch.manual_seed(0)
    config = UMXConfig(n_fft=256, hop_length=64, hidden_size=8, num_layers=1)
    path = export_archive(
        build_model("umx", config), tmp_path_factory.mktemp("umx") / "u.sepcli", name="u4"
    )
    return load_verified(path)


def test_only_the_networks_of_the_requested_stems_run(four_source_umx):
    """Open-Unmix has one network per source: with the mixture phase, vocals and
    accompaniment need the vocals network only (accompaniment = mixture - vocals)."""
    x = np.random.default_rng(1).standard_normal((2, 20000)).astype(np.float32) * 0.1
    sep = Separator(four_source_umx, device="cpu", phase="mixture", segment_seconds=0.2)
    vocals = sep.sources.index("vocals")
    plan = sep.plan(["vocals", "accompaniment"])
    assert plan.sources == (vocals,) and plan.note is None
    assert [r.kind for r in plan.recipes] == ["source", "mix_minus"]
    mix = torch.from_numpy(x)[None]
    assert four_source_umx.module.forward_sources(mix, [vocals]).shape[1] == 1
    fewer = sep.separate(x, 44100, ["vocals", "accompaniment"])
    full = sep.separate(x, 44100, list(sep.sources))
    torch.testing.assert_close(fewer["vocals"], full["vocals"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        fewer["accompaniment"], torch.from_numpy(x) - fewer["vocals"], rtol=0, atol=1e-6
    )
    assert sep.plan(list(sep.sources)).sources is None  # every source asked: one forward


def test_wiener_needs_every_network_and_says_so(four_source_umx):
    sep = Separator(four_source_umx, device="cpu", phase="wiener", segment_seconds=0.2)
    plan = sep.plan(["vocals"])
    assert plan.sources is None and "wiener" in plan.note and "--phase mixture" in plan.note
    assert [r.kind for r in plan.recipes] == ["source"]
