"""Chains: ``sepcli separate -m A --then vocals:B --then vocals.x:C`` and chain presets.

Tiny random-weight archives (conftest) on a second of generated audio; the real
3-minute song with three families is at the end (slow, data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import real_song
from snr import snr_db

from sepcli.cli import main
from sepcli.cli.outputs import PROVENANCE_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_user_dirs")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


@pytest.fixture
def song(tmp_path) -> Path:
    x = np.random.default_rng(0).standard_normal((2, 3 * 44100)).astype(np.float32) * 0.1
    path = tmp_path / "song.wav"
    sf.write(path, x.T, 44100, subtype="FLOAT")
    return path


@pytest.fixture
def three(tiny_mask_archive, tiny_wave_archive, identity_archive) -> list[str]:
    """step 1: tiny-mask on mix (drums bass other vocals); step 2: tiny-wave on vocals
    (vocals, accompaniment); step 3: identity on vocals.accompaniment (vocals)."""
    return [
        "-m", tiny_mask_archive,
        "--then", f"vocals:{tiny_wave_archive}",
        "--then", f"vocals.accompaniment:{identity_archive}",
    ]  # fmt: skip


FLOAT = ("--bit-depth", "32", "--clip", "none", "-q")


def test_each_step_equals_running_it_alone_on_the_previous_steps_file(
    tmp_path, song, three, tiny_mask_archive, tiny_wave_archive, identity_archive
):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    result = cli("separate", song, *three, "-o", out, "--report", report, *FLOAT)
    assert result.exit_code == 0, result.output
    folder = out / "song"
    names = sorted(p.name for p in folder.glob("*.wav"))
    assert names == sorted(
        ["drums.wav", "bass.wav", "other.wav", "vocals.wav", "vocals.vocals.wav",
         "vocals.accompaniment.wav", "vocals.accompaniment.vocals.wav"]
    )  # fmt: skip
    # each step alone, on the file the previous step wrote
    steps = [
        (tiny_mask_archive, song, {"vocals": "vocals", "drums": "drums"}),
        (tiny_wave_archive, folder / "vocals.wav", {"accompaniment": "vocals.accompaniment"}),
        (identity_archive, folder / "vocals.accompaniment.wav",
         {"vocals": "vocals.accompaniment.vocals"}),
    ]  # fmt: skip
    for k, (archive, source, stems) in enumerate(steps):
        alone = tmp_path / f"alone{k}"
        assert cli("separate", source, "-m", archive, "-o", alone, *FLOAT).exit_code == 0
        for stem, route in stems.items():
            ref = read(alone / source.stem / f"{stem}.wav")
            assert snr_db(ref, read(folder / f"{route}.wav"), route) >= 60, (k, stem)
    # provenance: the output's stem path and every step on the way to it
    prov = json.loads((folder / PROVENANCE_FILE).read_text())["outputs"]
    last = prov["vocals.accompaniment.vocals.wav"]["chain"]
    assert last["step"] == 3 and last["input"] == "vocals.accompaniment"
    assert [s["model"] for s in last["steps"]] == ["tiny-mask", "tiny-wave", "identity"]
    assert all(len(s["archive_sha256"]) == 64 for s in last["steps"])
    assert prov["drums.wav"]["chain"]["steps"][0]["input"] == "mix"
    record = json.loads(report.read_text())["inputs"][0]
    assert [s["model"] for s in record["chain"]] == ["tiny-mask", "tiny-wave", "identity"]
    assert [s["status"] for s in record["steps"]] == ["ok", "ok", "ok"]


def test_only_the_steps_the_stems_need_run(tmp_path, song, three):
    out = tmp_path / "out"
    report = tmp_path / "r.json"
    result = cli("separate", song, *three, "--stems", "vocals.vocals,drums", "-o", out,
                 "--report", report, *FLOAT)  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "song").glob("*.wav"))
    assert names == ["drums.wav", "vocals.vocals.wav", "vocals.wav"]  # no step 3
    steps = json.loads(report.read_text())["inputs"][0]["steps"]
    assert [s["step"] for s in steps] == [1, 2]


def test_a_rerun_skips_finished_steps_and_an_interrupted_one_resumes(
    tmp_path, song, three, monkeypatch
):
    from sepcli.inference.separator import Separator

    out = tmp_path / "out"
    real = Separator.separate_file
    ran: list[str] = []

    def interrupted(self, path, outputs, **kw):
        ran.append(Path(path).name)
        if Path(path).name == "vocals.accompaniment.wav":
            raise KeyboardInterrupt
        return real(self, path, outputs, **kw)

    monkeypatch.setattr(Separator, "separate_file", interrupted)
    partial = tmp_path / "partial.json"
    result = CliRunner().invoke(main, ["separate", str(song), *map(str, three), "-o", str(out),
                                       "--report", str(partial), *FLOAT])  # fmt: skip
    assert result.exit_code == 130
    assert ran == ["song.wav", "vocals.wav", "vocals.accompaniment.wav"]
    # the report of an interrupted chain says what it did
    steps = json.loads(partial.read_text())["inputs"][0]["steps"]
    assert [(s["step"], s.get("status")) for s in steps][:2] == [(1, "ok"), (2, "ok")]
    assert (out / "song" / "vocals.accompaniment.wav").is_file()
    assert not (out / "song" / "vocals.accompaniment.vocals.wav").exists()
    ran.clear()
    monkeypatch.setattr(Separator, "separate_file", lambda *a, **k: (ran.append(
        Path(a[1]).name), real(*a, **k))[1])  # fmt: skip
    report = tmp_path / "r.json"
    assert cli("separate", song, *three, "-o", out, "--report", report, *FLOAT).exit_code == 0
    assert ran == ["vocals.accompaniment.wav"]  # resumed at step 3
    steps = json.loads(report.read_text())["inputs"][0]["steps"]
    assert [s["status"] for s in steps] == ["skipped", "skipped", "ok"]
    ran.clear()
    assert cli("separate", song, *three, "-o", out, *FLOAT).exit_code == 0
    assert ran == []  # everything done
    # --force redoes all three
    assert cli("separate", song, *three, "-o", out, "--force", *FLOAT).exit_code == 0
    assert ran == ["song.wav", "vocals.wav", "vocals.accompaniment.wav"]


def test_a_changed_input_redoes_the_steps_after_it(tmp_path, song, three, monkeypatch):
    from sepcli.inference.separator import Separator

    out = tmp_path / "out"
    assert cli("separate", song, *three, "-o", out, *FLOAT).exit_code == 0
    # step 1's vocals file changed (its record still says done): steps 2 and 3 read
    # other bytes than they were made from, so they run again
    vocals = out / "song" / "vocals.wav"
    sf.write(vocals, (read(vocals) * 0.5).T, 44100, subtype="FLOAT")
    ran: list[str] = []
    real = Separator.separate_file
    monkeypatch.setattr(Separator, "separate_file", lambda *a, **k: (ran.append(
        Path(a[1]).name), real(*a, **k))[1])  # fmt: skip
    result = cli("separate", song, *three, "-o", out, *FLOAT[:-1])
    assert result.exit_code == 0, result.output
    assert ran == ["vocals.wav", "vocals.accompaniment.wav"]


def test_a_failing_step_keeps_the_earlier_outputs_and_is_named(tmp_path, song, three, monkeypatch):
    from sepcli.errors import AudioEncodeError
    from sepcli.inference.separator import Separator

    real = Separator.separate_file

    def failing(self, path, outputs, **kw):
        if Path(path).name == "vocals.accompaniment.wav":
            raise AudioEncodeError(f"{path}: disk full")
        return real(self, path, outputs, **kw)

    monkeypatch.setattr(Separator, "separate_file", failing)
    out, report = tmp_path / "out", tmp_path / "r.json"
    result = cli("separate", song, *three, "-o", out, "--report", report, *FLOAT[:-1])
    assert result.exit_code == 1
    assert "step 3 (--then vocals.accompaniment:" in result.output
    record = json.loads(report.read_text())["inputs"][0]
    assert record["status"] == "failed" and record["failed_step"] == 3
    assert record["error"].startswith("step 3 (--then vocals.accompaniment:")
    assert (out / "song" / "vocals.accompaniment.wav").is_file()
    assert (out / "song" / "drums.wav").is_file()


def test_bad_chains_are_one_line_errors_before_any_work(
    tmp_path, song, tiny_mask_archive, tiny_wave_archive
):
    out = tmp_path / "out"
    cases = [
        (["--then", f"guitar:{tiny_wave_archive}"],
         "step 2 (--then guitar:"),  # a stem the first model does not make
        (["--then", f"vocals.lead:{tiny_wave_archive}"],
         "step 2 (--then vocals.lead:"),  # no step runs on vocals
        (["--then", f"vocals:{tiny_wave_archive}", "--then", f"vocals:{tiny_wave_archive}"],
         "step 3 (--then vocals:"),  # the same input twice: a cycle cannot be written
        (["--then", f"mix:{tiny_wave_archive}"], "step 2 (--then mix:"),
        (["--then", "vocals:no-such-model"], "step 2 (--then vocals:no-such-model): unknown model"),
        (["--then", "vocals"], "--then vocals: write STEM:MODEL"),
        (["--then", f"vocals:{tiny_wave_archive}", "--stems", "vocals.bass"],
         "--stems vocals.bass: step 2"),
        (["--then", f"vocals:{tiny_wave_archive}", "--stems", "drums.x"],
         "--stems drums.x: no step runs on 'drums'"),
    ]  # fmt: skip
    for extra, message in cases:
        result = cli("separate", song, "-m", tiny_mask_archive, *extra, "-o", out)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_a_chain_preset_runs_through_the_chain_runner(tmp_path, song, monkeypatch):
    from test_hub_presets import cached_registry, tiny_archives

    archives = tiny_archives(tmp_path)  # tiny-a: vocals, drums; tiny-b: vocals
    cached_registry(tmp_path, archives, monkeypatch)
    presets = tmp_path / "mine.toml"
    presets.write_text(
        "version = 1\n[presets.twice]\nsteps = [\n"
        '  { input = "mix", model = "tiny-a" },\n'
        '  { input = "vocals", model = "tiny-b" },\n]\n'
    )
    out = tmp_path / "out"
    result = cli("separate", song, "--preset", "twice", "--presets", presets, "-o", out, *FLOAT)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "song").glob("*.wav")) == [
        "drums.wav", "vocals.vocals.wav", "vocals.wav"
    ]  # fmt: skip
    prov = json.loads((out / "song" / PROVENANCE_FILE).read_text())["outputs"]
    assert prov["vocals.vocals.wav"]["chain"]["name"] == "twice"
    # -m PRESET --then STEM:MODEL extends it
    more = cli("separate", song, "-m", "twice", "--presets", presets, "--then",
               "vocals.vocals:tiny-b", "-o", out, *FLOAT)  # fmt: skip
    assert more.exit_code == 0, more.output
    assert (out / "song" / "vocals.vocals.vocals.wav").is_file()


def test_help_shows_a_chain_and_a_chain_preset():
    text = cli("separate", "--help").output
    assert "--then vocals:" in text and "--preset karaoke-chain" in text


def test_built_in_chain_presets_check_their_stems(tmp_path, song):
    # karaoke-chain reads the vocals of 'best', a stem it makes; a stem it does not is refused
    result = cli("separate", song, "--preset", "karaoke-chain", "--stems", "vocals.guitar",
                 "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2 and "--stems vocals.guitar: step 2" in result.output


def test_chain_runs_hold_one_model_at_a_time(tmp_path, song, three, monkeypatch):
    """A step's separator is freed before the next step's model loads."""
    import gc
    import weakref

    from sepcli.inference.separator import Separator

    alive: list[weakref.ref] = []
    real_init = Separator.__init__

    def tracking(self, *a, **k):
        gc.collect()
        assert all(r() is None for r in alive), "an earlier step's separator is still alive"
        real_init(self, *a, **k)
        alive.append(weakref.ref(self))

    monkeypatch.setattr(Separator, "__init__", tracking)
    assert cli("separate", song, *three, "-o", tmp_path / "out", *FLOAT).exit_code == 0
    assert len(alive) == 3


# ---------------------------------------------------------------- a real song, three families


def three_families(folder: Path) -> list[Path]:
    """Random-weight archives of three families at reduced width, published chunking:
    HT-Demucs (drums, bass, other, vocals), Mel-Band RoFormer on the vocals (lead_vocals,
    back_vocals; 2.5-s chunks) and an Open-Unmix like the default (n_fft 4096, 3 BiLSTM
    layers, narrower) on the lead (dry, reverb)."""
    from sepcli.models import UMXConfig, build_model, export_archive
    from sepcli.models.nets.htdemucs import HTDemucsConfig
    from sepcli.models.nets.mel_roformer import MelRoformerConfig

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    configs = [
        ("htdemucs", "hd", HTDemucsConfig(channels=8, bottom_channels=32, t_layers=2,
                                          t_heads=4, dconv_comp=4.0)),
        ("mel-roformer", "mel", MelRoformerConfig(
            sources=("lead_vocals", "back_vocals"), dim=32, depth=1, num_bands=24,
            dim_head=16, heads=2, dim_t=256, num_overlap=2)),
        ("umx", "umx", UMXConfig(sources=("dry", "reverb"), hidden_size=64)),
    ]  # fmt: skip
    paths = []
    for family, name, config in configs:
        model = build_model(family, config.to_dict())
        paths.append(export_archive(model, folder / f"{name}.sepcli", name=name))
    return paths


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.timeout(3600)
def test_real_song_through_three_families(tmp_path, shared_data, monkeypatch):
    """A 3-minute real song: HT-Demucs -> vocals through a Mel-RoFormer -> lead through
    Open-Unmix. Interrupted in step 3, the re-run resumes there; each step's outputs equal
    that step run alone on the file the previous step wrote (>= 60 dB); the provenance
    names every step."""
    from sepcli.inference.separator import Separator

    seconds = int(os.environ.get("SEPCLI_CHAIN_SECONDS", "180"))
    song = tmp_path / "song.wav"
    sf.write(song, real_song(shared_data, seconds).T, 44100, subtype="PCM_16")
    hd, mel, umx = three_families(tmp_path)
    chain = ["-m", hd, "--then", f"vocals:{mel}", "--then", f"vocals.lead_vocals:{umx}"]
    out = tmp_path / "out"
    real = Separator.separate_file
    ran: list[str] = []
    armed = [True]

    def interrupted(self, path, outputs, **kw):
        ran.append(Path(path).name)
        if Path(path).name == "vocals.lead_vocals.wav" and armed[0]:

            def stop(event, _inner=kw["on_progress"]):
                if event.done >= 2:
                    raise KeyboardInterrupt
                _inner(event)

            kw["on_progress"] = stop
        return real(self, path, outputs, **kw)

    monkeypatch.setattr(Separator, "separate_file", interrupted)
    first = CliRunner().invoke(main, ["separate", str(song), *map(str, chain), "-o", str(out),
                                      "--batch-size", "2", "-q"])  # fmt: skip
    assert first.exit_code != 0 and ran[-1] == "vocals.lead_vocals.wav"
    assert not (out / "song" / "vocals.lead_vocals.dry.wav").exists()
    ran.clear()
    armed[0] = False
    report = tmp_path / "r.json"
    again = cli("separate", song, *chain, "-o", out, "--report", report, "--batch-size", "2",
                "-q")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert ran == ["vocals.lead_vocals.wav"]  # resumed in step 3
    record = json.loads(report.read_text())["inputs"][0]
    assert [s["status"] for s in record["steps"]] == ["skipped", "skipped", "ok"]
    folder = out / "song"
    prov = json.loads((folder / PROVENANCE_FILE).read_text())["outputs"]
    steps = prov["vocals.lead_vocals.dry.wav"]["chain"]["steps"]
    assert [(s["input"], s["model"]) for s in steps] == [
        ("mix", "hd"), ("vocals", "mel"), ("vocals.lead_vocals", "umx")
    ]  # fmt: skip
    scores = {}
    for archive, source, prefix, stems in (
        (hd, song, "", ("drums", "bass", "other", "vocals")),
        (mel, folder / "vocals.wav", "vocals.", ("lead_vocals", "back_vocals")),
        (umx, folder / "vocals.lead_vocals.wav", "vocals.lead_vocals.", ("dry", "reverb")),
    ):
        alone = tmp_path / f"alone-{archive.stem}"
        result = cli("separate", source, "-m", archive, "-o", alone, "--batch-size", "2", "-q")
        assert result.exit_code == 0, result.output
        for stem in stems:
            ref = read(alone / source.stem / f"{stem}.wav")
            got = read(folder / f"{prefix}{stem}.wav")
            assert ref.shape == got.shape
            scores[prefix + stem] = snr_db(ref, got, prefix + stem)
    print({k: round(v, 1) for k, v in scores.items()})
    assert min(scores.values()) >= 60, scores


def test_a_step_whose_model_cannot_be_had_fails_alone(tmp_path, song, monkeypatch):
    """Offline, step 2's model is not in the cache: step 1's outputs stay, the error
    names step 2, and nothing was downloaded before step 1 ran."""
    from test_hub_presets import cached_registry, tiny_archives

    from sepcli.hub import open_registry
    from sepcli.hub.cache import entry_path

    archives = tiny_archives(tmp_path)
    cached_registry(tmp_path, archives, monkeypatch, sources=[["vocals", "drums"], ["vocals"]])
    entry_path(tmp_path / "cache", open_registry().get("tiny-b")).unlink()
    out, report = tmp_path / "out", tmp_path / "r.json"
    result = cli("separate", song, "-m", "tiny-a", "--then", "vocals:tiny-b", "-o", out,
                 "--report", report, *FLOAT[:-1])  # fmt: skip
    assert result.exit_code == 1
    assert "step 2 (--then vocals:tiny-b): " in result.output
    assert (out / "song" / "vocals.wav").is_file() and (out / "song" / "drums.wav").is_file()
    record = json.loads(report.read_text())["inputs"][0]
    assert record["failed_step"] == 2 and [s["status"] for s in record["steps"]] == ["ok", "failed"]
