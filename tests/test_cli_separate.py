"""`sepcli separate` in-process (CliRunner) and as the installed console script."""

from __future__ import annotations

import json
import os
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


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def _files(folder: Path) -> list[str]:
    """Files under ``folder``, less the provenance files (.sepcli-run.json) beside stems."""
    return (
        sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and p.name != ".sepcli-run.json"
        )
        if folder.exists()
        else []
    )


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_separates_a_file(tmp_path, tiny_wave_archive):
    # 16-bit in, 16-bit out (--bit-depth auto follows the input: tests/test_cli_encoding.py)
    src = write_wav(tmp_path / "My Song.wav", make_tone(1.0), subtype="PCM_16")
    out = tmp_path / "stems"
    r = run(
        "separate",
        str(src),
        "-o",
        str(out),
        "-m",
        str(tiny_wave_archive),
        "--stems",
        "vocals,accompaniment",
    )
    assert r.exit_code == 0, r.output
    assert _files(out) == ["My Song/accompaniment.wav", "My Song/vocals.wav"]
    info = sf.info(str(out / "My Song" / "vocals.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        44100,
        2,
        44100,
        "PCM_16",
    )


def test_formats_template_and_bit_depth(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "a.wav", make_tone(0.5))
    out = tmp_path / "o"
    r = run(
        "separate",
        str(src),
        "-o",
        str(out),
        "-m",
        str(tiny_wave_archive),
        "--format",
        "flac",
        "--bit-depth",
        "24",
        "--filename",
        "{model}/{track}-{stem}.{ext}",
    )
    assert r.exit_code == 0, r.output
    assert _files(out) == ["tiny-wave/a-accompaniment.flac", "tiny-wave/a-vocals.flac"]
    assert sf.info(str(out / "tiny-wave" / "a-vocals.flac")).subtype == "PCM_24"


def test_batch_folder_skip_force_report_and_one_failure(tmp_path, tiny_wave_archive):
    album = tmp_path / "album"
    for i in range(3):
        write_wav(album / f"t{i}.wav", make_tone(0.4, seed=i))
    (album / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (album / "notes.txt").write_text("not audio")
    out, report = tmp_path / "out", tmp_path / "report.json"
    args = [
        "separate",
        str(album),
        "-o",
        str(out),
        "-m",
        str(tiny_wave_archive),
        "--stems",
        "vocals",
        "--report",
        str(report),
    ]
    r = run(*args)
    assert r.exit_code == 1
    assert len(error_lines(r)) == 1 and "broken.wav" in error_lines(r)[0]
    assert _files(out) == [f"t{i}/vocals.wav" for i in range(3)]
    records = json.loads(report.read_text())["inputs"]
    assert [rec["status"] for rec in records] == ["failed", "ok", "ok", "ok"]
    assert {"outputs", "duration", "seconds", "model", "device"} <= set(records[1])
    before = (out / "t0" / "vocals.wav").stat().st_mtime_ns
    r = run(*args)
    assert [rec["status"] for rec in json.loads(report.read_text())["inputs"]][1:] == [
        "skipped"
    ] * 3
    assert (out / "t0" / "vocals.wav").stat().st_mtime_ns == before
    r = run(*args, "--force")
    assert [rec["status"] for rec in json.loads(report.read_text())["inputs"]][1:] == ["ok"] * 3


def test_an_interrupted_batch_writes_the_report_of_what_it_did(
    tmp_path, tiny_wave_archive, monkeypatch
):
    from sepcli.inference.separator import Separator

    album = tmp_path / "album"
    for i in range(3):
        write_wav(album / f"t{i}.wav", make_tone(0.2, seed=i))
    real = Separator.separate_file

    def interrupted(self, path, outputs, **kw):
        if Path(path).name == "t1.wav":
            raise KeyboardInterrupt
        return real(self, path, outputs, **kw)

    monkeypatch.setattr(Separator, "separate_file", interrupted)
    report = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["separate", str(album), "-o", str(tmp_path / "out"), "-m",
                                  str(tiny_wave_archive), "--report", str(report)])  # fmt: skip
    assert r.exit_code == 130
    records = json.loads(report.read_text())["inputs"]
    assert [(Path(rec["input"]).name, rec["status"]) for rec in records] == [("t0.wav", "ok")]


def test_two_identical_runs_write_identical_float_wav_bytes(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "a.wav", make_tone(0.3))
    stems = []
    for run_dir in ("one", "two"):
        out = tmp_path / run_dir
        r = run("separate", str(src), "-o", str(out), "-m", str(tiny_wave_archive),
                "--bit-depth", "32")  # fmt: skip
        assert r.exit_code == 0, r.output
        stems.append({p.name: p.read_bytes() for p in sorted((out / "a").glob("*.wav"))})
        time.sleep(1.1)  # a float WAV's PEAK chunk (if any) would carry another second
    assert len(stems[0]) == 2 and stems[0] == stems[1]


def test_recursive_and_shards_partition_the_inputs(tmp_path, identity_archive):
    lib = tmp_path / "lib"
    names = []
    for i in range(5):
        names.append(f"d{i % 2}/s{i}")
        write_wav(lib / f"d{i % 2}" / f"s{i}.wav", make_tone(0.2, seed=i))
    r = run("separate", str(lib), "-o", str(tmp_path / "flat"), "-m", str(identity_archive))
    assert r.exit_code == 1 and "no audio files" in r.output  # not recursive
    seen = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        r = run(
            "separate",
            str(lib),
            "-r",
            "-o",
            str(out),
            "-m",
            str(identity_archive),
            "--shard",
            f"{k}/3",
        )
        assert r.exit_code == 0, r.output
        seen += sorted({f.split("/")[0] for f in _files(out)})  # tracks, not their stems
    assert sorted(seen) == sorted(n.split("/")[1] for n in names)
    assert run("separate", str(lib), "--shard", "0/3").exit_code == 2


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty_dir",
        "truncated",
        "zero_length",
        "text_as_mp3",
        "unwritable",
        "unknown_stem",
        "unknown_model",
    ],
)
def test_bad_input_one_line_error_nonzero_exit_no_output(tmp_path, tiny_wave_archive, case):
    out = tmp_path / "out"
    model = str(tiny_wave_archive)
    stems = "vocals"
    src = tmp_path / "in.wav"
    if case == "missing":
        src = tmp_path / "nope.wav"
    elif case == "empty_dir":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "truncated":
        full = write_wav(tmp_path / "full.wav", make_tone(1.0), subtype="PCM_16").read_bytes()
        src.write_bytes(full[: len(full) // 2])
    elif case == "zero_length":
        src.write_bytes(b"")
    elif case == "text_as_mp3":
        src = tmp_path / "in.mp3"
        src.write_text("this is not audio\n" * 50)
    else:
        write_wav(src, make_tone(0.5))
    if case == "unwritable":
        if os.geteuid() == 0:
            out = Path("/proc/sepcli-cannot-write-here")
        else:
            out.mkdir()
            out.chmod(0o500)
    if case == "unknown_stem":
        stems = "vocals,piano"
    if case == "unknown_model":
        model = "no-such-model-xyz"
    r = run("separate", str(src), "-o", str(out), "-m", model, "--stems", stems)
    assert r.exit_code != 0
    errors = error_lines(r)
    assert len(errors) == 1, r.output
    expected_name = {
        "unknown_stem": "piano",
        "unknown_model": "no-such-model-xyz",
        "unwritable": str(out),
    }.get(case, src.name)
    assert expected_name in errors[0]
    assert "Traceback" not in r.output
    if case != "unwritable":
        assert _files(out) == []


def test_silent_input_gives_silent_stems(tmp_path, tiny_mask_archive):
    src = write_wav(tmp_path / "silence.wav", np.zeros((2, 22050), np.float32))
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_mask_archive))
    assert r.exit_code == 0, r.output
    for stem in ("drums", "bass", "other", "vocals"):
        data, _ = sf.read(str(tmp_path / "o" / "silence" / f"{stem}.wav"))
        assert np.isfinite(data).all() and np.abs(data).max() == 0


def _console_script() -> str:
    script = Path(sys.executable).parent / "sepcli"
    if not script.exists():
        pytest.skip("sepcli console script not installed in this environment (pip install -e .)")
    return str(script)


def test_installed_console_script_end_to_end(tmp_path, tiny_wave_archive):
    src = write_wav(tmp_path / "song.wav", make_tone(0.8, 48000, 1), 48000)
    out = tmp_path / "o"
    proc = subprocess.run(
        [
            _console_script(),
            "separate",
            str(src),
            "-o",
            str(out),
            "-m",
            str(tiny_wave_archive),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    info = sf.info(str(out / "song" / "vocals.wav"))
    assert (info.samplerate, info.channels, info.frames) == (48000, 1, 38400)
    proc = subprocess.run(
        [sys.executable, "-m", "sepcli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "separate" in proc.stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_batch_exits_130_and_leaves_no_partial_file(tmp_path, tiny_wave_archive):
    """A real SIGINT to the console script while it works on a long batch."""
    album = tmp_path / "album"
    for i in range(4):
        write_wav(album / f"t{i}.wav", make_tone(20.0, seed=i))  # long enough to be interrupted
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            _console_script(),
            "separate",
            str(album),
            "-o",
            str(out),
            "-m",
            str(tiny_wave_archive),
            "--segment",
            "0.05",
            "--overlap",
            "0.75",
            "--format",
            "flac",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a background job (`pytest &`) inherits SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: give the child the default disposition
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (
        out.exists() and any(p.name.endswith(".tmp") for p in out.rglob(".*"))
    ):
        time.sleep(0.01)  # until a track is being written
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name != ".sepcli-run.json"]
    for p in leftovers:  # only complete outputs of finished tracks remain
        assert not p.name.startswith(".") and p.suffix == ".flac"
        sf.read(str(p))
    finished = {p.parent.name for p in leftovers}
    for track in finished:
        assert sorted(q.name for q in (out / track).iterdir()) == [
            "accompaniment.flac",
            "vocals.flac",
        ]


def test_help_lists_every_documented_option():
    r = run("separate", "--help")
    for option in (
        "--stems",
        "--model",
        "--device",
        "--cuda",
        "--segment",
        "--overlap",
        "--shifts",
        "--format",
        "--bit-depth",
        "--clip",
        "--filename",
        "--recursive",
        "--force",
        "--threads",
        "--shard",
        "--report",
        "--quiet",
        "--phase",
    ):
        assert option in r.output


def test_quiet_logging_configures_sepcli_and_leaves_the_root_logger(tmp_path, identity_archive):
    import logging

    from sepcli.cli.common import setup_logging

    root, ours = logging.getLogger(), logging.getLogger("sepcli")
    root_before = (root.level, list(root.handlers))
    ours_before = (ours.level, list(ours.handlers))
    try:
        src = write_wav(tmp_path / "song.wav", make_tone(0.2))
        r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(identity_archive), "-q")
        assert r.exit_code == 0, r.output
        assert (
            root.level,
            list(root.handlers),
        ) == root_before  # the process's logging is untouched
        assert ours.level == logging.ERROR
        setup_logging(quiet=True)
        setup_logging(verbose=True)
        added = [h for h in ours.handlers if h not in ours_before[1]]
        assert len(added) == 1 and ours.level == logging.DEBUG  # one handler, replaced per call
        assert (root.level, list(root.handlers)) == root_before
    finally:
        for handler in [h for h in ours.handlers if h not in ours_before[1]]:
            ours.removeHandler(handler)
        ours.setLevel(ours_before[0])
