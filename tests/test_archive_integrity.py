"""A damaged archive is refused at load time (zip member CRCs), exit code 4 in the CLI."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tone, write_wav

from sepcli.cli import main
from sepcli.errors import ArchiveError
from sepcli.models.archive import load_archive

DEFAULT = Path(__file__).resolve().parents[1] / "sepcli" / "assets" / "default.sepcli"


def _flip_bytes(src: Path, dst: Path, count: int = 64) -> Path:
    """Copy ``src`` to ``dst`` with ``count`` bytes inverted in the middle of the
    largest stored member (weights, so the model still loads and runs)."""
    shutil.copyfile(src, dst)
    with zipfile.ZipFile(dst) as zf:
        member = max(zf.infolist(), key=lambda i: i.file_size)
        assert member.compress_type == zipfile.ZIP_STORED
    data = bytearray(dst.read_bytes())
    # the member's bytes follow its local header (30 bytes + name + extra field)
    name_len = int.from_bytes(data[member.header_offset + 26 : member.header_offset + 28], "little")
    extra_len = int.from_bytes(
        data[member.header_offset + 28 : member.header_offset + 30], "little"
    )
    start = member.header_offset + 30 + name_len + extra_len + member.file_size // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_archive_with_64_flipped_bytes_is_refused(tmp_path):
    broken = _flip_bytes(DEFAULT, tmp_path / "broken.sepcli")
    with pytest.raises(ArchiveError, match="damaged"):
        load_archive(broken)
    load_archive(DEFAULT)  # the clean copy still loads


def test_cli_refuses_a_damaged_archive_with_exit_4(tmp_path):
    broken = _flip_bytes(DEFAULT, tmp_path / "broken.sepcli")
    src = write_wav(tmp_path / "song.wav", make_tone(0.3))
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["separate", str(src), "-o", str(out), "-m", str(broken)])
    assert r.exit_code == 4, r.output
    assert "broken.sepcli" in r.output and "Traceback" not in r.output
    assert not out.exists() or not any(out.rglob("*"))
