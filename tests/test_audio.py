"""sepcli.audio: decoding, resampling, channels, encoding and atomic writes.

All audio is generated in tmp_path (fractions of a second); ffmpeg-made files
are skipped with a reason when ffmpeg is absent.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import make_tone, write_wav
from hypothesis import given, settings
from hypothesis import strategies as st

from sepcli import atomic, audio
from sepcli.audio import (
    AUDIO_SUFFIXES,
    FFMPEG_SUFFIXES,
    SOUNDFILE_SUFFIXES,
    AudioWriter,
    StreamResampler,
    convert_channels,
    encode,
    find_audio_files,
    is_audio_file,
    load_audio,
    open_audio,
    probe,
    resample,
    resampled_length,
    write_audio,
)
from sepcli.errors import AudioDecodeError, AudioEncodeError, FfmpegNotFoundError

RATE = 44100
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not installed")
# Frequencies that fall on exact FFT bins of a 0.5 s signal (2 Hz resolution).
STEM_FREQS = (200.0, 300.0, 440.0, 620.0, 880.0)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _sine(freq: float, seconds: float = 0.5, rate: int = RATE, channels: int = 2, amp: float = 0.3):
    t = np.arange(int(seconds * rate)) / rate
    return np.repeat((amp * np.sin(2 * np.pi * freq * t))[None], channels, 0).astype(np.float32)


def _peak_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.mean(axis=0)))
    return float(np.argmax(spec) * rate / x.shape[1])


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _assert_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """ffmpeg-made files: an m4a, a 5-stream .stem.mp4, cut copies of both layouts."""
    if not HAVE_FFMPEG:
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("media")
    srcs = []
    for i, f in enumerate(STEM_FREQS):
        srcs.append(write_wav(d / f"s{i}.wav", _sine(f, amp=0.1 + 0.05 * i)))
    out = {"m4a": d / "tone.m4a", "fast": d / "fast.m4a", "stem": d / "song.stem.mp4"}
    _ffmpeg("-i", str(srcs[2]), "-c:a", "aac", "-b:a", "128k", str(out["m4a"]))
    _ffmpeg("-i", str(srcs[2]), "-c:a", "aac", "-movflags", "+faststart", str(out["fast"]))
    args = [a for s in srcs for a in ("-i", str(s))]
    maps = [a for i in range(5) for a in ("-map", f"{i}:a")]
    _ffmpeg(*args, *maps, "-c:a", "aac", "-b:a", "128k", str(out["stem"]))
    for key in ("m4a", "fast", "stem"):
        data = out[key].read_bytes()
        out[f"cut_{key}"] = d / f"cut_{out[key].name}"
        out[f"cut_{key}"].write_bytes(data[: len(data) // 2])
    return out


# ------------------------------------------------------------------ suffixes and scanning


def test_suffix_sets_are_lower_case_disjoint_and_complete():
    assert AUDIO_SUFFIXES == SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES
    assert not SOUNDFILE_SUFFIXES & FFMPEG_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in AUDIO_SUFFIXES)
    assert {".wav", ".flac", ".mp3", ".ogg"} <= SOUNDFILE_SUFFIXES
    assert {".m4a", ".mp4", ".opus"} <= FFMPEG_SUFFIXES
    assert is_audio_file(Path("Song.STEM.MP4")) and is_audio_file(Path("a/b.Flac"))
    assert not is_audio_file(Path("notes.txt")) and not is_audio_file(Path(".x.wav.tmp"))
    assert not is_audio_file(Path(".hidden.wav"))


def test_find_audio_files_scans_sorted_skips_hidden_and_recurses(tmp_path):
    for rel in [
        "b.wav",
        "A.FLAC",
        "notes.txt",
        ".hidden.wav",
        "sub/c.mp3",
        ".git/d.wav",
        "sub/deep/e.m4a",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    top = find_audio_files([tmp_path])
    assert top == sorted([tmp_path / "A.FLAC", tmp_path / "b.wav"])
    deep = find_audio_files([str(tmp_path)], recursive=True)
    assert deep == sorted(tmp_path / r for r in ["A.FLAC", "b.wav", "sub/c.mp3", "sub/deep/e.m4a"])
    # files are taken as given, whatever their suffix; duplicates are listed once
    given_files = find_audio_files([tmp_path / "notes.txt", tmp_path, tmp_path / "b.wav"])
    assert given_files == [tmp_path / "notes.txt", *top]


def test_find_audio_files_errors(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file or folder") as err:
        find_audio_files([tmp_path / "missing.wav"])
    _assert_one_line(err, tmp_path / "missing.wav")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.wav").write_bytes(b"x")
    with pytest.raises(AudioDecodeError, match="no audio files found.*top level only") as err:
        find_audio_files([tmp_path / "empty"])
    _assert_one_line(err, tmp_path / "empty")
    assert find_audio_files([tmp_path / "empty"], recursive=True) == [tmp_path / "empty/sub/x.wav"]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "subtype", "tol"),
    [
        ("wav", 16, "PCM_16", 1.0 / 32768 + 1e-7),
        ("wav", 24, "PCM_24", 1.0 / 2**23 + 1e-7),
        ("wav", 32, "FLOAT", 0.0),
        ("flac", 16, "PCM_16", 1.0 / 32768 + 1e-7),
        ("flac", 24, "PCM_24", 1.0 / 2**23 + 1e-7),
        ("mp3", 16, "MPEG_LAYER_III", None),
        ("ogg", 16, "VORBIS", None),
    ],
)
def test_round_trip_every_format(tmp_path, fmt, bit_depth, subtype, tol):
    x = make_tone(0.5, RATE, 2)
    out = write_audio(tmp_path / f"x.{fmt}", x, RATE, bit_depth=bit_depth)
    assert out == tmp_path / f"x.{fmt}"
    assert sf.info(str(out)).subtype == subtype
    y, rate = load_audio(out)
    assert rate == RATE and y.dtype == np.float32 and y.shape == x.shape
    if tol is not None:
        assert np.max(np.abs(y - x)) <= tol
    else:  # lossy: the waveform survives (SNR), the length is exact (gapless headers)
        snr = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
        assert snr > 15, snr
    assert _temps(tmp_path) == []


def test_format_from_argument_overrides_suffix_and_mono_1d(tmp_path):
    x = make_tone(0.2, 8000, 1)[0]
    out = write_audio(tmp_path / "x.data", x, 8000, format="FLAC")
    assert sf.info(str(out)).format == "FLAC"
    y, rate = load_audio(out)  # unknown suffix: libsndfile recognises the content
    assert rate == 8000 and y.shape == (1, x.size)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("x.flac", {"bit_depth": 32}, "FLAC bit depth must be 16 or 24"),
        ("x.wav", {"bit_depth": 8}, "WAV bit depth must be 16, 24 or 32"),
        ("x.aiff", {}, "cannot tell the output format"),
        ("x.wav", {"format": "aac"}, "unknown output format"),
        ("x.wav", {"clip": "soft"}, "unknown clip policy"),
        ("x.mp3", {"channels": 3}, "MP3 holds at most 2 channels"),
        ("x.wav", {"sample_rate": 0}, "sample rate must be a positive integer"),
    ],
)
def test_writer_rejects_bad_settings_before_touching_disk(tmp_path, name, kwargs, match):
    args = {"sample_rate": RATE, "channels": 2, **kwargs}
    with pytest.raises(AudioEncodeError, match=match) as err:
        AudioWriter(tmp_path / name, **args)
    _assert_one_line(err, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ clip policies, NaN


def _loud() -> np.ndarray:
    x = make_tone(0.3, 8000, 2)
    x[0, 100] = 2.0
    x[1, 200] = -1.6
    return x


def test_clip_rescale_scales_whole_file_to_099(tmp_path):
    x = _loud()
    with AudioWriter(tmp_path / "r.wav", 8000, 2, bit_depth=32, clip="rescale") as w:
        w.write(x[:, :150])
        w.write(x[:, 150:])
    assert w.peak == pytest.approx(2.0) and w.gain == pytest.approx(0.99 / 2.0)
    y, _ = load_audio(tmp_path / "r.wav")
    np.testing.assert_allclose(y, x * (0.99 / 2.0), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(y)) == pytest.approx(0.99)


def test_clip_rescale_leaves_quiet_audio_alone(tmp_path):
    x = make_tone(0.2, 8000, 2)
    write_audio(tmp_path / "q.wav", x, 8000, bit_depth=32)
    np.testing.assert_array_equal(load_audio(tmp_path / "q.wav")[0], x)


def test_clip_clamp_and_none(tmp_path):
    x = _loud()
    write_audio(tmp_path / "c.wav", x, 8000, bit_depth=32, clip="clamp")
    y, _ = load_audio(tmp_path / "c.wav")
    np.testing.assert_array_equal(y, np.clip(x, -1, 1))
    write_audio(tmp_path / "n.wav", x, 8000, bit_depth=32, clip="none")
    np.testing.assert_array_equal(load_audio(tmp_path / "n.wav")[0], x)  # float keeps > 1
    write_audio(tmp_path / "n16.wav", x, 8000, bit_depth=16, clip="none")
    y16, _ = load_audio(tmp_path / "n16.wav")
    # integer PCM is clipped by the encoder, never wrapped around
    assert y16[0, 100] == pytest.approx(1.0, abs=1e-4) and y16[1, 200] == pytest.approx(
        -1.0, abs=1e-4
    )


def test_nan_and_inf_are_written_as_zero_with_a_warning(tmp_path, caplog):
    x = make_tone(0.1, 8000, 2)
    x[0, 5], x[1, 6], x[1, 7] = np.nan, np.inf, -np.inf
    with caplog.at_level(logging.WARNING, logger="sepcli.audio"):
        write_audio(tmp_path / "n.wav", x, 8000, bit_depth=32)
    y, _ = load_audio(tmp_path / "n.wav")
    assert np.isfinite(y).all() and y[0, 5] == y[1, 6] == y[1, 7] == 0
    np.testing.assert_array_equal(np.delete(y, [5, 6, 7], 1), np.delete(x, [5, 6, 7], 1))
    assert "3 NaN/inf samples" in caplog.text


# ------------------------------------------------------------------ atomic writes


def test_float_wav_bytes_do_not_depend_on_when_they_were_written(tmp_path):
    # libsndfile stamps a float WAV's PEAK chunk with the second it was written
    x = _sine(440.0, 0.2)
    first = write_audio(tmp_path / "a.wav", x, RATE, bit_depth=32, clip="none").read_bytes()
    time.sleep(1.1)
    second = write_audio(tmp_path / "b.wav", x, RATE, bit_depth=32, clip="none").read_bytes()
    assert first == second and b"PEAK" not in first
    y, rate = sf.read(tmp_path / "b.wav", dtype="float32", always_2d=True)
    assert rate == RATE and np.array_equal(y.T, x.astype(np.float32))


def test_existing_target_survives_until_commit_and_abort(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"precious")
    w = AudioWriter(target, 8000, 2)
    w.write(make_tone(0.1, 8000, 2))
    assert target.read_bytes() == b"precious" and len(_temps(tmp_path)) == 1
    w.prepare()  # encoded and synced, not yet published
    assert target.read_bytes() == b"precious" and len(_temps(tmp_path)) == 1
    w.abort()
    assert target.read_bytes() == b"precious" and _temps(tmp_path) == []
    with AudioWriter(target, 8000, 2) as w2:
        w2.write(make_tone(0.1, 8000, 2))
    assert sf.info(str(target)).frames == 800 and _temps(tmp_path) == []
    with pytest.raises(AudioEncodeError, match="already committed"):
        w2.write(make_tone(0.1, 8000, 2))


@pytest.mark.parametrize("exc", [RuntimeError("model failed"), KeyboardInterrupt()])
def test_exception_inside_writer_aborts_and_propagates(tmp_path, exc):
    target = tmp_path / "out.flac"
    target.write_bytes(b"precious")
    with pytest.raises(type(exc)):
        with AudioWriter(target, 8000, 2) as w:
            w.write(make_tone(0.1, 8000, 2))
            raise exc
    assert target.read_bytes() == b"precious" and _temps(tmp_path) == []


def test_abort_removes_parent_folders_it_created(tmp_path):
    w = AudioWriter(tmp_path / "new" / "sub" / "x.wav", 8000, 1)
    assert (tmp_path / "new" / "sub").is_dir()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    write_audio(tmp_path / "new" / "sub" / "x.wav", np.zeros((1, 10), np.float32), 8000)
    assert (tmp_path / "new" / "sub" / "x.wav").is_file()


def test_new_files_follow_umask_and_replaced_files_keep_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_audio(tmp_path / "a.wav", np.zeros((1, 10), np.float32), 8000)
    finally:
        os.umask(old)
    assert (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o644
    os.chmod(tmp_path / "a.wav", 0o640)
    write_audio(tmp_path / "a.wav", np.ones((1, 20), np.float32) * 0.5, 8000)
    assert (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o640
    assert sf.info(str(tmp_path / "a.wav")).frames == 20


def test_disk_full_while_streaming_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    target.write_bytes(b"precious")

    def full(fh, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(encode, "_write_bytes", full)
    with pytest.raises(AudioEncodeError, match="disk full") as err:
        with AudioWriter(target, 8000, 2) as w:
            w.write(make_tone(0.1, 8000, 2))
    _assert_one_line(err, target)
    assert target.read_bytes() == b"precious" and _temps(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "words"), [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")]
)
def test_disk_full_while_encoding_leaves_nothing(tmp_path, monkeypatch, code, words):
    target = tmp_path / "out.flac"
    target.write_bytes(b"precious")
    w = AudioWriter(target, 8000, 2)
    w.write(make_tone(0.1, 8000, 2))

    def full(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sf.SoundFile, "write", full)
    with pytest.raises(AudioEncodeError, match=words):
        w.commit()
    assert target.read_bytes() == b"precious" and _temps(tmp_path) == []


def test_unwritable_destination_is_a_typed_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(AudioEncodeError, match="cannot write") as err:
        AudioWriter(tmp_path / "file" / "out.wav", 8000, 2)
    _assert_one_line(err, tmp_path / "file" / "out.wav")
    with pytest.raises(AudioEncodeError, match="is a folder"):
        AudioWriter(tmp_path, 8000, 2, format="wav")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic, "create_temp", denied)
    with pytest.raises(AudioEncodeError, match="permission denied"):
        write_audio(tmp_path / "x.wav", np.zeros((1, 4), np.float32), 8000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_typed_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(AudioEncodeError, match="permission denied"):
            write_audio(ro / "x.wav", np.zeros((1, 4), np.float32), 8000)
    finally:
        ro.chmod(0o700)


def test_committing_zero_frames_is_an_error(tmp_path):
    (tmp_path / "x.flac").write_bytes(b"precious")
    with pytest.raises(AudioEncodeError, match="no audio was written"):
        write_audio(tmp_path / "x.flac", np.zeros((2, 0), np.float32), 8000)
    assert (tmp_path / "x.flac").read_bytes() == b"precious" and _temps(tmp_path) == []


def test_writer_rejects_wrong_block_shape(tmp_path):
    w = AudioWriter(tmp_path / "x.wav", 8000, 2)
    with pytest.raises(AudioEncodeError, match=r"expected \(2, n\)"):
        w.write(np.zeros((3, 10), np.float32))
    assert _temps(tmp_path) == []


def test_huge_wav_switches_to_rf64(tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "_WAV_LIMIT_BYTES", 100)
    x = make_tone(0.1, 8000, 2)
    write_audio(tmp_path / "big.wav", x, 8000, bit_depth=32)
    assert sf.info(str(tmp_path / "big.wav")).format == "RF64"
    np.testing.assert_array_equal(load_audio(tmp_path / "big.wav")[0], x)


# ------------------------------------------------------------------ decoding


def test_blocks_of_a_three_block_file_equal_load_audio(tmp_path):
    x = make_tone(0.25, 8000, 2)  # 2000 frames
    path = write_wav(tmp_path / "x.wav", x, 8000)
    with open_audio(path) as reader:
        blocks = list(reader.blocks(800))
        again = list(reader.blocks(800))  # each call starts from the beginning
    assert [b.shape for b in blocks] == [(2, 800), (2, 800), (2, 400)]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in blocks)
    whole, rate = load_audio(path)
    np.testing.assert_array_equal(np.concatenate(blocks, 1), whole)
    np.testing.assert_array_equal(np.concatenate(again, 1), x)
    assert rate == 8000


def test_reading_and_writing_memory_does_not_grow_with_length(tmp_path):
    import tracemalloc

    rate, seconds = 8000, 120  # 2 min stereo float: 7.7 MB of samples
    src = tmp_path / "long.wav"
    with sf.SoundFile(str(src), "w", rate, 2, subtype="FLOAT") as f:
        for _ in range(seconds // 10):
            f.write(make_tone(10, rate, 2).T)
    tracemalloc.start()
    try:
        with open_audio(src) as reader, AudioWriter(tmp_path / "copy.flac", rate, 2) as w:
            for block in reader.blocks(4096):
                w.write(block * 3.0)  # peak > 1: rescale needs the two-pass commit
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak  # a few blocks, not the 7.7 MB file
    assert w.gain < 1 and sf.info(str(tmp_path / "copy.flac")).frames == rate * seconds


def test_probe_soundfile(tmp_path):
    path = write_wav(tmp_path / "x.wav", make_tone(0.25, 8000, 1), 8000, "PCM_24")
    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames, info.backend) == (
        8000,
        1,
        2000,
        "soundfile",
    )
    assert info.exact_frames and info.duration == pytest.approx(0.25) and info.num_streams == 1


def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    x = make_tone(0.5, 8000, 2)
    out: dict[str, tuple[Path, str]] = {}
    (d / "empty.wav").write_bytes(b"")
    out["empty"] = (d / "empty.wav", "empty file")
    for suffix in (".wav", ".mp3", ".flac"):
        p = d / f"text{suffix}"
        p.write_text("this is not audio\n" * 20)
        out[f"text{suffix}"] = (p, "not a recognised audio file")
    for fmt, subtype, match in [
        ("WAV", "PCM_16", "header declares 16000 bytes of audio, file holds"),
        ("AIFF", "PCM_16", "header declares"),
        ("W64", "PCM_16", "header declares"),
        ("FLAC", "PCM_16", "corrupt or truncated"),
        ("MP3", "MPEG_LAYER_III", "decoded .* of 4000 declared frames"),
    ]:
        full = d / f"full.{fmt.lower()}"
        sf.write(str(full), x.T, 8000, format=fmt, subtype=subtype)
        data = full.read_bytes()
        cut = d / f"cut.{fmt.lower()}"
        cut.write_bytes(data[: len(data) // 2])
        out[f"cut.{fmt.lower()}"] = (cut, match)
    sf.write(str(d / "zero.wav"), np.zeros((0, 2), np.float32), 8000)
    out["zero frames"] = (d / "zero.wav", "no audio frames")
    out["missing"] = (d / "missing.flac", "no such file")
    out["folder"] = (d, "is a folder")
    return out


def test_every_bad_input_is_one_typed_line_naming_the_file(tmp_path):
    for name, (path, match) in _bad_files(tmp_path).items():
        with pytest.raises(AudioDecodeError, match=match) as err:
            load_audio(path)
        _assert_one_line(err, path)
        assert not isinstance(err.value, FfmpegNotFoundError), name


def test_stream_index_of_single_stream_file(tmp_path):
    path = write_wav(tmp_path / "x.wav", make_tone(0.1, 8000, 2), 8000)
    assert load_audio(path, stream=0)[0].shape == (2, 800)
    with pytest.raises(AudioDecodeError, match="stream 1 does not exist") as err:
        load_audio(path, stream=1)
    _assert_one_line(err, path)


def test_block_frames_must_be_positive(tmp_path):
    path = write_wav(tmp_path / "x.wav", make_tone(0.1, 8000, 2), 8000)
    with open_audio(path) as reader, pytest.raises(ValueError, match="block_frames"):
        reader.blocks(0)


# ------------------------------------------------------------------ ffmpeg


@needs_ffmpeg
def test_ffmpeg_decode_m4a_matches_source(media):
    info = probe(media["m4a"])
    assert (info.backend, info.sample_rate, info.channels, info.num_streams) == (
        "ffmpeg",
        RATE,
        2,
        1,
    )
    assert not info.exact_frames and info.duration == pytest.approx(0.5, abs=0.01)
    y, rate = load_audio(media["m4a"])
    assert rate == RATE and y.shape[0] == 2 and y.dtype == np.float32
    # AAC keeps its encoder delay/padding: a little longer than the source, never shorter
    assert RATE // 2 <= y.shape[1] <= RATE // 2 + 4096
    assert _peak_freq(y, RATE) == pytest.approx(440, abs=3)
    with open_audio(media["m4a"]) as reader:
        blocks = list(reader.blocks(7001))
    assert all(b.shape[1] == 7001 for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= 7001
    np.testing.assert_array_equal(np.concatenate(blocks, 1), y)


@needs_ffmpeg
def test_stem_mp4_streams_by_index(media):
    info = probe(media["stem"], stream=4)
    assert info.num_streams == 5 and info.stream == 4
    lengths = set()
    for k, freq in enumerate(STEM_FREQS):
        y, rate = load_audio(media["stem"], stream=k)
        lengths.add(y.shape[1])
        assert rate == RATE and y.shape[0] == 2
        assert _peak_freq(y, RATE) == pytest.approx(freq, abs=3), k
    assert len(lengths) == 1
    first, _ = load_audio(media["stem"])  # None = stream 0
    assert _peak_freq(first, RATE) == pytest.approx(STEM_FREQS[0], abs=3)
    with pytest.raises(
        AudioDecodeError, match=r"has 5 audio stream\(s\); stream 5 does not exist"
    ) as err:
        load_audio(media["stem"], stream=5)
    _assert_one_line(err, media["stem"])


@needs_ffmpeg
@pytest.mark.parametrize("key", ["cut_m4a", "cut_fast", "cut_stem"])
def test_mp4_cut_in_half_is_corrupt(media, key):
    with pytest.raises(AudioDecodeError, match="ffprobe: moov atom not found|truncated") as err:
        load_audio(media[key])
    _assert_one_line(err, media[key])


@needs_ffmpeg
def test_text_renamed_m4a_and_unknown_suffix(tmp_path):
    fake = tmp_path / "fake.m4a"
    fake.write_text("hello\n" * 50)
    with pytest.raises(AudioDecodeError, match="not a readable audio file") as err:
        load_audio(fake)
    _assert_one_line(err, fake)
    odd = tmp_path / "notes.xyz"
    odd.write_text("hello\n" * 50)
    with pytest.raises(AudioDecodeError, match="not a recognised audio file.*unknown suffix"):
        load_audio(odd)


@needs_ffmpeg
def test_soundfile_suffix_falls_back_to_ffmpeg(media, tmp_path):
    disguised = tmp_path / "really_aac.wav"
    shutil.copy(media["m4a"], disguised)
    assert probe(disguised).backend == "ffmpeg"
    np.testing.assert_array_equal(load_audio(disguised)[0], load_audio(media["m4a"])[0])


@needs_ffmpeg
def test_ffmpeg_process_is_killed_on_early_close(media):
    reader = open_audio(media["stem"], stream=1)
    gen = reader.blocks(1000)
    next(gen)
    proc = reader._proc
    assert proc is not None and proc.poll() is None
    reader.close()
    assert reader._proc is None and proc.returncode is not None
    with pytest.raises(AudioDecodeError, match="closed"):
        reader.blocks(1000)


def test_missing_ffmpeg_is_reported_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCLI_FFMPEG", str(tmp_path / "no-such-ffmpeg"))
    assert not audio.ffmpeg_available()
    m4a = tmp_path / "x.m4a"
    m4a.write_bytes(b"\x00" * 64)
    with pytest.raises(FfmpegNotFoundError, match="apt install ffmpeg.*brew install ffmpeg") as err:
        load_audio(m4a)
    _assert_one_line(err, m4a)
    monkeypatch.setenv("SEPCLI_FFMPEG", "")
    with pytest.raises(FfmpegNotFoundError):
        probe(m4a)
    wav = write_wav(tmp_path / "ok.wav", make_tone(0.1, 8000, 2), 8000)
    assert load_audio(wav)[0].shape == (2, 800)  # soundfile formats need no ffmpeg


# ------------------------------------------------------------------ channels and resampling


def test_convert_channels():
    mono = np.arange(6, dtype=np.float32).reshape(1, 6)
    stereo = convert_channels(mono, 2)
    assert stereo.shape == (2, 6) and (stereo == mono).all() and stereo.dtype == np.float32
    st2 = np.stack([np.ones(4), 3 * np.ones(4)]).astype(np.float32)
    np.testing.assert_array_equal(convert_channels(st2, 1), 2 * np.ones((1, 4)))
    six = np.arange(6, dtype=np.float32)[:, None].repeat(3, 1)
    np.testing.assert_array_equal(convert_channels(six, 2), 2.5 * np.ones((2, 3)))
    np.testing.assert_array_equal(convert_channels(six, 1), 2.5 * np.ones((1, 3)))
    assert convert_channels(st2, 2) is st2
    with pytest.raises(ValueError, match="cannot convert 2 channels to 6"):
        convert_channels(st2, 6)
    with pytest.raises(ValueError, match=r"\(channel, time\)"):
        convert_channels(np.zeros(4, np.float32), 2)


def test_resample_length_and_pitch():
    x = _sine(1000.0, seconds=0.5, rate=44100, channels=2)
    y = resample(x, 44100, 48000)
    assert y.shape == (2, 24000) and y.dtype == np.float32
    assert _peak_freq(y, 48000) == pytest.approx(1000, abs=3)
    assert resample(x, 44100, 44100) is x
    assert resample(np.zeros((2, 0), np.float32), 44100, 48000).shape == (2, 0)
    assert [resampled_length(n, 44100, 22050) for n in (1, 3, 5, 10005)] == [1, 2, 3, 5003]
    with pytest.raises(ValueError, match="in_rate"):
        resample(x, 0, 48000)


@pytest.mark.parametrize(
    "rates", [(44100, 48000), (48000, 44100), (44100, 22050), (22050, 44100), (16000, 44100)]
)
@pytest.mark.parametrize("block", [1, 333, 4097])
def test_stream_resampler_equals_whole_resample(rates, block):
    in_rate, out_rate = rates
    x = make_tone(0.2, in_rate, 2, seed=1)
    x = x[:, : x.shape[1] - 7]  # an odd length
    r = StreamResampler(in_rate, out_rate, 2)
    parts = [r.process(x[:, i : i + block]) for i in range(0, x.shape[1], block)]
    parts.append(r.flush())
    y = np.concatenate(parts, 1)
    ref = resample(x, in_rate, out_rate)
    assert y.shape == ref.shape == (2, resampled_length(x.shape[1], in_rate, out_rate))
    np.testing.assert_allclose(y, ref, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 3000),
    block=st.integers(1, 700),
    rates=st.sampled_from([(44100, 48000), (48000, 44100), (44100, 22050), (8000, 44100)]),
)
def test_stream_resampler_total_length_property(n, block, rates):
    r = StreamResampler(*rates, 1)
    x = np.random.default_rng(n).standard_normal((1, n)).astype(np.float32)
    total = sum(r.process(x[:, i : i + block]).shape[1] for i in range(0, n, block))
    total += r.flush().shape[1]
    assert total == resampled_length(n, *rates) == r.frames_out


def test_stream_resampler_identity_is_copy_free():
    r = StreamResampler(44100, 44100, 2)
    block = make_tone(0.01, 44100, 2)
    assert r.process(block) is block
    assert r.flush().shape == (2, 0)
    with pytest.raises(ValueError, match="after flush"):
        r.process(block)


# ------------------------------------------------------------------ real data


@pytest.mark.data
@needs_ffmpeg
def test_real_stem_mp4_has_five_equal_stereo_streams(shared_data):
    track = sorted((shared_data / "musdb18-preview" / "train").glob("*.stem.mp4"))[0]
    info = probe(track)
    assert info.num_streams == 5 and info.sample_rate == 44100 and info.channels == 2
    streams = [load_audio(track, stream=k) for k in range(5)]
    assert {a.shape for a, _ in streams} == {streams[0][0].shape}
    assert all(rate == 44100 and a.shape[0] == 2 for a, rate in streams)
    assert abs(streams[0][0].shape[1] - info.frames) < 0.01 * info.frames
    mix, stems = streams[0][0], sum(a for a, _ in streams[1:])
    snr = 10 * np.log10(np.sum(mix**2) / np.sum((mix - stems) ** 2))
    assert snr > 5, snr  # lossy streams: the mixture is the sum of stems only roughly
