"""Whole-track input normalisation (MSST's ``inference.normalize``): the streamed
statistics, the two passes of the separator, and what is refused.

Parity with MSST's own arithmetic (``normalize_audio``, ``demix``,
``denormalize_audio``) is in ``tests/test_models_scnet.py`` (golden fixture).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import TinyWaveModel, _meta, make_tone, save_torchscript_archive, write_wav

from sepcli import audio
from sepcli.cli import main
from sepcli.errors import ArchiveError, ConfigError, UsageError
from sepcli.inference.normalize import RunningStats, TrackStats, track_stats
from sepcli.inference.separator import Separator
from sepcli.models.archive import Archive, ArchiveMetadata
from sepcli.models.bags.ensemble import Ensemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 44100


def snr_db(ref, est) -> float:
    ref, est = np.asarray(ref, dtype=np.float64), np.asarray(est, dtype=np.float64)
    noise = float(((ref - est) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref**2).sum()) / noise)


def _archive(normalization: str | None = "track", rate: int = RATE) -> Archive:
    module = torch.jit.script(TinyWaveModel(sample_rate=rate)).eval()
    meta = _meta(
        "tiny-norm", ["vocals", "other"], rate, 2, "waveform", "test",
        input_normalization=normalization,
    )  # fmt: skip
    return Archive(module, meta)


def _msst_stats(mix: np.ndarray) -> tuple[float, float]:
    """MSST's ``normalize_audio`` figures, in float64: the mono mix's mean and
    population standard deviation."""
    mono = np.asarray(mix, dtype=np.float64).mean(axis=0)
    return float(mono.mean()), float(mono.std())


@pytest.mark.parametrize(("offset", "scale"), [(0.0, 0.3), (0.999, 1e-5), (1e4, 1.0)])
def test_running_stats_equal_the_whole_track_for_any_blocks(offset, scale):
    rng = np.random.default_rng(0)
    x = offset + scale * rng.standard_normal(100_003)
    acc = RunningStats()
    i = 0
    while i < x.size:
        n = int(rng.integers(1, 5000))
        acc.add(x[i : i + n])
        i += n
    got = acc.stats()
    assert acc.count == x.size
    assert got.mean == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
    assert got.std == pytest.approx(x.std(), rel=1e-9)  # numpy's default: ddof=0
    # what the merge avoids: E[x^2] - E[x]^2 in float32 loses a large offset's spread
    naive = float(np.mean(np.float32(x) ** 2, dtype=np.float32) - np.float32(x.mean()) ** 2)
    if offset >= 0.999:
        assert not np.isclose(np.sqrt(max(naive, 0.0)), x.std(), rtol=1e-2)


def test_track_stats_are_msst_figures():
    mix = make_tone(0.5)
    mix[1] += 0.05
    mean, std = _msst_stats(mix)
    stats = track_stats(mix)
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.std == pytest.approx(std, rel=1e-12)
    assert not TrackStats(0.25, 0.0).usable and TrackStats(0.0, 1e-20).usable
    with pytest.raises(ValueError, match="finite"):
        TrackStats(float("nan"), 1.0)


@pytest.mark.parametrize("rate", [RATE, 48000])
def test_measure_streams_the_model_rate_statistics(rate):
    # the first pass: blocks at the file's rate -> the figures of what the model is fed
    mix = make_tone(1.3, sample_rate=rate, seed=3) + np.float32(0.02)
    sep = Separator(_archive(), device="cpu")
    blocks = (mix[:, i : i + 7001] for i in range(0, mix.shape[-1], 7001))
    got = sep.measure(blocks, rate, 2)
    assert list(got) == [RATE]
    fed = audio.resample(mix, rate, RATE) if rate != RATE else mix
    mean, std = _msst_stats(fed)
    assert got[RATE].mean == pytest.approx(mean, rel=1e-9)
    assert got[RATE].std == pytest.approx(std, rel=1e-9)
    mono = sep.measure([mix[:1]], rate, 1)[RATE]  # a mono file: duplicated, same mono mix
    ref = audio.resample(mix[:1], rate, RATE) if rate != RATE else mix[:1]
    assert mono.std == pytest.approx(_msst_stats(ref)[1], rel=1e-9)


def test_two_passes_equal_the_whole_track_arithmetic(tmp_path):
    mix = 0.4 * make_tone(2.2, seed=5) + np.float32(0.03)
    mean, std = _msst_stats(mix)
    plain = Separator(_archive(None), device="cpu", segment_seconds=0.5)
    # the reference: the model on the normalised whole track, each stem denormalised
    ref = plain.separate(((mix - mean) / std).astype(np.float32), RATE)
    ref = {k: v.numpy() * std + mean for k, v in ref.items()}
    normed = Separator(_archive(), device="cpu", segment_seconds=0.5)
    assert normed.needs_track_stats and not plain.needs_track_stats
    memory = normed.separate(mix, RATE)
    wav = write_wav(tmp_path / "in.wav", mix)
    outputs = {s: tmp_path / f"{s}.wav" for s in ("vocals", "other", "accompaniment")}
    normed.separate_file(wav, outputs, bit_depth=32, clip="none")
    for stem in ("vocals", "other"):
        assert snr_db(ref[stem], memory[stem]) >= 100
        got, _ = sf.read(outputs[stem], dtype="float32")
        assert snr_db(ref[stem], got.T) >= 100
    # derived stems come from the denormalised ones: accompaniment = mix - vocals
    got, _ = sf.read(outputs["accompaniment"], dtype="float32")
    assert snr_db(mix - ref["vocals"], got.T) >= 100


def test_a_stream_without_statistics_is_refused_by_name():
    sep = Separator(_archive(), device="cpu")
    mix = make_tone(0.3)
    with pytest.raises(UsageError, match="tiny-norm.*whole track.*separate a file"):
        list(sep.stream([mix], RATE, 2))
    # given statistics (one for every rate) it streams
    out = list(sep.stream([mix], RATE, 2, track_stats=TrackStats(0.0, 0.1)))
    assert sum(o["vocals"].shape[-1] for o in out) == mix.shape[-1]


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_a_constant_track_is_refused_not_divided_by_zero(tmp_path, value):
    # MSST divides by std = 0 and writes NaN; sepcli names the track and the model
    wav = write_wav(tmp_path / "flat.wav", np.full((2, 9000), value, np.float32))
    sep = Separator(_archive(), device="cpu")
    with pytest.raises(UsageError, match=r"flat\.wav: the track is silent or constant.*tiny-norm"):
        sep.separate_file(wav, {"vocals": tmp_path / "v.wav"})
    assert not (tmp_path / "v.wav").exists()


def test_a_huge_offset_with_a_tiny_signal_is_finite():
    rng = np.random.default_rng(1)
    mix = (0.9 + 1e-6 * rng.standard_normal((2, 20000))).astype(np.float32)
    out = Separator(_archive(), device="cpu", segment_seconds=0.25).separate(mix, RATE)
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    assert float(out["vocals"].mean()) == pytest.approx(0.9, abs=1e-3)  # y * std + mean


def test_metadata_records_it_and_keeps_old_bytes():
    meta = _archive().metadata
    assert json.loads(meta.to_json())["input_normalization"] == "track"
    assert ArchiveMetadata.from_json(meta.to_json()) == meta
    plain = _archive(None).metadata
    assert "input_normalization" not in json.loads(plain.to_json())  # bytes as before
    with pytest.raises(ArchiveError, match="unknown input normalization 'chunk'.*newer sepcli"):
        meta.replace(input_normalization="chunk")


def test_stdin_and_ensembles_refuse_it(tmp_path):
    archive = _archive()
    path = save_torchscript_archive(archive.module, archive.metadata, tmp_path / "n.sepcli")
    wav = write_wav(tmp_path / "in.wav", make_tone(0.3))
    result = CliRunner().invoke(
        main, ["separate", "-", "-o", "-", "-m", str(path), "--stems", "vocals", "-q"],
        input=wav.read_bytes(),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "normalises its input by the whole track" in result.output
    with pytest.raises(ConfigError, match="cannot be an ensemble member.*whole track"):
        Ensemble.member_spec(archive)
