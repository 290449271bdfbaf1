"""Unit tests of the training building blocks: config, augmentation, sampling,
losses, checkpoints, curves. Tiny generated arrays only."""

from __future__ import annotations

import errno
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sepcli.errors import TrainingError
from sepcli.training import augment
from sepcli.training.cache import CachedTrack
from sepcli.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sepcli.training.config import (
    TrainConfig,
    apply_overrides,
    dump_toml,
    load_config,
    load_toml,
    parse_set,
    save_config,
)
from sepcli.training.losses import (
    complex_l1,
    magnitude_mse,
    make_loss,
    multi_resolution_stft,
    sdr_loss,
    time_l1,
)
from sepcli.training.plot import curves_svg
from sepcli.training.sampling import Augmentation, ChunkDataset, ChunkSampler

torch.set_num_threads(2)


# -- config ---------------------------------------------------------------------
def test_set_overrides_coerce_types():
    cfg = apply_overrides(
        TrainConfig(),
        parse_set(
            [
                "epochs=3",
                "lr=0.01",
                "aug-mix=false",
                "targets=vocals,drums",
                "model_config.hidden_size=16",
                "model.bandwidth=8000.5",
            ]
        ),
    )
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr == 0.01 and cfg.aug_mix is False
    assert cfg.targets == ("vocals", "drums")
    assert cfg.model_config == {"hidden_size": 16, "bandwidth": 8000.5}


@pytest.mark.parametrize(
    "item, message",
    [
        ("epochs=two", "bad value for 'epochs'"),
        ("nope=1", "unknown setting 'nope'"),
        ("epochs", "key=value"),
        ("aug_gain=maybe", "not a boolean"),
        ("epochs=1.5", "not an integer"),
        ("epochs=0", "epochs must be positive"),
        ("model=resnet", "model must be one of"),
        ("lr=nan", "not a finite number"),
    ],
)
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(TrainingError, match=message) as info:
        apply_overrides(TrainConfig(), parse_set([item]))
    assert "\n" not in str(info.value)


def test_toml_round_trip(tmp_path):
    cfg = TrainConfig(
        data="d",
        targets=("vocals", "accompaniment"),
        epochs=7,
        gain_max=1.5,
        model_config={"hidden_size": 32, "unidirectional": True, "name": "x"},
    )
    path = save_config(cfg, tmp_path / "config.toml")
    assert load_config(path) == cfg
    assert "[model_config]" in dump_toml(cfg)


def test_toml_model_table_and_errors(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('model = "tfc-tdf"\nepochs = 4\n[model_config]\nchannels = 8\n')
    cfg = apply_overrides(TrainConfig(), load_toml(good))
    assert cfg.model == "tfc-tdf" and cfg.epochs == 4 and cfg.model_config == {"channels": 8}
    bad = tmp_path / "b.toml"
    bad.write_text("epochs = \n")
    with pytest.raises(TrainingError, match="b.toml: not a valid TOML"):
        load_toml(bad)
    with pytest.raises(TrainingError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    unknown = tmp_path / "c.toml"
    unknown.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(TrainingError, match=r"unknown table \[optimizer\]"):
        load_toml(unknown)


# -- augmentation ------------------------------------------------------------------
def test_augment_functions():
    rng = np.random.default_rng(0)
    x = np.stack([np.ones(10, np.float32), 2 * np.ones(10, np.float32)])
    g = augment.random_gain(x, rng, 0.25, 1.25)
    ratio = g[0, 0] / x[0, 0]
    assert 0.25 <= ratio <= 1.25 and np.allclose(g / x, ratio)
    swaps = {
        tuple(augment.random_channel_swap(x, np.random.default_rng(s))[:, 0]) for s in range(20)
    }
    assert swaps == {(1.0, 2.0), (2.0, 1.0)}
    assert augment.crop(x, 8, 5).shape == (2, 5)
    assert np.all(augment.crop(x, 8, 5)[:, 2:] == 0)
    assert augment.random_start(4, 10, rng) == 0
    assert all(0 <= augment.random_start(100, 10, rng) <= 90 for _ in range(50))


def _tracks(n=3, length=400, channels=2):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        sources = {
            "vocals": (rng.standard_normal((channels, length)) * 0.1 + i).astype(np.float32),
            "rest": (rng.standard_normal((channels, length)) * 0.1 - i).astype(np.float32),
        }
        out.append(CachedTrack(f"t{i}", sources, 8000, Path(f"t{i}")))
    return out


def test_dataset_is_seeded_and_mixture_is_sum():
    ds = ChunkDataset(_tracks(), ("vocals", "rest"), 1, 100, samples_per_track=4, seed=3)
    mix, y = ds[(2, 5)]
    mix2, y2 = ds[(2, 5)]
    assert torch.equal(mix, mix2) and torch.equal(y, y2)
    assert mix.shape == (2, 100) and y.shape == (1, 2, 100)
    assert not torch.equal(ds[(3, 5)][0], mix)
    # the mixture is the sum of all sources (targets and rest)
    aug = Augmentation.off()
    ds_plain = ChunkDataset(
        _tracks(), ("vocals", "rest"), 2, 100, samples_per_track=4, augmentation=aug
    )
    mix, y = ds_plain[(0, 0)]
    assert torch.allclose(mix, y.sum(0), atol=1e-6)


def test_augmentation_switches():
    tracks = _tracks()
    off = ChunkDataset(
        tracks, ("vocals", "rest"), 2, 100, samples_per_track=4, augmentation=Augmentation.off()
    )
    # without mixing every source comes from the balanced track at the same offset
    for draw in range(12):
        _, y = off[(0, draw)]
        track = draw // 4
        assert abs(float(y[0].mean()) - track) < 0.1 and abs(float(y[1].mean()) + track) < 0.1
    mixing = ChunkDataset(
        tracks,
        ("vocals", "rest"),
        2,
        100,
        samples_per_track=4,
        augmentation=Augmentation(gain=False, channel_swap=False, mix=True),
    )
    rests = {round(float(mixing[(0, d)][1][1].mean())) for d in range(40)}
    assert rests == {0, -1, -2}  # sources drawn from other tracks too
    gains = ChunkDataset(
        tracks,
        ("vocals", "rest"),
        2,
        100,
        samples_per_track=4,
        augmentation=Augmentation(gain=True, channel_swap=False, mix=False),
    )
    means = [float(gains[(0, d)][1][0].mean()) for d in range(8, 12)]  # track 2: mean 2 before gain
    assert (
        all(0.5 - 0.05 <= m <= 2.5 + 0.05 for m in means) and len({round(m, 3) for m in means}) > 1
    )


def test_silence_threshold_skips_silent_chunks():
    t = _tracks(1, length=1000)[0]
    vocals = np.zeros_like(t.sources["vocals"])
    vocals[:, 900:] = 0.5
    track = CachedTrack("t", {"vocals": vocals, "rest": t.sources["rest"]}, 8000, Path("t"))
    aug = Augmentation(gain=False, channel_swap=False, mix=False, silence_threshold=0.05)
    ds = ChunkDataset(
        [track], ("vocals", "rest"), 1, 100, samples_per_track=20, augmentation=aug, seed=0
    )
    loud = sum(float(ds[(0, d)][1].abs().max()) > 0 for d in range(20))
    plain = ChunkDataset(
        [track],
        ("vocals", "rest"),
        1,
        100,
        samples_per_track=20,
        augmentation=Augmentation.off(),
        seed=0,
    )
    loud_plain = sum(float(plain[(0, d)][1].abs().max()) > 0 for d in range(20))
    assert loud > loud_plain


def test_sampler_is_balanced_and_sharded():
    s = ChunkSampler(12, seed=1)
    s.set_epoch(1)
    keys = list(s)
    assert sorted(d for _, d in keys) == list(range(12)) and all(e == 1 for e, _ in keys)
    s.set_epoch(2)
    assert list(s) != keys
    r0 = ChunkSampler(12, seed=1, num_samples=10, rank=0, world_size=2)
    r1 = ChunkSampler(12, seed=1, num_samples=10, rank=1, world_size=2)
    a, b = [d for _, d in r0], [d for _, d in r1]
    assert len(a) == len(b) == 10 and not set(a) & set(b)
    with pytest.raises(TrainingError, match="does not match"):
        r0.load_state_dict({"epoch": 1, "seed": 2, "num_samples": 10})


def test_speed_change_shifts_pitch_and_keeps_the_length():
    from sepcli.training.augment import change_speed, random_speed

    sr, length = 8000, 8000
    t = np.arange(int(length * 1.1)) / sr
    tone = np.stack([np.sin(2 * np.pi * 500 * t)] * 2).astype(np.float32)
    out = change_speed(tone, 1.1, length)
    assert out.shape == (2, length) and out.dtype == np.float32
    peak = np.argmax(np.abs(np.fft.rfft(out[0, 1000:-1000]))) * sr / (length - 2000)
    assert peak == pytest.approx(550, abs=3)
    # two draws whatever the outcome: the stream after it does not depend on it
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert random_speed(a, 0.0, 2.0) == 1.0
    factor = random_speed(b, 1.0, 2.0)
    assert 2 ** (-2 / 12) <= factor <= 2 ** (2 / 12) and factor != 1.0
    assert a.random() == b.random()


def test_speed_augmentation_keeps_a_tracks_stems_aligned():
    """Without source mixing every stem of a chunk gets the same factor and start:
    with ``rest = -vocals`` the mixture cancels exactly; with mixing (one factor
    per source, other tracks) it does not. Lengths never change."""
    rng = np.random.default_rng(4)
    tracks = []
    for i in range(2):
        vocals = rng.standard_normal((2, 16000)).astype(np.float32)
        tracks.append(CachedTrack(f"t{i}", {"vocals": vocals, "rest": -vocals}, 8000, Path("t")))

    def chunk(mix: bool) -> tuple[np.ndarray, np.ndarray]:
        aug = Augmentation(gain=False, channel_swap=False, mix=mix, speed=1.0)
        return ChunkDataset(tracks, ("vocals", "rest"), 1, 4000, augmentation=aug).chunk(1, 0)

    aligned, targets = chunk(mix=False)
    assert aligned.shape == (2, 4000) and targets.shape == (1, 2, 4000)
    assert np.abs(aligned).max() == 0 and np.abs(targets).max() > 0.5
    mixed, _ = chunk(mix=True)
    assert mixed.shape == (2, 4000) and np.abs(mixed).max() > 0.5


# -- losses -------------------------------------------------------------------------
def test_losses_are_zero_at_truth_and_positive_elsewhere():
    torch.manual_seed(0)
    y = torch.randn(2, 1, 2, 2048) * 0.1
    from sepcli.dsp.stft import stft

    spec = stft(y, 256, 64)
    assert magnitude_mse(spec.abs(), y, 256, 64).item() < 1e-10
    assert complex_l1(spec, y, 256, 64).item() < 1e-6
    assert time_l1(y, y).item() == 0
    assert multi_resolution_stft(y, y).item() < 1e-5
    noisy = y + 0.05 * torch.randn_like(y)
    for value in (
        magnitude_mse(stft(noisy, 256, 64).abs(), y, 256, 64),
        complex_l1(stft(noisy, 256, 64), y, 256, 64),
        time_l1(noisy, y),
        multi_resolution_stft(noisy, y),
    ):
        assert value.item() > 1e-4


def test_sdr_loss_values():
    torch.manual_seed(0)
    s = 0.5 * torch.randn(3, 1, 2, 40000)
    rest = torch.randn(3, 1, 2, 40000)
    x = (s + rest)[:, 0]
    tau = 1e-3
    # perfect: -10 log10(||s||² / (τ||x||²)), about -23 dB here (||x||² = 5 ||s||²)
    ref = s.pow(2).sum((-2, -1))[:, 0]
    floor = tau * x.pow(2).sum((-2, -1)) + 1e-8
    expect = torch.mean(10 * torch.log10(floor / (ref + floor)))
    assert sdr_loss(s, s, x).item() == pytest.approx(expect.item(), abs=1e-4)
    # a silent estimate scores 0 dB on the source; on the rest, x - 0 = x is off by s,
    # 6 dB below the rest: the mean over both terms is -3 dB
    zero = torch.zeros_like(s)
    assert sdr_loss(zero, s, x).item() == pytest.approx(0.0, abs=1e-3)
    with_rest = sdr_loss(zero, s, x, rest=True).item()
    assert with_rest == pytest.approx(0.5 * (0.0 + 10 * math.log10(0.25)), abs=0.1)
    # scale: halving everything leaves the loss unchanged
    noisy = s + 0.3 * torch.randn_like(s)
    assert sdr_loss(noisy / 2, s / 2, x / 2).item() == pytest.approx(
        sdr_loss(noisy, s, x).item(), abs=1e-4
    )
    # a silent true source is bounded and zero for a silent estimate
    silent = torch.zeros_like(s)
    assert sdr_loss(silent, silent, x).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < sdr_loss(noisy, silent, x).item() < 40


def test_mixture_phase_losses_match_what_the_separator_writes():
    """``sdr`` on a magnitude output scores mask * mixture through the inverse STFT,
    exactly the waveform ``reconstruct("mixture")`` gives; ``mse-complex`` is zero
    when the mixture phase is the source phase."""
    from sepcli.dsp.phase import reconstruct
    from sepcli.dsp.stft import stft

    torch.manual_seed(1)
    v = torch.randn(2, 1, 2, 4096) * 0.1
    a = torch.randn(2, 1, 2, 4096) * 0.1
    x = (v + a)[:, 0]
    mag = stft(v, 512, 128).abs()
    wave = reconstruct("mixture", mag, stft(x, 512, 128), 512, 128, 4096)
    _, fn = make_loss("magnitude", "sdr", 512, 128, num_sources=1)
    assert fn(mag, v, x).item() == pytest.approx(sdr_loss(wave, v, x, rest=True).item(), abs=1e-3)
    _, fn1 = make_loss("magnitude", "sdr", 512, 128, num_sources=2)
    assert fn1(mag, v, x).item() == pytest.approx(sdr_loss(wave, v, x).item(), abs=1e-3)
    _, psa = make_loss("magnitude", "mse-complex", 512, 128, num_sources=1)
    assert psa(stft(x, 512, 128).abs().unsqueeze(1), x.unsqueeze(1), x).item() < 1e-6
    spec_v, spec_x = stft(v, 512, 128), stft(x, 512, 128)
    direct = (mag * (spec_x / spec_x.abs()).unsqueeze(1) - spec_v).abs().square().mean()
    assert psa(mag, v, x).item() == pytest.approx(direct.item(), rel=1e-4)
    # gradients reach the magnitudes
    est = mag.clone().requires_grad_()
    fn(est, v, x).backward()
    assert est.grad is not None and est.grad.abs().sum() > 0
    # complex and waveform outputs take the same loss
    _, cfn = make_loss("complex", "sdr", 512, 128, num_sources=1)
    assert cfn(stft(v, 512, 128), v, x).item() < -20
    _, wfn = make_loss("waveform", "sdr", num_sources=1)
    assert wfn(v, v, x).item() == pytest.approx(sdr_loss(v, v, x, rest=True).item())


def test_make_loss_checks_output_kind():
    assert make_loss("magnitude", "auto", 256, 64)[0] == "mse"
    assert make_loss("complex", "auto", 256, 64)[0] == "l1-complex"
    assert make_loss("waveform", "l1-time+mrstft")[0] == "l1-time+mrstft"
    assert make_loss("magnitude", "sdr", 256, 64)[0] == "sdr"
    assert make_loss("magnitude", "mse-complex", 256, 64)[0] == "mse-complex"
    with pytest.raises(TrainingError, match="does not fit a magnitude model"):
        make_loss("magnitude", "l1-time", 256, 64)
    with pytest.raises(TrainingError, match="does not fit a waveform model"):
        make_loss("waveform", "mse-complex")
    with pytest.raises(TrainingError, match="STFT parameters"):
        make_loss("complex", "auto")


# -- checkpoints ----------------------------------------------------------------------
def test_checkpoint_round_trip_with_rng(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "rng": rng_state()}
    path = save_checkpoint(state, tmp_path / "c.pt")
    expected = (torch.rand(2), np.random.rand(2), random.random())
    loaded = load_checkpoint(path)
    set_rng_state(loaded["rng"])
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and loaded["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "c.pt")
    before = path.read_bytes()

    def no_space(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(
        TrainingError,
        match=r"c.pt: cannot write checkpoint \(no space left on device\); the previous checkpoint is intact",
    ):
        save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_bad_checkpoints(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(TrainingError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(junk)


def test_sdr_metrics():
    from sepcli.training.validate import bsseval_sdr, framewise_sdr

    torch.manual_seed(0)
    refs = torch.randn(2, 2, 8000)
    good = refs + 0.01 * torch.randn_like(refs)
    bad = refs + 0.5 * torch.randn_like(refs)
    for fn in (bsseval_sdr, framewise_sdr):
        hi, lo = fn(refs, good, 2000), fn(refs, bad, 2000)
        assert hi.shape == (2,) and bool((hi > lo + 10).all())
    silent = torch.zeros(2, 2, 8000)
    silent[0] = refs[0]
    assert torch.isnan(framewise_sdr(silent, good, 2000)[1])


def test_curves_svg():
    history = [
        {"epoch": 1, "train_loss": 2.0, "valid": {"vocals": 1.0}},
        {"epoch": 2, "train_loss": 1.0, "valid": {"vocals": float("nan")}},
        {"epoch": 3, "train_loss": 0.5, "valid": {"vocals": 2.5}},
    ]
    svg = curves_svg(history)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "vocals SDR" in svg
    assert "no data yet" in curves_svg([{"epoch": 1, "train_loss": 1.0, "valid": None}])
