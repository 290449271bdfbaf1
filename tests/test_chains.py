"""Chains: ``sepcli separate -m A --then vocals:B --then vocals.x:C`` and chain presets.

Tiny random-weight archives (conftest) on a second of generated audio; the real
3-minute song with three families is at the end (slow, data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from sepcli.cli import main
from sepcli.cli.outputs import PROVENANCE_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCLI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEPCLI_REGISTRY", raising=False)
    monkeypatch.setenv("SEPCLI_OFFLINE", "1")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - est) ** 2))
    return (
        float("inf") if noise == 0 else 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise)
    )


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
            assert snr_db(ref, read(folder / f"{route}.wav")) >= 60, (k, stem)
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
    result = CliRunner().invoke(main, ["separate", str(song), *map(str, three), "-o", str(out),
                                       *FLOAT])  # fmt: skip
    assert result.exit_code != 0
    assert ran == ["song.wav", "vocals.wav", "vocals.accompaniment.wav"]
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
