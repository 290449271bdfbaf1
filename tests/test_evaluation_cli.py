"""``sepcli evaluate`` and ``sepcli compare`` in-process on tiny generated data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import make_tone, save_torchscript_archive, write_wav

from sepcli.cli import main
from sepcli.datasets import open_dataset
from sepcli.evaluation.bsseval import bss_eval_v4
from sepcli.evaluation.runner import EvalConfig, OracleEstimator, evaluate_tracks, read_track_json
from sepcli.models.archive import load_archive

RATE = 8000
SOURCES = ("drums", "bass", "other", "vocals")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _track(folder: Path, seed: int, seconds: float = 2.0) -> dict[str, np.ndarray]:
    stems = {
        s: make_tone(seconds, RATE, 2, seed=seed * 10 + i) * (0.5 + 0.2 * i)
        for i, s in enumerate(SOURCES)
    }
    stems["vocals"] = stems["vocals"] * np.linspace(
        0, 1, stems["vocals"].shape[1], dtype=np.float32
    )
    for name, audio in stems.items():
        write_wav(folder / f"{name}.wav", audio, RATE)
    return stems


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """MUSDB18-HQ-like layout: test/{t1,t2}/<stem>.wav at 8 kHz, 2 s."""
    root = tmp_path / "data"
    for i, name in enumerate(["t1", "t2"]):
        _track(root / "test" / name, seed=i)
    return root


def _estimates(dataset: Path, out: Path, tracks=("t1", "t2")) -> Path:
    rng = np.random.default_rng(0)
    for name in tracks:
        folder = dataset / "test" / name
        refs = {s: sf.read(folder / f"{s}.wav", dtype="float32")[0].T for s in SOURCES}
        mix = sum(refs.values())
        for s in (*SOURCES, "accompaniment"):
            ref = refs[s] if s != "accompaniment" else mix - refs["vocals"]
            est = 0.8 * ref + 0.1 * mix + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
            write_wav(out / name / f"{s}.wav", est, RATE)
    return out


def test_evaluate_estimates_writes_museval_json_and_resumes(dataset: Path, tmp_path: Path) -> None:
    est_dir = _estimates(dataset, tmp_path / "est")
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(dataset), "--estimates", str(est_dir), "--out", str(out),
            "--filters-len", "32"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "vocals" in result.output and "median" in result.output and "SAR" in result.output
    doc = json.loads((out / "test" / "t1.json").read_text())
    names = [t["name"] for t in doc["targets"]]
    assert names == ["drums", "bass", "other", "vocals", "accompaniment"]
    frame = doc["targets"][3]["frames"][1]
    assert frame["time"] == 1.0 and frame["duration"] == 1.0
    assert set(frame["metrics"]) == {"SDR", "SIR", "ISR", "SAR"}
    # vocals come from the (vocals, accompaniment) pair, as in museval
    refs = open_dataset(dataset, "test")[0].load(["vocals", "accompaniment"])
    ests = {
        s: sf.read(est_dir / "t1" / f"{s}.wav", dtype="float32")[0].T
        for s in ("vocals", "accompaniment")
    }
    pair = bss_eval_v4(torch.from_numpy(np.stack([refs["vocals"], refs["accompaniment"]])),
                       torch.from_numpy(np.stack([ests["vocals"], ests["accompaniment"]])), RATE, RATE, 32)  # fmt: skip
    assert frame["metrics"]["SDR"] == pytest.approx(pair.sdr[0, 1].item(), abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aggregate"]["vocals"]["SDR"]["tracks"] == 2
    assert set(summary["tracks"]) == {"t1", "t2"}

    # resume: existing JSONs are read back, not recomputed
    (out / "test" / "t2.json").write_text(json.dumps({"targets": [{"name": "vocals", "frames": [
        {"time": 0, "duration": 1, "metrics": {"SDR": 42.0, "SIR": 1, "ISR": 1, "SAR": 1}}]}]}))  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tracks"]["t2"]["vocals"]["SDR"] == 42.0
    assert "resumed t2" in result.stderr


def test_oracles_order_and_samples(dataset: Path, tmp_path: Path) -> None:
    sdr = {}
    for oracle in ("irm2", "mix"):
        out = tmp_path / oracle
        args = ["evaluate", "--data", str(dataset), "--model", f"oracle:{oracle}", "--out", str(out),
                "--tracks", "t1", "--stems", "vocals,accompaniment", "--json", "--filters-len", "32"]  # fmt: skip
        if oracle == "irm2":
            args += ["--samples", "0.5", "--write-estimates"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        sdr[oracle] = json.loads(result.stdout)["aggregate"]["vocals"]["SDR"]["median"]
    assert sdr["irm2"] > sdr["mix"] + 5
    samples = tmp_path / "irm2" / "samples" / "t1"
    assert sorted(p.name for p in samples.iterdir()) == [
        "accompaniment.wav",
        "mixture.wav",
        "vocals.wav",
    ]
    assert all(sf.info(p).frames == RATE // 2 for p in samples.iterdir())
    assert (tmp_path / "irm2" / "estimates" / "t1" / "vocals.wav").is_file()

    result = CliRunner().invoke(main, ["compare", str(tmp_path / "irm2"), str(tmp_path / "mix")])
    assert result.exit_code == 0, result.output
    assert (
        "oracle:irm2" in result.output
        and "oracle:mix" in result.output
        and "vocals" in result.output
    )
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "irm2"), "--json"])
    assert (
        json.loads(result.stdout)["stems"]["vocals"][str(tmp_path / "irm2")]["median"]
        == sdr["irm2"]
    )


def test_bad_input_skips_tracks_and_exits_nonzero(dataset: Path, tmp_path: Path) -> None:
    est_dir = _estimates(dataset, tmp_path / "est", tracks=("t1",))  # no estimates for t2
    (dataset / "test" / "t3").mkdir()
    _track(dataset / "test" / "t3", seed=3)
    (dataset / "test" / "t3" / "bass.wav").unlink()  # a missing stem file
    _track(dataset / "test" / "t4", seed=4)
    write_wav(dataset / "test" / "t4" / "drums.wav", make_tone(1.0, RATE, 2), RATE)  # shorter stem
    shutil.copytree(est_dir / "t1", est_dir / "t4")
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(dataset), "--estimates", str(est_dir), "--out", str(out),
            "--stems", "vocals,drums,bass,other", "--filters-len", "16"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "skipped t2: no estimates for track 't2'" in result.stderr
    assert "skipped t3: track 't3' has no reference for bass" in result.stderr
    assert "skipped t4" in result.stderr and "different lengths" in result.stderr
    assert (out / "test" / "t1.json").is_file() and not (out / "test" / "t2.json").exists()
    assert set(json.loads((out / "summary.json").read_text())["skipped"]) == {"t2", "t3", "t4"}

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["evaluate", "--data", str(empty), "--model", "oracle:mix"])
    assert result.exit_code == 6 and "no tracks found" in result.stderr
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(dataset), "--model", "oracle:irm9"]
    )
    assert result.exit_code == 2 and "unknown oracle" in result.stderr
    result = CliRunner().invoke(main, ["evaluate", "--data", str(dataset)])
    assert result.exit_code == 2 and "exactly one of --model or --estimates" in result.stderr
    result = CliRunner().invoke(main, ["compare", str(empty)])
    assert result.exit_code == 6 and "no evaluation results" in result.stderr


def test_sdr_and_sisdr_metrics_and_single_stem(dataset: Path, tmp_path: Path) -> None:
    tracks = open_dataset(dataset, "test")
    for kind, name in (("sdr", "SDR"), ("sisdr", "SI-SDR")):
        res = evaluate_tracks(
            tracks, OracleEstimator("irm1"), tmp_path / kind, EvalConfig(metrics=kind)
        )
        assert res.scored == ["t1", "t2"] and not res.skipped
        doc = read_track_json(tmp_path / kind / "test" / "t1.json")
        assert len(doc["vocals"][name]) == 1 and np.isfinite(doc["vocals"][name][0])
    # one stem alone is scored against its complement
    res = evaluate_tracks(
        tracks,
        OracleEstimator("irm1"),
        tmp_path / "single",
        EvalConfig(stems=("drums",), filters_len=16),
    )
    assert not res.skipped
    assert list(read_track_json(tmp_path / "single" / "test" / "t1.json")) == ["drums"]


def test_evaluate_with_a_model(dataset: Path, tmp_path: Path, tiny_mask_archive: Path) -> None:
    out = tmp_path / "model"
    args = ["evaluate", "--data", str(dataset), "--model", str(tiny_mask_archive), "--out", str(out),
            "--tracks", "t1", "--stems", "vocals,accompaniment", "--phase", "wiener", "--json",
            "--filters-len", "16"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["estimator"] == str(tiny_mask_archive)
    assert np.isfinite(summary["aggregate"]["vocals"]["SDR"]["median"])


def test_evaluate_draws_a_download_bar_for_a_registry_model(
    dataset: Path, tmp_path: Path, tiny_mask_archive: Path, monkeypatch, terminal_screen
) -> None:
    # a registry model downloads on first use: evaluate shows the bar that separate shows
    import time

    import sepcli.hub
    from sepcli.progress import Progress

    def fake_load_model(name, device=None, progress=None, **kwargs):
        assert name == "some-model" and progress is not None
        for done in (0, 500, 1000):
            progress(Progress("download", done, 1000, "bytes", item=name))
            time.sleep(0.15)  # long enough for rich to draw the bar
        return load_archive(tiny_mask_archive)

    monkeypatch.setattr(sepcli.hub, "load_model", fake_load_model)
    args = ["evaluate", "--data", str(dataset), "--model", "some-model", "--out",
            str(tmp_path / "out"), "--tracks", "t1", "--stems", "vocals", "--filters-len", "16"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "downloading some-model" in terminal_screen.getvalue()


def test_resume_only_into_results_of_the_same_estimator(
    dataset: Path, tmp_path: Path, tiny_mask_archive: Path
) -> None:
    out = tmp_path / "out"
    base = ["evaluate", "--data", str(dataset), "--out", str(out), "--tracks", "t1",
            "--stems", "vocals,accompaniment", "--filters-len", "16", "--json"]  # fmt: skip
    model = [*base, "--model", str(tiny_mask_archive)]
    assert CliRunner().invoke(main, model).exit_code == 0
    before = (out / "test" / "t1.json").read_bytes()
    again = CliRunner().invoke(main, model)
    assert again.exit_code == 0 and "resumed t1" in again.stderr
    # a copy of the same archive under another name is the same estimator
    copy = tmp_path / "copy" / tiny_mask_archive.name
    copy.parent.mkdir()
    copy.write_bytes(tiny_mask_archive.read_bytes())
    assert CliRunner().invoke(main, [*base, "--model", str(copy)]).exit_code == 0
    # other weights, other separation or scoring settings: refused, nothing overwritten
    other = load_archive(tiny_mask_archive)
    with torch.no_grad():
        next(iter(other.module.parameters())).add_(0.01)
    (tmp_path / "other").mkdir()
    retrained = save_torchscript_archive(
        other.module, other.metadata, tmp_path / "other" / "tiny.sepcli"
    )
    for extra, what in (
        (["--model", "oracle:mix"], "kind"),
        (["--model", str(retrained)], "weights"),
        (["--model", str(tiny_mask_archive), "--overlap", "0.5"], "overlap"),
        (["--model", str(tiny_mask_archive), "--phase", "wiener"], "phase"),
    ):
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert f"holds results of {tiny_mask_archive}" in result.stderr and what in result.stderr
    scoring = [a if a != "16" else "32" for a in model]
    result = CliRunner().invoke(main, scoring)
    assert result.exit_code == 2 and "filters_len" in result.stderr
    assert (out / "test" / "t1.json").read_bytes() == before
    # results that do not say where they come from are not trusted either
    (out / "evaluation.json").unlink()
    result = CliRunner().invoke(main, model)
    assert result.exit_code == 2 and "without evaluation.json" in result.stderr
