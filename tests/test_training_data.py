"""The training data path: dataset folders -> cache -> chunks, and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tone, write_wav

from sepcli.datasets.tracks import MUSDB_STREAMS, Track
from sepcli.errors import DatasetError, TrainingError
from sepcli.training.cache import REST, cache_tracks, source_recipe
from sepcli.training.config import TrainConfig
from sepcli.training.run import open_splits, prepare_data

torch.set_num_threads(2)
SR = 8000


def make_folder(
    root: Path,
    names=("ann_1", "ann_2", "bob_1", "bob_2"),
    stems=("vocals", "accompaniment"),
    seconds=0.5,
    channels=1,
) -> Path:
    for i, name in enumerate(names):
        for j, stem in enumerate(stems):
            write_wav(
                root / name / f"{stem}.wav",
                make_tone(seconds, SR, channels, seed=10 * i + j) * 0.5,
                SR,
            )
    return root


def test_source_recipes():
    musdb = Track("m", "train", "musdb", Path("m.stem.mp4"), streams=dict(MUSDB_STREAMS))
    assert source_recipe(musdb, ["vocals"]) == {
        "vocals": ["vocals"],
        REST: ["drums", "bass", "other"],
    }
    assert source_recipe(musdb, ["vocals", "accompaniment"]) == {
        "vocals": ["vocals"],
        "accompaniment": ["accompaniment"],
    }
    assert source_recipe(musdb, ["drums", "bass", "other", "vocals"]) == {
        s: [s] for s in ("drums", "bass", "other", "vocals")
    }
    assert source_recipe(musdb, ["guitar"]) is None
    # mix_stems: the non-target stems stay apart so that mixing draws each on its own
    assert source_recipe(musdb, ["vocals"], split_rest=True) == {
        s: [s] for s in ("vocals", "drums", "bass", "other")
    }
    mir = Track(
        "a_1",
        None,
        "folder",
        Path("a_1"),
        files={"vocals": Path("v.ogg"), "accompaniment": Path("a.ogg")},
    )
    assert source_recipe(mir, ["vocals"]) == {"vocals": ["vocals"], REST: ["accompaniment"]}
    assert source_recipe(mir, ["vocals"], split_rest=True) == source_recipe(mir, ["vocals"])
    plain = Track(
        "p", None, "folder", Path("p"), files={"guitar": Path("g.wav"), "mixture": Path("m.wav")}
    )
    assert source_recipe(plain, ["guitar"]) == {"guitar": ["guitar"], REST: ["mixture", "-"]}


def test_cache_decodes_once_and_memory_maps(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    cfg = TrainConfig(
        data=str(root),
        out=str(tmp_path / "run"),
        sample_rate=SR,
        audio_channels=2,
        valid="none",
        segment=0.25,
    )
    _, train_tracks, _ = open_splits(cfg)
    cached, sources = cache_tracks(train_tracks, ["vocals"], SR, 2, tmp_path / "cache")
    assert sources == ("vocals", REST) and len(cached) == 4
    first = cached[0]
    assert isinstance(first.sources["vocals"], np.memmap) and first.sources["vocals"].shape == (
        2,
        SR // 2,
    )
    ref = train_tracks[0].load(["vocals", "accompaniment"])
    assert np.allclose(first.sources["vocals"][0], ref["vocals"][0], atol=1e-6)
    assert np.allclose(first.sources[REST][1], ref["accompaniment"][0], atol=1e-6)  # mono widened
    monkeypatch.setattr(Track, "load", lambda *a, **k: pytest.fail("decoded twice"))
    again, _ = cache_tracks(train_tracks, ["vocals"], SR, 2, tmp_path / "cache")
    assert [c.name for c in again] == [c.name for c in cached]


def test_train_prunes_entries_of_changed_files_only(tmp_path, caplog):
    root = make_folder(tmp_path / "data", names=("a_1", "b_1", "c_1"))
    cache = tmp_path / "cache"
    cfg = TrainConfig(
        data=str(root), out=str(tmp_path / "run"), sample_rate=SR, valid="none", segment=0.25,
        cache_dir=str(cache),
    )  # fmt: skip
    prepare_data(cfg)
    entries = {p.name.split("-")[0]: p for p in cache.iterdir()}
    assert sorted(entries) == ["a_1", "b_1", "c_1"]
    legacy = cache / "old_1-0123456789abcdef01234567"  # written before entries kept a record
    legacy.mkdir()
    (legacy / "meta.json").write_text('{"name": "old_1", "sources": []}')
    (cache / "half_1-0123456789abcdef01234567").mkdir()  # incomplete: no meta.json
    # a_1 is re-recorded; c_1's file is gone (a drive that is not mounted?)
    write_wav(root / "a_1" / "vocals.wav", make_tone(0.5, SR, 1, seed=99) * 0.4, SR)
    gone = root / "c_1" / "vocals.wav"
    gone.rename(tmp_path / "elsewhere.wav")
    (root / "c_1" / "accompaniment.wav").unlink()
    (root / "c_1").rmdir()
    with caplog.at_level(logging.INFO, logger="sepcli.training.run"):
        prepare_data(cfg)
    assert "removed 1 stale cache entry" in caplog.text
    left = sorted(p.name for p in cache.iterdir())
    assert entries["a_1"].name not in left and entries["b_1"].name in left
    assert (
        entries["c_1"].name in left
        and legacy.name in left
        and "half_1-0123456789abcdef01234567" in left
    )
    assert len([n for n in left if n.startswith("a_1-")]) == 1  # the fresh entry


def test_resampled_to_model_rate(tmp_path):
    root = make_folder(tmp_path / "data", names=("a_1", "b_1"))
    cfg = TrainConfig(
        data=str(root), out=str(tmp_path / "run"), sample_rate=16000, audio_channels=1, valid="none"
    )
    _, tracks, _ = open_splits(cfg)
    cached, _ = cache_tracks(tracks, ["vocals"], 16000, 1, tmp_path / "cache")
    assert cached[0].length == 8000 and cached[0].sample_rate == 16000


def test_split_by_singer_prefix(tmp_path):
    root = make_folder(tmp_path / "data")
    cfg = TrainConfig(
        data=str(root), out=str(tmp_path / "run"), valid="0.5", valid_group_sep="_", seed=1
    )
    layout, train, valid = open_splits(cfg)
    assert layout == "folder"
    train_singers = {t.name.split("_")[0] for t in train}
    valid_singers = {t.name.split("_")[0] for t in valid}
    assert train_singers and valid_singers and not train_singers & valid_singers
    named = open_splits(cfg.replace(valid="bob_1,bob_2", valid_group_sep=""))
    assert [t.name for t in named[2]] == ["bob_1", "bob_2"]
    listing = tmp_path / "valid.txt"
    listing.write_text("# singer\nann\n")
    from_file = open_splits(cfg.replace(valid=f"@{listing}"))
    assert [t.name for t in from_file[2]] == ["ann_1", "ann_2"]


def test_prepare_data_builds_dataset(tmp_path):
    root = make_folder(tmp_path / "data")
    cfg = TrainConfig(
        data=str(root),
        out=str(tmp_path / "run"),
        sample_rate=SR,
        audio_channels=1,
        valid="bob_1",
        segment=0.1,
        samples_per_track=2,
    )
    layout, ds, valid, train_names, valid_names = prepare_data(cfg)
    assert valid_names == ["bob_1"] and "bob_1" not in train_names and len(ds) == 6
    assert valid[0].mixture is not None and valid[0].mixture.shape == (1, SR // 2)
    mix, y = ds[(1, 0)]
    assert mix.shape == (1, 800) and y.shape == (1, 1, 800)
    assert (tmp_path / "cache").is_dir()  # RUN_DIR/../cache by default


@pytest.mark.parametrize("setup", ["empty", "loose-files", "missing"])
def test_bad_data_folders(tmp_path, setup):
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "loose-files":
        write_wav(root / "song.wav", make_tone(0.2, SR, 1), SR)
    cfg = TrainConfig(data=str(root), out=str(tmp_path / "run"))
    with pytest.raises(DatasetError) as info:
        prepare_data(cfg)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_target_no_track_has(tmp_path):
    root = make_folder(tmp_path / "data")
    cfg = TrainConfig(data=str(root), out=str(tmp_path / "run"), targets=("guitar",), valid="none")
    with pytest.raises(DatasetError, match="has target 'guitar'"):
        prepare_data(cfg)


def test_bad_tracks_are_skipped_with_a_named_warning(tmp_path, caplog):
    root = make_folder(tmp_path / "data", names=("a_1", "b_1", "c_1", "d_1"))
    (root / "b_1" / "vocals.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)  # corrupt, in the middle
    write_wav(root / "c_1" / "vocals.wav", make_tone(0.3, SR, 1), SR)  # stems of different lengths
    write_wav(root / "d_1" / "vocals.wav", make_tone(0.5, 16000, 1), 16000)  # different rates
    cfg = TrainConfig(
        data=str(root),
        out=str(tmp_path / "run"),
        sample_rate=SR,
        audio_channels=1,
        valid="none",
        segment=0.1,
        samples_per_track=2,
    )
    with caplog.at_level(logging.WARNING, logger="sepcli"):
        _, ds, _, names, _ = prepare_data(cfg)
    assert names == ["a_1"]
    text = caplog.text
    assert "b_1" in text and "vocals.wav" in text
    assert "c_1" in text and "different lengths" in text
    assert "d_1" in text and "different sample rates" in text
    # all tracks unusable -> one clear error
    (root / "a_1" / "vocals.wav").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="none of the 4 tracks could be used"):
        prepare_data(cfg.replace(cache_dir=str(tmp_path / "cache2")))


def test_chunk_sampler_needs_enough_chunks(tmp_path):
    from sepcli.training.loop import Trainer

    root = make_folder(tmp_path / "data", names=("a_1",))
    cfg = TrainConfig(
        data=str(root),
        out=str(tmp_path / "run"),
        sample_rate=SR,
        audio_channels=1,
        valid="none",
        segment=0.1,
        samples_per_track=2,
        batch_size=4,
    )
    _, ds, _, _, _ = prepare_data(cfg)
    from sepcli.models.archive import ArchiveMetadata

    meta = ArchiveMetadata("t", ("vocals",), SR, 1, "waveform", "test")
    with pytest.raises(TrainingError, match="fewer than --batch-size 4"):
        Trainer(torch.nn.Conv1d(1, 1, 1), meta, ds, [], cfg, tmp_path / "run")
