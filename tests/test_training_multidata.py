"""Training on several datasets at once (``--data A --data B``): per-root splits,
resampling in the cache, weighted balanced sampling, source mixing within a
dataset, exact resume, validation roots, config and command line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import collect_losses, make_tone, write_wav
from test_training_loop import TinyNet

from sepcli.audio import resample
from sepcli.errors import DatasetError, TrainingError
from sepcli.models.archive import ArchiveMetadata, read_metadata
from sepcli.training import TrainConfig, train
from sepcli.training.cache import REST, CachedTrack
from sepcli.training.config import apply_overrides, load_config, load_toml, parse_set, save_config
from sepcli.training.export import MIR1K_LICENCE, MUSDB_LICENCE
from sepcli.training.loop import LOG
from sepcli.training.run import open_roots, prepare_data
from sepcli.training.sampling import (
    Augmentation,
    ChunkDataset,
    WeightedChunkSampler,
    dataset_shares,
)

torch.set_num_threads(2)
SR = 8000  # model rate of these tests; the plain folder is stored at 4 kHz mono
LOW_SR = 4000
MUSDB_TRACKS = ("A - One", "B - Two", "C - Three", "ANiMAL - Rockshow")  # the last: musdb valid
CLIPS = ("ann_1", "ann_2", "bob_1", "bob_2", "cat_1", "cat_2")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    """A MUSDB18-HQ-like root (8 kHz stereo, 4 stems + mixture) and a MIR-1K-like
    plain folder (4 kHz mono, vocals + accompaniment)."""
    base = tmp_path_factory.mktemp("multi")
    hq = base / "musdbhq"
    for i, name in enumerate(MUSDB_TRACKS):
        stems = {
            s: make_tone(0.6, SR, 2, seed=10 * i + j) * 0.3
            for j, s in enumerate(("drums", "bass", "other", "vocals"))
        }
        for stem, audio in stems.items():
            write_wav(hq / "train" / name / f"{stem}.wav", audio, SR)
        write_wav(hq / "train" / name / "mixture.wav", sum(stems.values()), SR)
    mir = base / "mir1k"
    for i, name in enumerate(CLIPS):
        write_wav(mir / name / "vocals.wav", make_tone(0.5, LOW_SR, 1, seed=100 + i) * 0.5, LOW_SR)
        write_wav(
            mir / name / "accompaniment.wav", make_tone(0.5, LOW_SR, 1, seed=200 + i) * 0.5, LOW_SR
        )
    return hq, mir


def config_for(roots: tuple[Path, Path], out: Path, **kw) -> TrainConfig:
    base = dict(
        data=tuple(str(r) for r in roots),
        out=str(out),
        sample_rate=SR,
        audio_channels=2,
        segment=0.2,
        samples_per_track=2,
        steps_per_epoch=3,
        batch_size=4,
        epochs=2,
        lr=3e-3,
        valid="0.3",
        valid_group_sep="_",
        cache_dir=str(out.parent / "cache"),
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def tiny_factory(config: TrainConfig):
    meta = ArchiveMetadata(
        name="tiny",
        sources=config.targets,
        sample_rate=config.sample_rate,
        audio_channels=config.audio_channels,
        output="waveform",
        family="test",
        segment_seconds=0.25,
    )
    return TinyNet(len(config.targets), config.audio_channels), meta


# -- splits and cache ---------------------------------------------------------------
def test_each_root_has_its_own_layout_and_split(roots, tmp_path):
    hq, mir = open_roots(config_for(roots, tmp_path / "run"))
    assert (hq.layout, mir.layout) == ("musdb-hq", "folder")
    # MUSDB keeps musdb's validation track; --valid/--valid-group apply to the plain folder
    assert [t.name for t in hq.valid] == ["ANiMAL - Rockshow"] and len(hq.train) == 3
    train_singers = {t.name.split("_")[0] for t in mir.train}
    valid_singers = {t.name.split("_")[0] for t in mir.valid}
    assert len(valid_singers) == 1 and train_singers and not train_singers & valid_singers
    assert len(mir.train) + len(mir.valid) == len(CLIPS)
    # validating only on root 0: the other root is not split, all its tracks train
    hq0, mir0 = open_roots(config_for(roots, tmp_path / "run", valid_roots=(0,)))
    assert len(hq0.valid) == 1 and mir0.valid == [] and len(mir0.train) == len(CLIPS)
    assert (hq0.validated, mir0.validated) == (True, False)


def test_cache_resamples_and_widens_each_root(roots, tmp_path):
    cfg = config_for(roots, tmp_path / "run", valid_roots=(0,))
    layout, ds, valid, train_names, valid_names = prepare_data(cfg)
    assert layout == "musdb-hq+folder" and ds.dataset_sizes == (3, 6)
    assert ds.dataset_names == ("musdbhq", "mir1k") and ds.sources == ("vocals", REST)
    assert valid_names == ["ANiMAL - Rockshow"] and train_names[3:] == list(CLIPS)
    clip = ds.tracks[3]  # ann_1: 4 kHz mono on disk -> 8 kHz stereo in the cache
    assert clip.sample_rate == SR and clip.sources["vocals"].shape == (2, SR // 2)
    raw = make_tone(0.5, LOW_SR, 1, seed=100) * 0.5
    want = resample(raw, LOW_SR, SR)[0]
    got = np.asarray(clip.sources["vocals"])
    assert np.allclose(got[0], got[1]) and np.allclose(got[0], want, atol=2e-3)
    song = ds.tracks[0]  # MUSDB: rest = drums + bass + other
    parts = [make_tone(0.6, SR, 2, seed=j) * 0.3 for j in range(3)]
    assert np.allclose(song.sources[REST], sum(parts), atol=2e-3)
    mix, y = ds[(1, 0, 4)]
    assert mix.shape == (2, 1600) and y.shape == (1, 2, 1600)


def test_every_root_must_have_the_targets(roots, tmp_path):
    cfg = config_for(roots, tmp_path / "run", targets=("drums",))
    with pytest.raises(DatasetError, match="mir1k.*drums") as info:
        prepare_data(cfg)
    assert "\n" not in str(info.value)


# -- sampling ---------------------------------------------------------------------
def test_shares_are_exact_up_to_rounding():
    assert dataset_shares(100, [0.7, 0.3]) == [70, 30]
    assert dataset_shares(10, [1, 1, 1]) == [4, 3, 3]
    assert dataset_shares(9, [3, 6]) == [3, 6]
    assert dataset_shares(5, [0, 1]) == [0, 5]
    with pytest.raises(TrainingError):
        dataset_shares(5, [0, 0])


def test_weighted_sampler_proportions_balance_and_shards():
    sampler = WeightedChunkSampler([3, 6], [0.7, 0.3], samples_per_track=2, seed=1, num_samples=100)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert len(keys) == 100 and [d for _, d, _ in keys] == list(range(100))
    per_track = Counter(t for _, _, t in keys)
    assert sum(per_track[t] for t in range(3)) == 70  # dataset 0: exactly 70 %
    assert {per_track[t] for t in range(3)} <= {23, 24}  # balanced inside a dataset
    assert {per_track[t] for t in range(3, 9)} == {5}
    sampler.set_epoch(2)
    assert list(sampler) != keys
    # default: proportional to the tracks, i.e. every track samples_per_track times
    plain = WeightedChunkSampler([3, 6], None, samples_per_track=4, seed=1)
    assert len(plain) == 36 and set(Counter(t for _, _, t in plain).values()) == {4}
    # two ranks share one epoch without overlap
    r0 = WeightedChunkSampler([3, 6], [1, 1], 2, seed=1, num_samples=10, rank=0, world_size=2)
    r1 = WeightedChunkSampler([3, 6], [1, 1], 2, seed=1, num_samples=10, rank=1, world_size=2)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 10 and not {d for _, d, _ in a} & {d for _, d, _ in b}
    assert sum(t < 3 for _, _, t in a + b) == 10
    with pytest.raises(TrainingError, match="weights changed"):
        r0.load_state_dict({**r0.state_dict(), "weights": [0.5, 0.5]})


def _constant_track(name: str, value: float) -> CachedTrack:
    ones = np.full((2, 400), value, dtype=np.float32)
    return CachedTrack(name, {"vocals": ones, REST: ones.copy()}, SR, Path(name))


def test_source_mixing_stays_within_a_dataset():
    tracks = [_constant_track(f"a{i}", 1.0) for i in range(3)]
    tracks += [_constant_track(f"b{i}", 3.0) for i in range(2)]
    aug = Augmentation(gain=False, channel_swap=False, mix=True)
    ds = ChunkDataset(tracks, ("vocals", REST), 1, 100, 4, aug, seed=0, dataset_sizes=[3, 2])
    sampler = WeightedChunkSampler([3, 2], [0.5, 0.5], 4, seed=0, num_samples=40)
    for key in sampler:
        mix, y = ds[key]
        assert torch.allclose(mix, 2 * y[0])  # the rest came from the same dataset
    with pytest.raises(TrainingError, match="do not split"):
        ChunkDataset(tracks, ("vocals", REST), 1, 100, 4, aug, dataset_sizes=[3, 3])


def _valued_track(name: str, **values: float) -> CachedTrack:
    return CachedTrack(
        name, {s: np.full((2, 400), v, dtype=np.float32) for s, v in values.items()}, SR, Path(name)
    )


def test_stems_apart_and_lent_by_another_dataset():
    # dataset 0 (MUSDB-like): vocals 1, drums 10, bass 100 (a different value per track);
    # dataset 1 (MIR-1K-like): vocals 1000, rest (its accompaniment) 10000
    songs = [_valued_track(f"s{i}", vocals=1, drums=10 * (i + 1), bass=100) for i in range(3)]
    clips = [_valued_track(f"c{i}", vocals=1000, rest=10000) for i in range(2)]
    sources = ("vocals", "drums", "bass", REST)
    aug = Augmentation(gain=False, channel_swap=False, mix=True)
    own = ChunkDataset(songs + clips, sources, 1, 100, 4, aug, seed=0, dataset_sizes=[3, 2])
    lent = ChunkDataset(
        songs + clips, sources, 1, 100, 4, aug, seed=0, dataset_sizes=[3, 2], mix_from=0
    )
    drums = set()
    for draw in range(30):
        for track in range(5):
            mix, y = own[(1, draw, track)]
            mix_lent, y_lent = lent[(1, draw, track)]
            assert torch.equal(y, y_lent)  # the target is always the draw's own
            extra = float(mix[0, 0] - y[0, 0, 0])
            extra_lent = float(mix_lent[0, 0] - y_lent[0, 0, 0])
            if track < 3:  # a song: drums and bass each from some song, no rest
                assert extra - 100 in (10, 20, 30) and extra_lent == extra
                drums.add(extra - 100)
            else:  # a clip: its own dataset lends only a rest; dataset 0 lends drums + bass
                assert extra == 10000 and extra_lent - 100 in (10, 20, 30)
    assert drums == {10, 20, 30}  # drums come from every song, not only the drawn one
    with pytest.raises(TrainingError, match="mix_from 2"):
        ChunkDataset(songs + clips, sources, 1, 100, 4, aug, dataset_sizes=[3, 2], mix_from=2)
    with pytest.raises(TrainingError, match="lacks"):  # a target may not be missing
        ChunkDataset(songs + clips, (REST, "vocals"), 1, 100, 4, aug, dataset_sizes=[3, 2])


def test_mix_stems_caches_musdb_stems_apart(roots, tmp_path):
    cfg = config_for(roots, tmp_path / "run", valid_roots=(0,), mix_stems=True, mix_from=0)
    _, ds, valid, _, _ = prepare_data(cfg)
    assert ds.sources == ("vocals", "drums", "bass", "other", REST) and ds.mix_from == 0
    song = ds.tracks[0]
    for j, stem in enumerate(("drums", "bass", "other")):
        want = make_tone(0.6, SR, 2, seed=j) * 0.3
        assert np.allclose(song.sources[stem], want, atol=2e-3)
    assert "drums" not in ds.tracks[3].sources  # a MIR-1K-like clip has only its rest
    assert REST in valid[0].sources  # validation keeps the usual cache entries
    mix, y = ds[(1, 0, 4)]
    assert mix.shape == (2, 1600) and y.shape == (1, 2, 1600)
    with pytest.raises(TrainingError, match="mix_from 2 out of range"):
        config_for(roots, tmp_path / "run", mix_from=2)


# -- training ---------------------------------------------------------------------
def test_resume_is_exact_with_two_roots(roots, tmp_path):
    def run(out: Path, epochs: int, resume: bool = False) -> list[float]:
        seen: list[float] = []
        cfg = config_for(
            roots, out, epochs=epochs, steps_per_epoch=2, data_weights=(0.25, 0.75), valid_every=0
        )
        train(
            cfg,
            resume=resume,
            model_factory=tiny_factory,
            export=False,
            progress=collect_losses(seen),
        )
        return seen

    straight = run(tmp_path / "a", 3)
    first = run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    assert len(straight) == 6 and first == straight[:4] and resumed == straight[4:]
    log = [json.loads(x) for x in (tmp_path / "b" / LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    with pytest.raises(TrainingError, match="changed settings: data_weights"):
        cfg = config_for(
            roots, tmp_path / "b", epochs=4, steps_per_epoch=2, data_weights=(0.5, 0.5)
        )
        train(cfg, resume=True, model_factory=tiny_factory, export=False)


def test_validation_uses_the_chosen_roots(roots, tmp_path):
    def validated(out: Path, **kw) -> tuple[list[int], Path]:
        counts: list[int] = []
        # a tiny family model: the export is a data archive (families only)
        tiny_unet = {"channels": 4, "depth": 1, "bottleneck": "none", "segment": 0.25}
        cfg = config_for(
            roots, out, epochs=1, steps_per_epoch=1, model="waveform", model_config=tiny_unet, **kw
        )
        result = train(
            cfg,
            progress=lambda p: counts.append(p.total) if p.task == "validate" else None,
        )
        return counts, result.archive

    counts, archive = validated(tmp_path / "all")
    assert counts == [3]  # 1 MUSDB track + the 2 clips of the held-out singer
    counts, archive = validated(tmp_path / "first", valid_roots=(0,))
    assert counts == [1]
    meta = read_metadata(archive)
    training = meta.extra["training"]
    assert training["valid_tracks"] == ["ANiMAL - Rockshow"]
    assert [d["train_tracks"] for d in training["datasets"]] == [3, 6]
    assert [d["validated"] for d in training["datasets"]] == [True, False]
    assert list(meta.scores) == ["musdbhq-valid"]
    assert MUSDB_LICENCE in meta.licence and MIR1K_LICENCE in meta.licence
    assert "musdbhq (musdb-hq, 3 training tracks" in meta.training_data


# -- config and command line ------------------------------------------------------
def test_config_lists_and_errors(tmp_path):
    assert TrainConfig(data="one").data == ("one",)
    cfg = apply_overrides(
        TrainConfig(data=("a", "b")), parse_set(["data_weights=[0.7,0.3]", "valid_roots=0"])
    )
    assert cfg.data_weights == (0.7, 0.3) and cfg.valid_roots == (0,)
    path = save_config(cfg, tmp_path / "config.toml")
    assert 'data = ["a", "b"]' in path.read_text() and load_config(path) == cfg
    single = tmp_path / "single.toml"
    single.write_text('data = "musdb, 2"\n')  # one path, commas and all
    assert apply_overrides(TrainConfig(), load_toml(single)).data == ("musdb, 2",)
    for item, message in [
        ("data_weights=0.5", "1 value"),
        ("data_weights=[1,-1]", ">= 0"),
        ("data_weights=[0,0]", "not all be 0"),
        ("data_weights=[1,x]", "bad value for 'data_weights'"),
        ("valid_roots=2", "out of range"),
    ]:
        with pytest.raises(TrainingError, match=message) as info:
            apply_overrides(TrainConfig(data=("a", "b")), parse_set([item]))
        assert "\n" not in str(info.value)


def test_cli_collects_every_data_option(roots, tmp_path):
    from sepcli.cli import main

    hq, mir = roots
    args = ["train", "--data", str(hq), "--data", str(mir), "--out", str(tmp_path / "x")]
    bad = CliRunner().invoke(main, [*args, "--valid-roots", "0,2"])
    assert bad.exit_code != 0 and "there are 2 data root(s)" in bad.output
    bad = CliRunner().invoke(main, [*args[:3], *args[5:], "--data-weights", "1,2"])
    assert bad.exit_code != 0 and "data_weights has 2 value(s) for 1 data root(s)" in bad.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_repeated_data(roots, tmp_path):
    from sepcli.cli import main

    hq, mir = roots
    args = ["train", "--data", str(hq), "--data", str(mir), "--out", str(tmp_path / "run")]
    args += ["--epochs", "1", "--batch-size", "2", "--segment", "0.2"]
    args += ["--data-weights", "0.6,0.4", "--valid-roots", "0", "--cache-dir", str(tmp_path / "c")]
    for item in (
        "sample_rate=8000",
        "samples_per_track=1",
        "model_config.hidden_size=8",
        "model_config.n_fft=256",
        "model_config.hop_length=64",
        "model_config.num_layers=1",
    ):
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = load_config(tmp_path / "run" / "config.toml")
    assert saved.data == (str(hq), str(mir))
    assert saved.data_weights == (0.6, 0.4) and saved.valid_roots == (0,)
    again = CliRunner().invoke(
        main, ["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "-q"]
    )
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "run" / LOG).read_text().splitlines()) == 2


# -- real data ----------------------------------------------------------------------
MUSDB_REAL = ("ANiMAL - Clinic A", "Actions - Devil's Words", "ANiMAL - Rockshow")
MIR_REAL = ("Ani_1_01", "Ani_1_02", "abjones_1_01", "abjones_1_02")


@pytest.mark.data
@pytest.mark.slow
def test_real_musdb_and_mir1k_together(shared_data, tmp_path):
    """Tiny Open-Unmix on 2 MUSDB18 previews + 4 MIR-1K clips (symlinks), validated
    on musdb's "ANiMAL - Rockshow" only: MIR-1K's 16 kHz mono clips are cached
    at 44.1 kHz stereo, both datasets are drawn, the archive names both."""
    musdb = tmp_path / "musdb" / "train"
    musdb.mkdir(parents=True)
    for name in MUSDB_REAL:
        src = shared_data / "musdb18-preview" / "train" / f"{name}.stem.mp4"
        (musdb / src.name).symlink_to(src)
    mir = tmp_path / "mir1k"
    mir.mkdir()
    for name in MIR_REAL:
        (mir / name).symlink_to(shared_data / "mir1k" / name)
    cfg = TrainConfig(
        data=(str(musdb.parent), str(mir)),
        out=str(tmp_path / "run"),
        model="umx",
        targets=("vocals",),
        cache_dir=str(tmp_path / "cache"),
        epochs=1,
        batch_size=2,
        segment=1.0,
        samples_per_track=1,
        steps_per_epoch=2,
        seed=3,
        valid_roots=(0,),
        data_weights=(0.5, 0.5),
        valid_segment=2.0,
        model_config={"hidden_size": 16, "num_layers": 1, "n_fft": 1024, "hop_length": 256},
    )
    layout, ds, valid, train_names, valid_names = prepare_data(cfg)
    assert layout == "musdb+folder" and ds.dataset_sizes == (2, 4)
    assert valid_names == ["ANiMAL - Rockshow"]
    clip = ds.tracks[2]
    seconds = len(__import__("soundfile").read(mir / MIR_REAL[0] / "vocals.ogg")[0]) / 16000
    assert clip.sample_rate == 44100 and clip.sources["vocals"].shape[0] == 2
    assert abs(clip.length - seconds * 44100) <= 1
    steps: list[float] = []
    result = train(cfg, progress=collect_losses(steps))
    assert len(steps) == 2 and all(np.isfinite(steps))
    meta = read_metadata(result.archive)
    assert MUSDB_LICENCE in meta.licence and MIR1K_LICENCE in meta.licence
    assert [d["train_tracks"] for d in meta.extra["training"]["datasets"]] == [2, 4]
    assert list(meta.scores) == ["musdb-valid"]
