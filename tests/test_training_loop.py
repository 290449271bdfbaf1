"""The training loop on tiny generated stems: loss goes down, resume is bit for
bit, early stopping, export, and the ``sepcli train`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_data_archive, collect_losses, make_tone, write_wav

from sepcli.errors import TrainingError
from sepcli.models.archive import ArchiveMetadata, load_archive, probe_archive
from sepcli.training import TrainConfig, build_run_model, train
from sepcli.training.export import MUSDB_LICENCE, data_licence
from sepcli.training.loop import BEST, CHECKPOINT, CURVES, LOG

torch.set_num_threads(2)
SR = 8000


class TinyNet(torch.nn.Module):
    """Waveform model with dropout (so resume must restore the torch RNG)."""

    def __init__(self, sources: int = 1, channels: int = 1):
        super().__init__()
        self.sample_rate = SR
        self.audio_channels = channels
        self.num_sources = sources
        self.conv = torch.nn.Conv1d(channels, 8, 15, padding=7)
        self.drop = torch.nn.Dropout(0.2)
        self.out = torch.nn.Conv1d(8, channels * sources, 15, padding=7)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        b, c, t = mix.shape
        h = self.drop(torch.tanh(self.conv(mix)))
        return self.out(h).view(b, self.num_sources, c, t)


def tiny_factory(config: TrainConfig):
    model = TinyNet(len(config.targets), config.audio_channels)
    meta = ArchiveMetadata(
        name="tiny",
        sources=config.targets,
        sample_rate=SR,
        audio_channels=config.audio_channels,
        output="waveform",
        family="test",
        segment_seconds=0.25,
    )
    return model, meta


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stems")
    for i, name in enumerate(("ann_1", "ann_2", "bob_1", "cat_1")):
        write_wav(root / name / "vocals.wav", make_tone(0.6, SR, 1, seed=i) * 0.6, SR)
        write_wav(root / name / "accompaniment.wav", make_tone(0.6, SR, 1, seed=20 + i) * 0.4, SR)
    return root


def config_for(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(root),
        out=str(out),
        sample_rate=SR,
        audio_channels=1,
        segment=0.2,
        samples_per_track=4,
        steps_per_epoch=3,
        batch_size=4,
        epochs=2,
        lr=3e-3,
        valid="cat_1",
        cache_dir=str(out.parent / "cache"),
        seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_and_run_folder_is_complete(data_root, tmp_path):
    losses: list[float] = []
    # a family model (a tiny waveform U-Net): the export is a data archive, which only
    # sepcli's families can be (TinyNet has no family code to rebuild it from)
    tiny_unet = {
        "channels": 8,
        "depth": 1,
        "bottleneck": "none",
        "segment": 0.25,
        "normalize": False,
    }
    cfg = config_for(
        data_root, tmp_path / "run", epochs=4, name="tiny-vocals", model="waveform",
        model_config=tiny_unet,
    )  # fmt: skip
    result = train(cfg, progress=collect_losses(losses))
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    run = tmp_path / "run"
    for name in (CHECKPOINT, BEST, LOG, CURVES, "config.toml"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 5))
    assert set(records[0]["valid"]) == {"vocals"} and math.isfinite(records[-1]["valid"]["vocals"])
    assert result.archive == run / "tiny-vocals.sepcli"
    assert_data_archive(result.archive)
    archive = load_archive(result.archive)
    probe_archive(archive)
    meta = archive.metadata
    assert meta.sources == ("vocals",) and meta.training_data.startswith(data_root.name)
    assert "unknown" in meta.licence  # a plain folder of unknown origin says so
    training = meta.extra["training"]
    assert training["epochs_run"] == 4 and training["best_epoch"] == result.best_epoch
    assert training["valid_tracks"] == ["cat_1"]
    # the settings travel with the weights, this machine's paths do not
    recorded = training["config"]
    assert recorded["data"] == [data_root.name] and recorded["epochs"] == 4
    assert "out" not in recorded and "cache_dir" not in recorded
    assert str(tmp_path) not in json.dumps(meta.extra) and str(data_root) not in json.dumps(
        meta.extra
    )
    key = f"{data_root.name}-valid"
    assert meta.scores[key]["vocals"]["SDR"] == pytest.approx(
        records[result.best_epoch - 1]["valid"]["vocals"]
    )


def step_losses(root: Path, out: Path, epochs: int, resume: bool = False, **kw) -> list[float]:
    """Train the tiny model for ``epochs`` (resuming if asked); the loss of every step."""
    seen: list[float] = []
    train(
        config_for(root, out, epochs=epochs, **kw),
        resume=resume,
        model_factory=tiny_factory,
        export=False,
        progress=collect_losses(seen),
    )
    return seen


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_is_bit_for_bit(data_root, tmp_path, workers):
    def run(out: Path, epochs: int, resume: bool = False) -> list[float]:
        return step_losses(data_root, out, epochs, resume, workers=workers)

    straight = run(tmp_path / "a", 3)
    first = run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    assert first == straight[:6]
    assert resumed == straight[6:]  # exactly equal, not approximately
    log = [json.loads(x) for x in (tmp_path / "b" / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_ema_and_speed_augmentation_resume_bit_for_bit_and_export_the_average(data_root, tmp_path):
    def run(out: Path, epochs: int, resume: bool = False) -> list[float]:
        return step_losses(data_root, out, epochs, resume, ema=0.9, aug_speed=0.5)

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    assert run(tmp_path / "b", 3, resume=True) == straight[6:]
    last = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    best = torch.load(tmp_path / "a" / BEST, weights_only=False)
    assert set(last["ema"]) == set(last["model"])
    # the average lags behind the live weights; best.pt holds the average
    assert not torch.equal(last["ema"]["conv.weight"], last["model"]["conv.weight"])
    if best["epoch"] == 3:
        assert torch.equal(best["model"]["conv.weight"], last["ema"]["conv.weight"])
    plain = config_for(data_root, tmp_path / "a", epochs=4)
    with pytest.raises(TrainingError, match="changed settings: aug_speed, ema"):
        train(plain, resume=True, model_factory=tiny_factory)


def test_cosine_schedule_anneals_to_zero_and_resumes_bit_for_bit(data_root, tmp_path):
    straight = step_losses(data_root, tmp_path / "a", 3, lr_schedule="cosine")
    log = [json.loads(x) for x in (tmp_path / "a" / LOG).read_text().splitlines()]
    # 3 steps per epoch, 9 in all: the factor after steps 3, 6, 9 of half a cosine
    assert [r["lr"] for r in log] == pytest.approx([3e-3 * 0.75, 3e-3 * 0.25, 0.0], abs=1e-12)
    cfg = config_for(data_root, tmp_path / "b", epochs=3, lr_schedule="cosine")
    train(cfg.replace(time_limit=1e-9), model_factory=tiny_factory, export=False)  # stops after 1
    assert step_losses(data_root, tmp_path / "b", 3, True, lr_schedule="cosine") == straight[3:]
    # a longer run would be another schedule: refused rather than bent mid-way
    with pytest.raises(TrainingError, match="changed settings: epochs"):
        train(cfg.replace(epochs=5), resume=True, model_factory=tiny_factory)


def test_ema_of_a_batchnorm_model_keeps_the_live_statistics(data_root, tmp_path):
    cfg = config_for(
        data_root,
        tmp_path / "run",
        model="umx",
        epochs=1,
        ema=0.9,
        valid="none",
        model_config=FAMILY_CONFIGS["umx"][0],
    )
    train(cfg, export=False)
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    live, avg = state["model"], state["ema"]
    assert state["ema_updates"] == 3
    stats = [k for k in live if "running_" in k]
    assert stats and all(torch.equal(avg[k], live[k]) for k in stats)
    assert not torch.equal(avg["targets.0.fc1.weight"], live["targets.0.fc1.weight"])


def test_resume_refuses_changed_settings_and_overwrites_nothing(data_root, tmp_path):
    cfg = config_for(data_root, tmp_path / "run", epochs=1)
    train(cfg, model_factory=tiny_factory, export=False)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(cfg, model_factory=tiny_factory)
    with pytest.raises(TrainingError, match="changed settings: segment"):
        train(cfg.replace(epochs=2, segment=0.3), resume=True, model_factory=tiny_factory)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(config_for(data_root, tmp_path / "other"), resume=True, model_factory=tiny_factory)


def test_early_stopping_and_training_loss_score(data_root, tmp_path):
    cfg = config_for(data_root, tmp_path / "run", epochs=20, patience=2, lr=1e-12, valid="none")
    result = train(cfg, model_factory=tiny_factory, export=False)
    assert result.epochs_run < 20
    assert result.history[-1]["valid"] is None and result.best_score is not None


def test_time_limit_bounds_the_run_across_resumes(data_root, tmp_path):
    # a budget shorter than one epoch: the first epoch finishes, then the run stops
    cfg = config_for(data_root, tmp_path / "run", epochs=20, time_limit=1e-9, valid_every=5)
    first = train(cfg, model_factory=tiny_factory, export=False)
    assert first.epochs_run == 1
    assert first.history[0]["valid"] is not None  # the last epoch is scored
    assert first.history[0]["elapsed"] == pytest.approx(first.history[0]["seconds"])
    # resuming with the same budget trains nothing more; lifting it continues
    again = train(cfg, resume=True, model_factory=tiny_factory, export=False)
    assert again.epochs_run == 1
    lifted = train(
        config_for(data_root, tmp_path / "run", epochs=3, time_limit=0.0, valid_every=5),
        resume=True,
        model_factory=tiny_factory,
        export=False,
    )
    assert lifted.epochs_run == 3
    elapsed = [r["elapsed"] for r in lifted.history]
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(
        sum(r["seconds"] for r in lifted.history), abs=1e-3
    )


def test_full_disk_at_checkpoint_keeps_previous(data_root, tmp_path, monkeypatch):
    cfg = config_for(data_root, tmp_path / "run", epochs=1)
    train(cfg, model_factory=tiny_factory, export=False)
    ckpt = tmp_path / "run" / CHECKPOINT
    before = ckpt.read_bytes()
    import errno

    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and "optimizer" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(
        TrainingError, match="no space left on device.*previous checkpoint is intact"
    ):
        train(cfg.replace(epochs=2), resume=True, model_factory=tiny_factory, export=False)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]


def test_max_params(data_root, tmp_path):
    with pytest.raises(TrainingError, match="over --max-params 10"):
        train(config_for(data_root, tmp_path / "run", max_params=10), model_factory=tiny_factory)


FAMILY_CONFIGS = {
    "umx": (
        {"hidden_size": 8, "num_layers": 1, "n_fft": 256, "hop_length": 64, "bandwidth": 0},
        "magnitude",
    ),
    "tfc-tdf": (
        {
            "n_fft": 256,
            "hop_length": 64,
            "dim_f": 64,
            "num_levels": 1,
            "channels": 4,
            "growth": 4,
            "tfc_layers": 1,
            "segment_frames": 16,
        },
        "complex",
    ),
    "waveform": ({"channels": 4, "depth": 2, "bottleneck": "none", "segment": 0.25}, "waveform"),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_families_train_and_export(data_root, tmp_path, family):
    model_config, output = FAMILY_CONFIGS[family]
    cfg = config_for(
        data_root,
        tmp_path / "run",
        model=family,
        epochs=1,
        steps_per_epoch=2,
        model_config=model_config,
    )
    result = train(cfg)
    archive = load_archive(result.archive, probe=True)
    meta = archive.metadata
    assert meta.family == family and meta.output == output and meta.sources == ("vocals",)
    assert not any(p.requires_grad for p in archive.module.parameters())  # a frozen copy
    assert all(meta.config[k] == v for k, v in model_config.items())
    assert math.isfinite(result.history[-1]["train_loss"])
    if family == "umx":  # one-source Wiener would return the mixture: mixture phase instead
        assert meta.phase == "mixture"


@pytest.mark.parametrize("loss", ["sdr", "mse-complex"])
def test_umx_trains_on_the_losses_of_what_separate_writes(data_root, tmp_path, loss):
    """``sdr`` and ``mse-complex`` train an Open-Unmix model through the mixture
    phase (and score mixture - vocals too): the loss goes down and is logged."""
    seen: list[float] = []
    cfg = config_for(
        data_root,
        tmp_path / "run",
        model="umx",
        epochs=4,
        lr=1e-2,
        loss=loss,
        valid="none",
        model_config=FAMILY_CONFIGS["umx"][0],
    )
    result = train(cfg, export=False, progress=collect_losses(seen))
    assert len(seen) == 12 and all(math.isfinite(x) for x in seen)
    first, last = sum(seen[:3]) / 3, sum(seen[-3:]) / 3
    if loss == "sdr":  # dB: at least 1 dB better
        assert last < first - 1.0, seen
    else:
        assert last < 0.8 * first, seen
    assert {r["loss"] for r in result.history} == {loss}


def test_umx_input_statistics():
    import numpy as np

    from sepcli.dsp.stft import stft
    from sepcli.training.cache import CachedTrack
    from sepcli.training.run import init_umx_statistics

    cfg = TrainConfig(
        model="umx",
        sample_rate=SR,
        audio_channels=1,
        model_config={"hidden_size": 8, "num_layers": 1, "n_fft": 256, "hop_length": 64},
    )
    model, _ = build_run_model(cfg)
    rng = np.random.default_rng(0)
    tracks = [
        CachedTrack(
            f"t{i}",
            {
                "vocals": rng.standard_normal((1, 4000)).astype(np.float32) * (i + 1),
                "rest": np.zeros((1, 4000), np.float32),
            },
            SR,
            Path("t"),
        )
        for i in range(2)
    ]
    assert init_umx_statistics(model, tracks)
    mags = torch.cat(
        [stft(torch.from_numpy(t.sources["vocals"]), 256, 64).abs() for t in tracks], -1
    )[0]
    target = model.targets[0]
    z = (mags.T[:, : target.input_mean.shape[0]] + target.input_mean) * target.input_scale
    assert z.mean(0).abs().max() < 1e-3 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert not init_umx_statistics(TinyNet(), tracks)


def test_data_licence():
    assert data_licence("/x/musdb18", "musdb") == MUSDB_LICENCE
    assert "research" in data_licence("/x/mir1k", "folder")
    assert data_licence("/x/y", "folder", "CC0") == "CC0"


def test_cli_train_and_errors(data_root, tmp_path, monkeypatch):
    from sepcli.cli import main

    runner = CliRunner()
    args = [
        "train",
        "--data",
        str(data_root),
        "--model",
        "umx",
        "--targets",
        "vocals",
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--segment",
        "0.2",
        "--valid",
        "cat_1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        "sample_rate=8000",
        "--set",
        "audio_channels=1",
        "--set",
        "samples_per_track=1",
        "--set",
        "model_config.hidden_size=8",
        "--set",
        "model_config.n_fft=256",
        "--set",
        "model_config.hop_length=64",
        "--set",
        "model_config.num_layers=1",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("umx-vocals.sepcli")
    assert "epoch 1: loss" in result.stderr
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert "hidden_size" in saved and "samples_per_track = 1" in saved
    # resume with only --out and a longer run: the saved config is the base
    again = runner.invoke(
        main, ["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "-q"]
    )
    assert again.exit_code == 0, again.output
    log = (tmp_path / "run" / LOG).read_text().splitlines()
    assert len(log) == 2
    bad = runner.invoke(
        main, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]
    )
    assert (
        bad.exit_code == 6
        and "dataset folder not found" in bad.stderr
        and "Traceback" not in bad.output
    )
    bad_set = runner.invoke(
        main,
        ["train", "--data", str(data_root), "--out", str(tmp_path / "r3"), "--set", "epochs=many"],
    )
    assert bad_set.exit_code == 7 and "bad value for 'epochs'" in bad_set.stderr
