"""`sepcli models blend`: trained archives as one ensemble archive."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_data_archive

from sepcli.cli import main
from sepcli.dsp.phase import reconstruct
from sepcli.dsp.stft import stft
from sepcli.inference.separator import Separator
from sepcli.models import UMXConfig, WaveformConfig, build_model, export_archive, load_verified
from sepcli.models.archive import load_archive

torch.set_num_threads(2)


def run(*args: str):
    return CliRunner().invoke(main, ["models", "blend", *args], catch_exceptions=False)


@pytest.fixture()
def members(tmp_path):
    """Two waveform archives (vocals+drums, vocals) and a UMX (vocals, Wiener phase)."""
    torch.manual_seed(0)
    wave = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0)
    a = build_model("waveform", {**wave.to_dict(), "sources": ["vocals", "drums"]})
    b = build_model("waveform", {**wave.to_dict(), "sources": ["vocals"]})
    u = build_model(
        "umx",
        UMXConfig(n_fft=256, hop_length=64, hidden_size=8, num_layers=1, sources=("vocals",)),
    )
    return [
        export_archive(a, tmp_path / "a.sepcli", name="a", licence="MIT", overlap=0.1),
        export_archive(b, tmp_path / "b.sepcli", name="b", licence="CC-BY-NC", overlap=0.3),
        export_archive(u, tmp_path / "u.sepcli", name="u", licence="MIT", training_data="tones"),
    ]


def test_blend_is_the_weighted_mean_of_its_members(tmp_path, members):
    a, b, u = members
    out = tmp_path / "bag.sepcli"
    result = run(str(a), str(b), str(u), "--weights", "vocals=1,3,0", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("bag.sepcli")
    assert_data_archive(out, members=3)
    bag = load_verified(out)
    meta = bag.metadata
    assert meta.family == "ensemble" and meta.sources == ("vocals", "drums")
    assert meta.overlap == pytest.approx(0.3)  # the largest any member recommends
    assert (
        meta.licence == "MIT | CC-BY-NC"
        and meta.training_data == "a: unknown | b: unknown | u: tones"
    )
    blend = meta.extra["blend"]["members"]
    assert [m["name"] for m in blend] == ["a", "b", "u"]
    assert blend[1]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert blend[2]["phase"] == "wiener"  # UMX's recommended phase is kept
    assert blend[0]["weights"] == {"vocals": 1.0, "drums": 1.0}
    mix = 0.3 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        est_a = load_archive(a).module(mix)
        est_b = load_archive(b).module(mix)
        got = bag.module(mix)
    torch.testing.assert_close(got[:, 0], (est_a[:, 0] + 3 * est_b[:, 0]) / 4, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 1], est_a[:, 1], rtol=1e-5, atol=1e-6)  # only a has drums


def test_blend_uses_the_mixture_phase_when_asked(tmp_path, members):
    a, _, u = members
    out = tmp_path / "bag.sepcli"
    result = run(str(a), str(u), "--stems", "vocals", "--wiener", "0,0", "-o", str(out))
    assert result.exit_code == 0, result.output
    bag = load_verified(out)
    assert bag.metadata.sources == ("vocals",)
    mix = 0.3 * torch.randn(1, 2, 22050, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        wave_a = load_archive(a).module(mix)[:, :1]
        mag = load_archive(u).module(mix)
        wave_u = reconstruct("mixture", mag, stft(mix, 256, 64), 256, 64, mix.shape[-1])
        got = bag.module(mix)
    torch.testing.assert_close(got, (wave_a + wave_u) / 2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{a}"], "at least two member archives"),
        (["{a}", "{b}", "--weights", "bass=1,1"], "not a blended stem"),
        (["{a}", "{b}", "--weights", "vocals=1"], "1 values for 2 members"),
        (["{a}", "{b}", "--weights", "vocals=x,1"], "weights must be numbers"),
        (["{a}", "{b}", "--wiener", "1"], "one iteration count >= 0 per member"),
        (["{a}", "{b}", "--stems", "bass"], "bass"),
        (["{a}", "{b}", "--weights", "drums=0,0"], "drums"),
        (["{a}", "missing.sepcli"], "missing.sepcli"),
    ],
)
def test_blend_errors_are_one_line_and_write_nothing(tmp_path, members, args, message):
    a, b, _ = members
    out = tmp_path / "bag.sepcli"
    result = run(*[x.format(a=a, b=b) for x in args], "-o", str(out))
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sepcli", "b.sepcli", "u.sepcli"]


def test_blend_runs_members_of_other_rates_each_at_its_own(tmp_path, members):
    """A 16-kHz member blends with a 44.1-kHz one: the separator resamples the input
    once per member, runs each with its own chunking, and blends the waveforms, so
    the bag's stems are the weighted mean of each member separated alone."""
    config = WaveformConfig(
        channels=4, depth=2, lstm_layers=1, segment=0.5, sample_rate=16000, sources=("vocals",)
    )
    other = export_archive(build_model("waveform", config), tmp_path / "16k.sepcli", name="k16")
    bag_path = tmp_path / "bag.sepcli"
    result = run(str(members[1]), str(other), "-o", str(bag_path))
    assert result.exit_code == 0, result.output
    bag = load_verified(bag_path)
    x = np.random.default_rng(3).standard_normal((2, 30000)).astype(np.float32) * 0.1
    got = Separator(bag, device="cpu").separate(x, 44100)["vocals"]
    alone = [
        Separator(load_verified(p), device="cpu").separate(x, 44100)["vocals"]
        for p in (members[1], other)
    ]
    torch.testing.assert_close(got, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)


def test_blend_refuses_members_of_other_channel_counts(tmp_path, members):
    config = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0, audio_channels=1)
    other = export_archive(build_model("waveform", config), tmp_path / "mono.sepcli", name="mono")
    result = run(str(members[0]), str(other), "-o", str(tmp_path / "bag.sepcli"))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "1 ch" in errors[0], result.output
    assert not (tmp_path / "bag.sepcli").exists()


def test_blend_keeps_an_existing_output_unless_forced(tmp_path, members):
    a, b, _ = members
    out = tmp_path / "bag.sepcli"
    out.write_bytes(b"mine")
    result = run(str(a), str(b), "-o", str(out))
    assert result.exit_code == 2 and "already exists" in result.output
    assert out.read_bytes() == b"mine"
    assert run(str(a), str(b), "-o", str(out), "--force").exit_code == 0
    assert load_verified(out).metadata.sources == ("vocals", "drums")


@pytest.mark.parametrize("mode", ["max", "min", "median"])
def test_spectral_blend_modes(tmp_path, members, mode):
    """``--mode vocals=MODE``: per time-frequency bin, the member whose magnitude is the
    max/min/median, with its phase (a track shorter than the blend's 10-s chunk, so
    the streaming combiner runs it whole and equals spectral_blend of the members)."""
    from sepcli.dsp.phase import spectral_blend

    out = tmp_path / "bag.sepcli"
    waves = members[:2]  # waveform members: each runs in the bag exactly as alone
    result = run(*map(str, waves), "--stems", "vocals,drums", "--mode", f"vocals={mode}",
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    bag = load_verified(out)
    assert bag.metadata.config["modes"] == [mode, "mean"]
    x = np.random.default_rng(5).standard_normal((2, 30000)).astype(np.float32) * 0.1
    got = Separator(bag, device="cpu").separate(x, 44100)
    alone = [Separator(load_verified(p), device="cpu").separate(x, 44100) for p in waves]
    expected = spectral_blend(torch.stack([a["vocals"] for a in alone])[None], mode)[0]
    torch.testing.assert_close(got["vocals"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["drums"], alone[0]["drums"], rtol=1e-5, atol=1e-6)
    # the module's own forward forms mean blends only: it refuses, never blends otherwise
    with pytest.raises(
        (RuntimeError, torch.jit.Error), match=f"blends 'vocals' with mode '{mode}'"
    ):
        bag.module(torch.from_numpy(x)[None])
    bad = run(*map(str, members), "--mode", "vocals=loudest", "-o", str(tmp_path / "x.sepcli"))
    assert bad.exit_code == 2 and "loudest" in bad.output and not (tmp_path / "x.sepcli").exists()


@pytest.mark.parametrize("mode", ["uvr_max_spec", "min_fft", "median_wave"])
def test_audio_separator_algorithms_as_blend_modes(tmp_path, members, mode, monkeypatch):
    """``--mode vocals=uvr_max_spec`` (audio-separator's names): the bag's stem is
    :func:`sepcli.dsp.ensemble.ensemble` of what the members give alone, streamed
    through the separator in blocks shorter than the track."""
    from sepcli.dsp.ensemble import ensemble
    from sepcli.inference import separator as separator_module

    monkeypatch.setattr(separator_module, "BLOCK_SECONDS", 0.25)
    out = tmp_path / "bag.sepcli"
    waves = members[:2]
    result = run(*map(str, waves), "--stems", "vocals,drums", "--mode", f"vocals={mode}",
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    bag = load_verified(out)
    assert bag.metadata.config["modes"] == [mode, "mean"]
    x = np.random.default_rng(6).standard_normal((2, 50000)).astype(np.float32) * 0.1
    got = Separator(bag, device="cpu").separate(x, 44100)
    alone = [Separator(load_verified(p), device="cpu").separate(x, 44100) for p in waves]
    expected = ensemble(torch.stack([a["vocals"] for a in alone]), mode)
    torch.testing.assert_close(got["vocals"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["drums"], alone[0]["drums"], rtol=1e-5, atol=1e-6)
