"""`sepcli separate` encoding options (issue 17): output bit depth follows the input,
--mp3-bitrate / --mp3-vbr, --allow-truncated, and no decoder noise on the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import make_tone, write_wav

from sepcli.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("suffix", "subtype", "expected"),
    [
        (".wav", "PCM_24", "PCM_24"),
        (".wav", "PCM_16", "PCM_16"),
        (".wav", "FLOAT", "FLOAT"),
        (".flac", "PCM_24", "PCM_24"),
        (".mp3", "MPEG_LAYER_III", "PCM_16"),  # lossy input: 16-bit
    ],
)
def test_output_bit_depth_follows_the_input(tmp_path, identity_archive, suffix, subtype, expected):
    src = tmp_path / f"in{suffix}"
    sf.write(src, make_tone(0.5).T, 96000 if suffix == ".wav" else 44100, subtype=subtype)
    out = tmp_path / "o"
    r = run("separate", str(src), "-o", str(out), "-m", str(identity_archive))
    assert r.exit_code == 0, r.output
    assert sf.info(str(out / "in" / "vocals.wav")).subtype == expected


def test_explicit_bit_depth_wins_and_flac_output_holds_at_most_24(tmp_path, identity_archive):
    src = write_wav(tmp_path / "in.wav", make_tone(0.3), subtype="PCM_24")
    out = tmp_path / "o"
    assert run("separate", str(src), "-o", str(out), "-m", str(identity_archive),
               "--bit-depth", "16").exit_code == 0  # fmt: skip
    assert sf.info(str(out / "in" / "vocals.wav")).subtype == "PCM_16"
    flt = write_wav(tmp_path / "f.wav", make_tone(0.3), subtype="FLOAT")
    assert run("separate", str(flt), "-o", str(out), "-m", str(identity_archive),
               "--format", "flac").exit_code == 0  # fmt: skip
    assert sf.info(str(out / "f" / "vocals.flac")).subtype == "PCM_24"


def _kbps(path: Path) -> float:
    info = sf.info(str(path))
    return path.stat().st_size * 8 / info.duration / 1000


def test_mp3_bitrate_and_vbr_quality(tmp_path, identity_archive):
    src = write_wav(tmp_path / "in.wav", make_tone(4.0))
    sizes = {}
    for name, extra in {
        "cbr96": ["--mp3-bitrate", "96"],
        "cbr320": ["--mp3-bitrate", "320"],
        "v0": ["--mp3-vbr", "0"],
        "v9": ["--mp3-vbr", "9"],
    }.items():
        out = tmp_path / name
        r = run("separate", str(src), "-o", str(out), "-m", str(identity_archive),
                "--format", "mp3", *extra)  # fmt: skip
        assert r.exit_code == 0, r.output
        sizes[name] = _kbps(out / "in" / "vocals.mp3")
    assert 90 <= sizes["cbr96"] <= 102, sizes  # constant: the rate asked for
    assert 300 <= sizes["cbr320"] <= 330, sizes
    assert sizes["v9"] < sizes["v0"] * 0.6, sizes


@pytest.mark.parametrize(
    "args",
    [
        ["--mp3-bitrate", "128", "--mp3-vbr", "2", "--format", "mp3"],
        ["--mp3-bitrate", "128"],  # wav output
        ["--mp3-bitrate", "100", "--format", "mp3"],  # not an MP3 bitrate
    ],
)
def test_mp3_options_that_cannot_work(tmp_path, identity_archive, args):
    src = write_wav(tmp_path / "in.wav", make_tone(0.3))
    r = run("separate", str(src), "-o", str(tmp_path / "o"), "-m", str(identity_archive), *args)
    assert r.exit_code != 0 and r.output.count("error:") == 1, r.output
    assert not list((tmp_path / "o").rglob("*.mp3")) if (tmp_path / "o").exists() else True


def _truncated_mp3(tmp_path: Path, seconds: float = 20.0, cut: float = 0.015) -> Path:
    full = tmp_path / "full.mp3"
    sf.write(full, make_tone(seconds).T, 44100, format="MP3", subtype="MPEG_LAYER_III")
    data = full.read_bytes()
    cut_mp3 = tmp_path / "cut.mp3"
    cut_mp3.write_bytes(data[: int(len(data) * (1 - cut))])
    return cut_mp3


def test_truncated_mp3_refused_by_default_separated_with_allow_truncated(
    tmp_path, identity_archive
):
    src = _truncated_mp3(tmp_path)
    out = tmp_path / "o"
    r = run("separate", str(src), "-o", str(out), "-m", str(identity_archive))
    assert r.exit_code == 1 and "--allow-truncated" in r.output
    r = run("separate", str(src), "-o", str(out), "-m", str(identity_archive), "--allow-truncated",
            "--report", str(tmp_path / "r.json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    text = r.output.replace("\n", " ")
    assert "truncated: separated the" in text and "are missing" in text
    frames = sf.info(str(out / "cut" / "vocals.wav")).frames
    assert 19.0 * 44100 < frames < 20.0 * 44100


def test_decoder_warnings_stay_off_the_terminal(tmp_path, identity_archive):
    src = _truncated_mp3(tmp_path)
    script = Path(sys.executable).parent / "sepcli"
    if not script.exists():
        pytest.skip("sepcli console script not installed (pip install -e .)")
    cmd = [str(script), "separate", str(src), "-o", str(tmp_path / "o"), "-m",
           str(identity_archive)]  # fmt: skip
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "Xing" not in refused.stderr, refused.stderr
    proc = subprocess.run([*cmd, "--allow-truncated"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Xing" not in proc.stderr and "Warning:" not in proc.stderr, proc.stderr
    assert np.isfinite(sf.read(str(tmp_path / "o" / "cut" / "vocals.wav"))[0]).all()
