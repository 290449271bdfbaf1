"""Dataset readers: layout detection, subsets, stem loading and bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tone, write_wav

from sepcli.datasets import (
    MUSDB_VALIDATION_TRACKS,
    detect_layout,
    open_dataset,
    prefix_group,
    split_tracks,
)
from sepcli.errors import DatasetError

RATE = 8000
STEMS4 = ("drums", "bass", "other", "vocals")


def _stems(seconds: float = 0.5, channels: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return {
        s: make_tone(seconds, RATE, channels, seed=seed + i) * (i + 1) / 4
        for i, s in enumerate(STEMS4)
    }


def _write_folder(
    folder: Path, stems: dict[str, np.ndarray], rate: int = RATE, suffix: str = ".wav"
) -> None:
    for name, data in stems.items():
        write_wav(folder / f"{name}{suffix}", data, rate, "FLOAT" if suffix == ".wav" else "PCM_24")


@pytest.fixture
def hq_root(tmp_path: Path) -> Path:
    """MUSDB18-HQ layout: 2 train tracks (one a MUSDB validation track), 1 test track."""
    root = tmp_path / "hq"
    for subset, name, seed in [
        ("train", "A - One", 0),
        ("train", MUSDB_VALIDATION_TRACKS[0], 1),
        ("test", "C - Three", 2),
    ]:
        stems = _stems(seed=seed)
        stems["mixture"] = sum(stems.values())
        _write_folder(root / subset / name, stems)
    return root


def test_plain_folder_sums_stems_and_resamples(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    voc, acc = make_tone(0.5, RATE, 1, seed=1), make_tone(0.5, RATE, 1, seed=2)
    _write_folder(root / "singer_1_01", {"vocals": voc, "accompaniment": acc})
    _write_folder(root / "singer_1_02", {"vocals": voc, "accompaniment": acc})
    (root / "notes").mkdir()  # a folder without audio is not a track
    assert detect_layout(root) == "folder"
    tracks = open_dataset(root)
    assert [t.name for t in tracks] == ["singer_1_01", "singer_1_02"]
    track = tracks[0]
    assert track.layout == "folder" and track.subset is None
    assert track.stems == ("mixture", "vocals", "accompaniment")
    out = track.load()
    assert out["vocals"].shape == (1, RATE // 2) and out["vocals"].dtype == np.float32
    np.testing.assert_allclose(out["mixture"], out["vocals"] + out["accompaniment"], atol=1e-6)
    np.testing.assert_allclose(out["vocals"], voc, atol=1e-6)
    up = track.load(["vocals"], sample_rate=2 * RATE)
    assert list(up) == ["vocals"] and up["vocals"].shape == (1, RATE)


def test_plain_folder_widens_mono_and_derives_accompaniment(tmp_path: Path) -> None:
    stems = _stems()
    stems["vocals"] = stems["vocals"][:1]  # a mono stem among stereo ones
    _write_folder(tmp_path / "f" / "song", stems, suffix=".flac")
    track = open_dataset(tmp_path / "f")[0]
    out = track.load(["accompaniment", "vocals", "mixture"])
    assert list(out) == ["accompaniment", "vocals", "mixture"]
    assert all(a.shape == (2, RATE // 2) for a in out.values())
    np.testing.assert_allclose(
        out["accompaniment"],
        track.load(["drums"])["drums"]
        + track.load(["bass"])["bass"]
        + track.load(["other"])["other"],
        atol=1e-6,
    )
    np.testing.assert_allclose(out["vocals"][0], out["vocals"][1])
    np.testing.assert_allclose(out["mixture"], out["accompaniment"] + out["vocals"], atol=1e-6)


def test_musdb_hq_subsets(hq_root: Path) -> None:
    assert detect_layout(hq_root) == "musdb-hq"
    everything = open_dataset(hq_root)
    assert [(t.subset, t.name) for t in everything] == [
        ("test", "C - Three"),
        ("train", "A - One"),
        ("train", MUSDB_VALIDATION_TRACKS[0]),
    ]
    assert [t.name for t in open_dataset(hq_root, "train")] == ["A - One"]
    valid = open_dataset(hq_root, "valid")
    assert [(t.subset, t.name) for t in valid] == [("valid", MUSDB_VALIDATION_TRACKS[0])]
    test = open_dataset(hq_root, "test", layout="musdb-hq")
    assert [t.name for t in test] == ["C - Three"]
    out = test[0].load()
    assert set(out) == {"mixture", *STEMS4, "accompaniment"}
    np.testing.assert_allclose(
        out["accompaniment"], out["drums"] + out["bass"] + out["other"], atol=1e-6
    )
    # the stored mixture is read, not recomputed: make it differ and check
    write_wav(test[0].files["mixture"], np.zeros((2, RATE // 2), np.float32), RATE)
    assert np.all(test[0].load(["mixture"])["mixture"] == 0)


def _ffmpeg_stem(path: Path, stems: dict[str, np.ndarray], tmp: Path) -> None:
    inputs: list[str] = []
    maps: list[str] = []
    for i, name in enumerate(["mixture", *STEMS4]):
        wav = write_wav(tmp / f"{name}.wav", stems[name], RATE)
        inputs += ["-i", str(wav)]
        maps += ["-map", f"{i}:a"]
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-v", "error", "-y", *inputs, *maps, "-c:a", "alac", "-f", "mp4", str(path)]
    subprocess.run(cmd, check=True)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_musdb_stem_mp4_stream_order(tmp_path: Path) -> None:
    stems = _stems(0.25)
    stems["mixture"] = sum(stems.values()) * 0.5  # distinct from the sum, to check it is read
    _ffmpeg_stem(tmp_path / "musdb" / "train" / "X - Song.stem.mp4", stems, tmp_path / "src")
    root = tmp_path / "musdb"
    assert detect_layout(root) == "musdb"
    (track,) = open_dataset(root, "train")
    assert track.layout == "musdb" and track.name == "X - Song"
    info = track.probe()
    assert (info.sample_rate, info.channels) == (RATE, 2)
    out = track.load()
    for name in ["mixture", *STEMS4]:
        np.testing.assert_allclose(out[name], stems[name], atol=1e-4, err_msg=name)
    np.testing.assert_allclose(
        out["accompaniment"], out["drums"] + out["bass"] + out["other"], atol=1e-6
    )
    # a flat folder of .stem.mp4 files is read too
    assert [t.name for t in open_dataset(root / "train")] == ["X - Song"]


def test_bad_input_names_the_track(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no tracks found"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="subset"):
        open_dataset(tmp_path / "empty", subset="dev")

    root = tmp_path / "bad"
    stems = _stems()
    _write_folder(root / "short", {"vocals": stems["vocals"], "drums": stems["drums"][:, :100]})
    _write_folder(root / "rates", {"vocals": stems["vocals"]})
    write_wav(root / "rates" / "drums.wav", stems["drums"], 2 * RATE)
    _write_folder(root / "voc", {"vocals": stems["vocals"]})
    rates, short, voc = open_dataset(root)
    with pytest.raises(DatasetError, match=r"'short'.*different lengths.*drums\.wav"):
        short.load()
    with pytest.raises(DatasetError, match=r"'rates'.*different sample rates"):
        rates.load()
    with pytest.raises(DatasetError, match=r"'voc' has no 'drums' stem"):
        voc.load(["drums"])
    (root / "voc" / "vocals.wav").write_bytes(b"not audio")
    with pytest.raises(DatasetError, match=r"'voc'.*vocals"):
        voc.load(["vocals"])


def test_split_tracks_by_group(tmp_path: Path) -> None:
    root = tmp_path / "mir"
    tone = make_tone(0.1, RATE, 1)
    names = [
        f"{singer}_{song}_0{n}"
        for singer in ("ann", "bob", "cyd", "dee")
        for song in (1, 2)
        for n in (1, 2)
    ]
    for name in names:
        _write_folder(root / name, {"vocals": tone, "accompaniment": tone})
    tracks = open_dataset(root)
    assert prefix_group("abjones_1_01") == "abjones"
    train, valid = split_tracks(tracks, 0.25, group="prefix", seed=3)
    assert len(valid) == 4 and len(train) == 12
    assert {prefix_group(t.name) for t in train}.isdisjoint({prefix_group(t.name) for t in valid})
    assert split_tracks(tracks, 0.25, group="prefix", seed=3)[1] == valid  # deterministic
    train, valid = split_tracks(tracks, ["bob", "cyd_1_01"], group="prefix")
    assert [t.name for t in valid] == ["bob_1_01", "bob_1_02", "bob_2_01", "bob_2_02", "cyd_1_01"]
    assert len(train) == 11
    with pytest.raises(DatasetError, match="match no track"):
        split_tracks(tracks, ["zed"])
    with pytest.raises(DatasetError, match="between 0 and 1"):
        split_tracks(tracks, 1.5)
    assert len(open_dataset(root, "valid", valid=["ann"], group="prefix")) == 4
    assert len(open_dataset(root, "train", valid=0.5, group="prefix")) == 8
    assert len(open_dataset(root, "train")) == 16
    with pytest.raises(DatasetError, match="no validation split"):
        open_dataset(root, "valid")


@pytest.mark.data
def test_shared_musdb_and_mir1k(shared_data: Path) -> None:
    musdb = shared_data / "musdb18-preview"
    assert detect_layout(musdb) == "musdb"
    valid = open_dataset(musdb, "valid")
    assert sorted(t.name for t in valid) == sorted(MUSDB_VALIDATION_TRACKS)
    train = open_dataset(musdb, "train")
    assert len(train) == 80 and not {t.name for t in train} & set(MUSDB_VALIDATION_TRACKS)
    out = valid[0].load(["mixture", "vocals", "accompaniment"])
    assert out["mixture"].shape[0] == 2 and abs(out["mixture"].shape[1] - 7 * 44100) < 44100
    # lossy streams: the stored mixture matches the sum of stems to ~20+ dB, not exactly
    err = out["mixture"] - out["vocals"] - out["accompaniment"]
    assert 10 * np.log10(np.sum(out["mixture"] ** 2) / np.sum(err**2)) > 15

    mir = open_dataset(shared_data / "mir1k")
    assert mir[0].layout == "folder" and len(mir) == 1000
    train, held = split_tracks(mir, 0.1, group="prefix")
    assert {prefix_group(t.name) for t in train}.isdisjoint({prefix_group(t.name) for t in held})
    clip = mir[0].load(sample_rate=44100)
    assert set(clip) == {"mixture", "vocals", "accompaniment"} and clip["vocals"].shape[0] == 1
