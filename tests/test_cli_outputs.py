"""`sepcli separate` outputs: never overwrite, provenance, leftovers, own outputs, limits.

Issue 17 items 1-4, 6, 7, 10-12, 14, 16, and the fault tests (SIGTERM, a
read-only output, a full disk, partial outputs, concurrent runs on one folder).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import make_tone, write_wav

from sepcli.cli import main

PROVENANCE_FILE = ".sepcli-run.json"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _console_script() -> str:
    script = Path(sys.executable).parent / "sepcli"
    if not script.exists():
        pytest.skip("sepcli console script not installed in this environment (pip install -e .)")
    return str(script)


def _hidden(folder: Path) -> list[str]:
    """Hidden files under ``folder`` other than provenance files."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.is_file() and p.name != PROVENANCE_FILE
    )


# ---------------------------------------------------------------- item 1: never overwrite


def test_existing_file_is_kept_and_named_only_missing_stems_are_written(
    tmp_path, tiny_wave_archive
):
    src = write_wav(tmp_path / "song.wav", make_tone(0.5))
    mine = tmp_path / "o" / "song" / "vocals.wav"
    write_wav(mine, np.zeros((2, 100), np.float32))
    before = mine.read_bytes()
    r = run(
        "separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_wave_archive),
        "--stems", "vocals,accompaniment",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert mine.read_bytes() == before  # not replaced
    assert (tmp_path / "o" / "song" / "accompaniment.wav").is_file()  # the missing one is made
    assert f"skipped {mine}: exists, not written by sepcli" in r.output.replace("\n", "")
    summary = r.output.strip().splitlines()[-1]
    assert summary == (
        "1 separated, 0 skipped, 0 failed; kept 1 existing output file "
        "(1 not written by sepcli; --force to redo)"
    )


def test_force_replaces_existing_files(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.5))
    mine = write_wav(tmp_path / "o" / "song" / "vocals.wav", np.zeros((2, 100), np.float32))
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_wave_archive),
            "--stems", "vocals", "--force")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sf.info(str(mine)).frames == 22050


# ---------------------------------------------------------------- item 2: provenance


def test_another_models_stems_are_named_as_such(tmp_path, tiny_wave_archive, identity_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.5))
    out = tmp_path / "o"
    args = ["separate", str(src), "-o", str(out), "--stems", "vocals"]
    assert run(*args, "-m", str(tiny_wave_archive)).exit_code == 0
    record = json.loads((out / "song" / PROVENANCE_FILE).read_text())["outputs"]["vocals.wav"]
    assert record["model"] == "tiny-wave" and len(record["archive_sha256"]) == 64
    assert record["input"] == str(src.resolve()) and record["settings"]["format"] == "wav"

    again = run(*args, "-m", str(tiny_wave_archive))  # same model: done, said briefly
    assert (
        "0 separated, 1 skipped, 0 failed; kept 1 existing output file (1 done earlier with this model"
        in again.output
    )

    other = run(*args, "-m", str(identity_archive), "--report", str(tmp_path / "r.json"))
    assert other.exit_code == 0, other.output
    text = other.output.replace("\n", "")
    assert "made by model 'tiny-wave', not 'identity'" in text
    assert "1 made differently" in text
    rec = json.loads((tmp_path / "r.json").read_text())["inputs"][0]
    assert rec["status"] == "skipped" and "tiny-wave" in rec["skipped"]["vocals"]

    shifted = run(*args, "-m", str(tiny_wave_archive), "--shifts", "1")
    assert "settings differ: shifts 0 -> 1" in shifted.output.replace("\n", "")

    # a setting added by a newer sepcli (absent from the record) is no difference
    provenance = out / "song" / PROVENANCE_FILE
    data = json.loads(provenance.read_text())
    del data["outputs"]["vocals.wav"]["settings"]["seed"]
    provenance.write_text(json.dumps(data))
    again = run(*args, "-m", str(tiny_wave_archive))
    assert "1 done earlier with this model and settings" in again.output


# ---------------------------------------------------------------- item 3: SIGTERM, leftovers


def _wait_for_temp(out: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(p.name.endswith(".tmp") for p in out.rglob(".*")):
            return
        time.sleep(0.01)
    pytest.fail("no temp file appeared while the separation ran")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_exit_128_plus_n_and_leave_no_temp_file(
    tmp_path, tiny_wave_archive, sig, code
):
    src = write_wav(tmp_path / "long.wav", make_tone(60.0))
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [_console_script(), "separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive),
         "--segment", "0.05", "--overlap", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_temp(out, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "terminated" in stderr
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_stale_temp_files_of_our_outputs_are_removed_on_the_next_run(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    folder = tmp_path / "o" / "song"
    folder.mkdir(parents=True)
    stale = [  # today's names, and those of versions before the "sepcli-" mark
        ".vocals.wav.sepcli-0a1b2c3d.f32.tmp",
        ".vocals.wav.sepcli-9f8e7d6c.tmp",
        ".vocals.wav.0a1b2c3d.f32.tmp",
        ".vocals.wav.9f8e7d6c.tmp",
    ]
    keep = [".vocals.wav.notes", ".other.wav.0a1b2c3d.tmp", "x.tmp"]
    for name in stale + keep:
        (folder / name).write_bytes(b"\0" * 1000)
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_wave_archive),
            "--stems", "vocals")  # fmt: skip
    assert r.exit_code == 0, r.output
    names = {p.name for p in folder.iterdir()}
    assert not names & set(stale)
    assert set(keep) <= names  # not ours (other names), never touched
    assert "removed 4 temp file(s) left by an interrupted run" in r.output.replace("\n", "")


# ---------------------------------------------------------------- item 4: own outputs


def test_recursive_rerun_never_takes_its_own_outputs_as_input(tmp_path, identity_archive):
    album = tmp_path / "album"
    for i in range(2):
        write_wav(album / f"t{i}.wav", make_tone(0.2, seed=i))
    args = ["separate", str(album), "-r", "-o", str(album / "stems"), "-m", str(identity_archive)]
    first = run(*args)
    assert first.exit_code == 0 and "2 separated" in first.output
    second = run(*args)
    assert second.exit_code == 0, second.output
    assert "0 separated, 2 skipped" in second.output
    assert sorted(p.name for p in (album / "stems").iterdir()) == ["t0", "t1"]
    # outputs written beside the inputs (another -o) are recognised by their record
    flat = ["separate", str(album), "-o", str(album), "--filename", "{track}-{stem}.{ext}",
            "-m", str(identity_archive)]  # fmt: skip
    assert run(*flat).exit_code == 0
    again = run(*flat)
    assert "not taking 4 file(s) that are sepcli outputs" in again.output.replace("\n", "")
    assert "0 separated, 2 skipped" in again.output


# ---------------------------------------------------------------- item 6: writable outputs


def _read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/proc/sepcli-cannot-write-here")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_unwritable_report_folder_is_refused_before_any_work(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    report = _read_only_folder(tmp_path) / "report.json"
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_wave_archive),
            "--report", str(report))  # fmt: skip
    assert r.exit_code == 3, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--report {report}: cannot write this file" in lines[0], lines
    assert not (tmp_path / "o").exists()  # nothing was separated


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    out = _read_only_folder(tmp_path) / "stems"
    r = run("separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive))
    assert r.exit_code == 3, r.output
    assert r.output.count("error:") == 1 and "cannot write there" in r.output


# ---------------------------------------------------------------- item 7: --segment


@pytest.mark.parametrize("value", ["100000", "0", "-1", "nan", "inf"])
def test_impossible_segment_is_one_line_usage_error(tmp_path, tiny_wave_archive, value):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_wave_archive),
            "--segment", value)  # fmt: skip
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and "segment" in r.output
    assert not (tmp_path / "o").exists()


def test_segment_bound_and_cap():
    import torch

    from sepcli.errors import ConfigError
    from sepcli.inference.chunking import StreamingOverlapAdd
    from sepcli.inference.config import MAX_SEGMENT_SECONDS, SeparatorConfig

    SeparatorConfig(segment_seconds=None)
    SeparatorConfig(segment_seconds=MAX_SEGMENT_SECONDS)
    with pytest.raises(ConfigError, match="longer than"):
        SeparatorConfig(segment_seconds=MAX_SEGMENT_SECONDS + 1)
    # a chunk longer than the track is capped at the track: the model sees 3 s, not 10
    seen = []

    def fn(batch):
        seen.append(batch.shape[-1])
        return batch[:, None]

    engine = StreamingOverlapAdd(fn, channels=1, num_sources=1, segment=441000, context=88200)
    engine.push(torch.zeros(1, 44100 * 3))
    assert engine.finish().shape[-1] == 44100 * 3 and seen == [44100 * 3]


# ---------------------------------------------------------------- item 10: exit codes


def _documented_exit_codes() -> dict[int, str]:
    text = (DOCS / "usage.md").read_text()
    table = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", table, re.M)}


def test_one_exit_code_table_referenced_from_the_other_docs():
    codes = _documented_exit_codes()
    assert set(codes) == {0, 1, 2, 3, 4, 5, 6, 7, 129, 130, 143}
    for doc in ("audio-formats.md", "evaluation.md"):
        assert "usage.md#exit-status" in (DOCS / doc).read_text(), doc
    from sepcli.errors import EXIT_CODES

    assert set(EXIT_CODES.values()) <= set(codes)


def test_exit_codes_match_the_table(tmp_path, tiny_wave_archive):
    codes = _documented_exit_codes()
    good = write_wav(tmp_path / "in" / "good.wav", make_tone(0.3))
    bad = tmp_path / "in" / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    m = str(tiny_wave_archive)
    o = str(tmp_path / "o")
    seen = {
        0: run("separate", str(good), "-o", o, "-m", m).exit_code,
        1: run("separate", str(good), str(bad), "-o", o, "-m", m).exit_code,
        2: run("separate", str(good), "-o", o, "-m", m, "--stems", "piano").exit_code,
        3: run(
            "separate", str(good), "-o", str(_read_only_folder(tmp_path) / "x"), "-m", m
        ).exit_code,
        4: run("separate", str(good), "-o", o, "-m", str(tmp_path / "none.sepcli")).exit_code,
        5: run(
            "separate",
            str(good),
            "-o",
            o,
            "-m",
            "umxhq",
            "--offline",
            "--cache-dir",
            str(tmp_path / "cache"),
        ).exit_code,  # fmt: skip
        6: run(
            "evaluate",
            "--data",
            str(tmp_path / "no-data"),
            "--model",
            m,
            "--out",
            str(tmp_path / "ev"),
        ).exit_code,  # fmt: skip
    }
    for code, got in seen.items():
        assert got == code, f"{code} ({codes[code]}): got {got}"
    # 130 and 143 are checked with real signals (tests/test_cli_separate.py, above);
    # 7 (training cannot start) in tests/test_training_*.py.


def test_empty_shard_slice_is_an_empty_job(tmp_path, identity_archive):
    album = tmp_path / "album"
    for i in range(3):
        write_wav(album / f"t{i}.wav", make_tone(0.2, seed=i))
    r = run("separate", str(album), "-o", str(tmp_path / "o"), "-m", str(identity_archive),
            "--shard", "5/5")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "shard 5/5 of 3 input(s) is empty" in r.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- item 11: --shard help


def test_shard_help_example_is_one_based():
    r = run("separate", "--help")
    assert "$((SLURM_ARRAY_TASK_ID+1))/16" in r.output
    assert "$SLURM_ARRAY_TASK_ID/16" not in r.output


# ---------------------------------------------------------------- item 12: same track name


def test_same_track_name_clash_suggests_a_template_that_works(tmp_path, identity_archive):
    folder = tmp_path / "in"
    write_wav(folder / "song.wav", make_tone(0.2))
    sf.write(folder / "song.flac", make_tone(0.2, seed=1).T, 44100)
    out = tmp_path / "o"
    r = run("separate", str(folder), "-o", str(out), "-m", str(identity_archive))
    assert r.exit_code == 1
    match = re.search(r"use --filename '([^']+)'", r.output.replace("\n", ""))
    assert match, r.output
    assert "{parent}" not in match.group(1)  # the old hint gave the same error again
    fixed = run("separate", str(folder), "-o", str(tmp_path / "o2"), "-m", str(identity_archive),
                "--filename", match.group(1))  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert sorted(p.parent.name for p in (tmp_path / "o2").rglob("vocals.wav")) == [
        "song-flac",
        "song-wav",
    ]


# ---------------------------------------------------------------- item 14: model hints


def test_models_list_and_info_show_the_defaults_sources_and_licence():
    listed = run("models", "list", "--json")
    default = next(m for m in json.loads(listed.output) if m["name"] == "default")
    assert default["sources"] == ["vocals"]
    assert "non-commercial" in default["licence"]
    info = run("models", "info", "default")
    assert "vocals" in info.output and "non-commercial" in info.output
    table = run("models", "list").output.splitlines()  # one line each at 80 columns
    row = next(line for line in table if line.split("│")[0].strip() == "default")
    assert "vocals" in row and "research only" in row


def test_unknown_stems_name_the_models_that_have_them(tmp_path):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "--stems", "vocals,drums,bass,other")
    assert r.exit_code == 2
    text = r.output.replace("\n", "")
    assert "umxhq" in text and "-m NAME" in text


# ---------------------------------------------------------------- item 16: stderr


def test_stderr_does_not_start_with_an_empty_line(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    proc = subprocess.run(
        [_console_script(), "separate", str(src), "-o", str(tmp_path / "o"),
         "-m", str(tiny_wave_archive)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr and not proc.stderr.startswith("\n"), repr(proc.stderr[:80])


def test_gitignore_covers_the_default_output_folder():
    ignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/separated/" in ignore or "separated/" in ignore


# ---------------------------------------------------------------- faults


def test_full_disk_leaves_no_partial_output_and_no_record(tmp_path, tiny_wave_archive, monkeypatch):
    import sepcli.audio.encode as encode

    def full(fh, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(encode, "_write_bytes", full)
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    out = tmp_path / "o"
    r = run("separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive))
    assert r.exit_code == 1
    assert r.output.count("error:") == 1 and "disk full" in r.output
    assert not out.exists() or [p for p in out.rglob("*")] == []  # not even empty folders


def test_partial_outputs_are_completed_not_redone(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    out = tmp_path / "o"
    args = ["separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive)]
    assert run(*args, "--stems", "vocals").exit_code == 0
    vocals = out / "song" / "vocals.wav"
    before = vocals.stat().st_mtime_ns
    r = run(*args, "--stems", "vocals,accompaniment")
    assert r.exit_code == 0 and "1 separated" in r.output
    assert vocals.stat().st_mtime_ns == before
    records = json.loads((out / "song" / PROVENANCE_FILE).read_text())["outputs"]
    assert sorted(records) == ["accompaniment.wav", "vocals.wav"]


def test_concurrent_runs_on_one_folder_write_each_file_once(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(20.0))
    out = tmp_path / "o"
    cmd = [_console_script(), "separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive),
           "--segment", "0.1"]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    summaries = sorted(e.strip().splitlines()[-1] for _, e in results)
    assert summaries[0].startswith(
        "0 separated, 1 skipped, 0 failed; kept 2 existing output files (2 done earlier"
    ), summaries
    assert summaries[1] == "1 separated, 0 skipped, 0 failed", summaries
    assert sorted(p.name for p in (out / "song").iterdir()) == [
        PROVENANCE_FILE,
        "accompaniment.wav",
        "vocals.wav",
    ]


def test_too_little_free_space_is_said_up_front(tmp_path, tiny_wave_archive, monkeypatch):
    import shutil as shutil_module

    import sepcli.cli.outputs as outputs

    # 2 stems x 2 s stereo staged as f32 (1.41 MB) + one float WAV stem (0.71 MB)
    src = write_wav(tmp_path / "song.wav", make_tone(2.0))
    real = shutil_module.disk_usage

    def tiny(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1_000_000, 1_000_000)

    monkeypatch.setattr(outputs.shutil, "disk_usage", tiny)
    out = tmp_path / "o"
    r = run("separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive))
    assert r.exit_code == 1
    text = r.output.replace("\n", " ")
    assert r.output.count("error:") == 1 and "needs at least 2.1 MB free" in text, r.output
    assert "only 1.0 MB free" in text
    assert not out.exists() or list(out.rglob("*")) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_real_full_disk(tmp_path, tiny_wave_archive, tiny_disk, monkeypatch):
    src = write_wav(tmp_path / "song.wav", make_tone(3.0), subtype="PCM_16")  # 0.5 MB
    args = ["separate", str(src), "-o", str(tiny_disk), "-m", str(tiny_wave_archive)]
    r = run(*args)  # refused up front: 2 stems x 3 s staged as float need 2.1 MB
    assert r.exit_code == 1 and "needs at least" in r.output and "only 1.0 MB free" in r.output
    assert list(tiny_disk.rglob("*")) == []

    import sepcli.cli.outputs as outputs

    monkeypatch.setattr(outputs, "check_free_space", lambda *a, **k: None)
    r = run(*args)  # without the check, the writer meets ENOSPC itself
    assert r.exit_code == 1 and r.output.count("error:") == 1 and "disk full" in r.output
    assert list(tiny_disk.rglob("*")) == []  # no temp file, no partial stem, no empty folder


def test_output_locks_wait_for_each_other_and_leave_no_file(tmp_path):
    """Two holders of one output's lock (filelock, as on Windows too): the second
    waits (on_wait said once) until the first releases; no lock file is left."""
    import threading

    from sepcli.cli.outputs import locked_outputs

    target = tmp_path / "o" / "song" / "vocals.wav"
    waits: list[Path] = []
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.wait(10)
        with locked_outputs([target], on_wait=waits.append):
            order.append("second")

    thread = threading.Thread(target=second)
    with locked_outputs([target]):
        lock = target.parent / ".vocals.wav.sepcli-lock"
        assert lock.is_file()
        thread.start()
        entered.set()
        deadline = time.time() + 10
        while not waits and time.time() < deadline:
            time.sleep(0.01)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"] and waits == [lock]
    assert not lock.exists()
    assert not target.parent.exists() or list(target.parent.iterdir()) == []
