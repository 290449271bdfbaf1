"""Decode-ahead and write-behind threads (on by default when a GPU computes; forced here)."""

from __future__ import annotations

import threading
import time

import pytest
import soundfile as sf
import torch
from conftest import make_tone, write_wav

import sepcli.inference.separator as separator_module
from sepcli import audio
from sepcli.errors import AudioDecodeError, AudioEncodeError
from sepcli.inference.pipeline import Prefetch, WriteBehind
from sepcli.inference.separator import Separator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prefetch_keeps_order_and_raises_in_place():
    def items():
        yield from range(5)
        raise AudioDecodeError("truncated")

    got = []
    with Prefetch(items(), depth=2) as pre, pytest.raises(AudioDecodeError, match="truncated"):
        for x in pre:
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetch_close_stops_a_blocked_producer_and_runs_its_finally():
    cleaned = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            cleaned.set()

    pre = Prefetch(endless(), depth=1)
    it = iter(pre)
    assert [next(it), next(it)] == [0, 1]
    pre.close()
    assert not pre._thread.is_alive() and cleaned.is_set()
    pre.close()  # idempotent


def test_write_behind_in_order_and_errors():
    seen = []
    wb = WriteBehind(lambda x: (time.sleep(0.001), seen.append(x)), depth=1)
    for i in range(20):
        wb.put(i)
    wb.finish()
    assert seen == list(range(20))

    def fails(x):
        if x == 3:
            raise AudioEncodeError("disk full")

    wb = WriteBehind(fails, depth=1)
    with pytest.raises(AudioEncodeError, match="disk full"):
        for i in range(50):
            wb.put(i)
        wb.finish()
    wb.close()
    assert not wb._thread.is_alive()


def _threaded(archive, **options) -> Separator:
    sep = Separator(archive, device="cpu", segment_seconds=0.2, **options)
    sep.threads = True
    return sep


def test_threaded_separate_file_equals_unthreaded(tmp_path, tiny_wave_archive, monkeypatch):
    monkeypatch.setattr(separator_module, "BLOCK_SECONDS", 0.25)  # several blocks
    src = write_wav(tmp_path / "song.wav", make_tone(1.7))
    outs = {}
    for threads in (False, True):
        sep = Separator(tiny_wave_archive, device="cpu", segment_seconds=0.2)
        sep.threads = threads
        out = {s: tmp_path / f"t{threads}" / f"{s}.wav" for s in ("vocals", "accompaniment")}
        sep.separate_file(src, out)
        outs[threads] = {s: sf.read(str(p))[0] for s, p in out.items()}
    for stem in outs[False]:
        assert (outs[False][stem] == outs[True][stem]).all()
    assert not [t for t in threading.enumerate() if t.name.startswith("sepcli-")]


def test_threaded_interrupt_leaves_nothing(tmp_path, tiny_wave_archive, monkeypatch):
    monkeypatch.setattr(separator_module, "BLOCK_SECONDS", 0.25)
    src = write_wav(tmp_path / "song.wav", make_tone(1.5))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "vocals.wav"
    existing.write_bytes(b"keep me")
    calls = {"n": 0}

    def interrupt(event):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _threaded(tiny_wave_archive).separate_file(
            src, {"vocals": existing, "accompaniment": out_dir / "acc.wav"}, on_progress=interrupt
        )
    assert sorted(p.name for p in out_dir.iterdir()) == ["vocals.wav"]
    assert existing.read_bytes() == b"keep me"
    assert not [t for t in threading.enumerate() if t.name.startswith("sepcli-")]


def test_threaded_write_failure_leaves_nothing(tmp_path, tiny_wave_archive, monkeypatch):
    monkeypatch.setattr(separator_module, "BLOCK_SECONDS", 0.25)
    src = write_wav(tmp_path / "song.wav", make_tone(1.5))
    real_write = audio.AudioWriter.write
    calls = {"n": 0}

    def flaky(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            self.abort()
            raise AudioEncodeError(f"{self.path}: cannot write (disk full)")
        return real_write(self, block)

    monkeypatch.setattr(audio.AudioWriter, "write", flaky)
    out_dir = tmp_path / "out"
    with pytest.raises(AudioEncodeError, match="disk full"):
        _threaded(tiny_wave_archive).separate_file(
            src, {"vocals": out_dir / "v.wav", "accompaniment": out_dir / "a.wav"}
        )
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_threaded_decode_failure_leaves_nothing(tmp_path, tiny_wave_archive):
    src = tmp_path / "broken.wav"
    src.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    out_dir = tmp_path / "out"
    with pytest.raises(AudioDecodeError):
        _threaded(tiny_wave_archive).separate_file(src, {"vocals": out_dir / "v.wav"})
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_threads_on_only_off_the_cpu(tiny_wave_archive):
    assert Separator(tiny_wave_archive, device="cpu").threads is False
    assert torch.get_num_threads() >= 1
