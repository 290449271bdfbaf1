"""Live separation: the latency dial, pipes end to end, the real-time engine.

Tests that run the ``sepcli`` command in a subprocess are marked ``slow`` (a
torch import each); CI runs them (``-m ''``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import make_tone, write_wav

from sepcli.audio import ffmpeg_available
from sepcli.audio.stream import PcmFormat
from sepcli.errors import UsageError
from sepcli.inference import live
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.separator import Separator
from sepcli.models.archive import load_archive

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 44100
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _sepcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sepcli", *args]


def _wav_bytes(x: np.ndarray, subtype: str = "FLOAT") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x.T, RATE, format="WAV", subtype=subtype)
    return buf.getvalue()


def _read_wav(data: bytes) -> np.ndarray:
    """A streaming WAV (sizes 0xFFFFFFFF) -> (C, n) float32, via sepcli's reader."""
    from sepcli.audio.stream import open_stream

    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, data), os.close(w)), daemon=True).start()
    with open_stream(r) as reader:
        return np.concatenate(list(reader.blocks(1 << 16)), axis=1)


# -- the latency dial -------------------------------------------------------------
def test_plan_for_latency(tiny_mask_archive):
    meta = load_archive(tiny_mask_archive).metadata
    config = SeparatorConfig()
    assert live.plan_for_latency(meta, config, None).offline
    assert live.plan_for_latency(meta, config, 100.0).offline  # covers the model's own plan
    plan = live.plan_for_latency(meta, config, 0.4)
    assert not plan.offline
    assert plan.segment_seconds + plan.context_seconds <= 0.75 * 0.4 + 1e-9
    assert plan.context_seconds >= 512 / RATE  # one STFT window at least
    with pytest.raises(UsageError, match="too short"):
        live.plan_for_latency(meta, config, 0.02)


def test_algorithmic_latency_matches_the_plan(tiny_mask_archive):
    meta = load_archive(tiny_mask_archive).metadata
    plan = live.plan_for_latency(meta, SeparatorConfig(), 0.4)
    sep = Separator(tiny_mask_archive, plan.config, device="cpu")
    block = 1024
    alg = live.algorithmic_latency(sep, ["vocals"], RATE, 2, block)
    chunk = int(round(plan.segment_seconds * RATE)) + int(round(plan.context_seconds * RATE))
    assert chunk <= alg <= chunk + block


def test_streamed_equals_offline_with_the_same_plan(tiny_mask_archive):
    """Small live blocks give exactly the stems of a whole-track run with the same plan."""
    meta = load_archive(tiny_mask_archive).metadata
    plan = live.plan_for_latency(meta, SeparatorConfig(), 0.3)
    sep = Separator(tiny_mask_archive, plan.config, device="cpu")
    x = make_tone(2.0)
    offline = sep.separate(x, RATE, ["vocals", "accompaniment"])
    got: dict[str, list[np.ndarray]] = {"vocals": [], "accompaniment": []}
    stats = live.run_pipe(
        sep,
        (x[:, i : i + 333] for i in range(0, x.shape[1], 333)),
        RATE,
        2,
        ["vocals", "accompaniment"],
        lambda piece: [got[k].append(v) for k, v in piece.items()],
    )
    assert stats.frames == x.shape[1]
    for stem, parts in got.items():
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), offline[stem].numpy())


# -- the real-time engine (an in-process stream in place of a sound card) -----------
class _ClockedStream:
    """What PortAudio does with a duplex stream: every ``block`` frames of real time,
    one callback that hands in input and takes output."""

    def __init__(self, engine: live.LiveEngine, x: np.ndarray, block: int, extra: int) -> None:
        self.engine, self.x, self.block, self.extra = engine, x, block, extra
        self.out: list[np.ndarray] = []
        self.late: list[float] = []

    def run(self) -> np.ndarray:
        start = time.monotonic()
        n = 0
        total = self.x.shape[1] + self.extra
        while n < total:
            piece = self.x[:, n : n + self.block]
            if piece.shape[1]:
                self.engine.push(piece)
            elif not self.engine._in_closed:
                self.engine.close_input()
            self.out.append(self.engine.pull(self.block))
            n += self.block
            wait = start + n / RATE - time.monotonic()
            self.late.append(-wait)
            if wait > 0:
                time.sleep(wait)
        return np.concatenate(self.out, axis=1)


def test_live_engine_plays_offline_stems_a_fixed_delay_behind(tiny_wave_archive):
    meta = load_archive(tiny_wave_archive).metadata
    plan = live.plan_for_latency(meta, SeparatorConfig(), 0.5)
    sep = Separator(tiny_wave_archive, plan.config, device="cpu")
    block = 1024
    delay = live.algorithmic_latency(sep, None, RATE, 2, block) + int(0.2 * RATE)
    engine = live.LiveEngine(
        sep, ["vocals", "accompaniment"], RATE, 2, delay,
        gains={"vocals": 0.25, "accompaniment": 1.0}, block_frames=block,
    )  # fmt: skip
    x = make_tone(2.0)
    engine.start()
    y = _ClockedStream(engine, x, block, delay + block).run()
    engine.join(10)
    ref = sep.separate(x, RATE, ["vocals", "accompaniment"])
    want = 0.25 * ref["vocals"].numpy() + ref["accompaniment"].numpy()
    np.testing.assert_allclose(y[:, delay : delay + x.shape[1]], want, atol=1e-6)
    assert not y[:, :delay].any()  # silence until the delay has passed
    assert engine.stats.underruns == 0 and engine.stats.overruns == 0


def test_live_engine_counts_underruns_and_keeps_its_delay(tiny_wave_archive):
    """A model slower than real time: underruns are counted, input is dropped at a
    bounded queue (overruns), and nothing accumulates beyond the bounds."""
    sep = Separator(tiny_wave_archive, device="cpu")
    unit = sep.units[0]

    def slow_make_fn(generator, base=unit.make_fn):
        fn = base(generator)

        def slow(batch):
            time.sleep(0.05 * batch.shape[-1] / RATE * 10)  # 50 % slower than real time
            return fn(batch)

        return slow

    import dataclasses

    sep.units = [dataclasses.replace(unit, make_fn=slow_make_fn)]
    plan_sep = sep
    block = 2048
    delay = int(0.3 * RATE)
    engine = live.LiveEngine(
        plan_sep, ["vocals"], RATE, 2, delay, block_frames=block, queue_frames=4 * block
    )
    x = make_tone(2.0)
    engine.start()
    _ClockedStream(engine, x, block, delay).run()
    engine.close_input()
    engine.join(30)
    st = engine.stats
    assert st.underruns > 0
    assert st.overruns > 0 and st.dropped_frames == st.overruns * block
    assert engine._in.qsize() <= engine._in.maxsize
    assert (
        len(engine._ready) == 0 or engine._ready_upto - engine._ready[0][0] <= delay + RATE + RATE
    )


# -- pipes, end to end ----------------------------------------------------------------
@pytest.mark.slow
def test_pipe_equals_offline_run(tiny_mask_archive, tmp_path):
    """`separate - -o -` (the model's own plan) is bit-equal to `separate FILE`."""
    x = make_tone(1.5)
    wav = write_wav(tmp_path / "in.wav", x)
    done = subprocess.run(
        _sepcli("separate", "-", "-o", "-", "-m", str(tiny_mask_archive), "--stems",
                "accompaniment", "--bit-depth", "32", "-q"),
        input=wav.read_bytes(), capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    streamed = _read_wav(done.stdout)
    subprocess.run(
        _sepcli("separate", str(wav), "-o", str(tmp_path / "off"), "-m", str(tiny_mask_archive),
                "--stems", "accompaniment", "--bit-depth", "32", "-q"),
        check=True, env=_env(), timeout=300,
    )  # fmt: skip
    offline, _ = sf.read(tmp_path / "off" / "in" / "accompaniment.wav", dtype="float32")
    np.testing.assert_array_equal(streamed, offline.T)


@pytest.mark.slow
def test_pipe_mix_raw_and_per_stem_fifos(tiny_mask_archive, tmp_path):
    x = make_tone(1.0)
    fmt = PcmFormat("s16le", RATE, 2)
    fifos = {s: tmp_path / f"{s}.fifo" for s in ("vocals", "drums")}
    for f in fifos.values():
        os.mkfifo(f)
    got: dict[str, bytes] = {}

    def drain(stem: str) -> None:
        with open(fifos[stem], "rb") as fh:
            got[stem] = fh.read()

    readers = [threading.Thread(target=drain, args=(s,)) for s in fifos]
    for t in readers:
        t.start()
    per_stem = subprocess.run(
        _sepcli("separate", "-", "-o", str(tmp_path / "{stem}.fifo"), "-m", str(tiny_mask_archive),
                "--stems", "vocals,drums", "--raw-format", "s16le", "--raw-rate", "44100",
                "--raw-channels", "2", "--format", "raw", "--bit-depth", "32", "-q"),
        input=fmt.encode(x), capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    for t in readers:
        t.join(60)
    assert per_stem.returncode == 0, per_stem.stderr.decode()
    stems = {s: PcmFormat("f32le", RATE, 2).decode(b) for s, b in got.items()}
    mixed = subprocess.run(
        _sepcli("separate", "-", "-o", "-", "-m", str(tiny_mask_archive), "--raw-format", "s16le",
                "--raw-rate", "44100", "--raw-channels", "2", "--format", "raw", "--bit-depth",
                "32", "--mix", "vocals=0.2,drums=1", "-q"),
        input=fmt.encode(x), capture_output=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert mixed.returncode == 0, mixed.stderr.decode()
    y = PcmFormat("f32le", RATE, 2).decode(mixed.stdout)
    assert y.shape == x.shape  # end of input flushed the tail: every sample is there
    np.testing.assert_allclose(y, 0.2 * stems["vocals"] + stems["drums"], atol=1e-6)


@pytest.mark.slow
def test_pipe_broken_pipe_ends_quietly(tiny_mask_archive):
    proc = subprocess.Popen(
        _sepcli("separate", "-", "-o", "-", "-m", str(tiny_mask_archive), "--stems", "vocals"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    feeder = threading.Thread(
        target=lambda: _ignore_epipe(proc.stdin, _wav_bytes(make_tone(3.0))), daemon=True
    )
    feeder.start()
    head = proc.stdout.read(1000)
    proc.stdout.close()  # the reader goes away, as `| head -c 1000` does
    _, err = proc.communicate(timeout=300)
    assert len(head) == 1000
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Error" not in err


def _ignore_epipe(fh, data: bytes) -> None:
    try:
        fh.write(data)
        fh.close()
    except (BrokenPipeError, OSError):
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("mid-frame", "stopped mid-frame"),
        ("rate-change", "changes from 44100 Hz"),
        ("garbage", "not audio"),
        ("empty", "empty"),
    ],
)
def test_pipe_bad_input_is_one_line(tiny_mask_archive, tmp_path, case, message):
    x = make_tone(0.5)
    if case == "mid-frame":
        import io

        from sepcli.audio.stream import StreamWriter

        buf = io.BytesIO()
        StreamWriter(buf, PcmFormat("f32le", RATE, 2)).write(x)
        data = buf.getvalue() + b"\x00" * 5
    elif case == "rate-change":
        data = _wav_bytes(x) + _wav_bytes(x).replace(
            (RATE).to_bytes(4, "little"), (48000).to_bytes(4, "little"), 1
        )
    elif case == "garbage":
        if not ffmpeg_available():
            pytest.skip("needs ffmpeg")
        data = np.random.default_rng(3).integers(0, 256, 30000, dtype=np.uint8).tobytes()
    else:
        data = b""
    out = tmp_path / "out.wav"
    done = subprocess.run(
        _sepcli("separate", "-", "-o", str(out), "-m", str(tiny_mask_archive), "--stems", "vocals"),
        input=data, capture_output=True, env=_env(), timeout=300, cwd=tmp_path,
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 3, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing left behind


@pytest.mark.slow
@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
def test_pipe_in_real_time_stays_within_the_reported_latency(tiny_mask_archive):
    """ffmpeg -re plays a 3-s tone in real time into `separate - -o - --latency 0.5`.

    Each output block arrives within the latency sepcli reported (plus 0.2 s of
    scheduling slack on a shared CI machine) after its first input sample, the
    output has no gap (every sample, in order, while the input still plays),
    and it equals the offline run of the same audio with the same chunk plan.
    """
    sep_proc = subprocess.Popen(
        _sepcli("separate", "-", "-o", "-", "-m", str(tiny_mask_archive), "--stems", "vocals",
                "--latency", "0.5", "--bit-depth", "32", "--threads", "1"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    assert sep_proc.stdin and sep_proc.stdout and sep_proc.stderr
    line = sep_proc.stderr.readline().decode()  # printed before any input is read
    match = re.search(r"latency ([0-9.]+) s", line)
    assert match, line
    reported = float(match.group(1))
    src = subprocess.Popen(
        [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=44100:duration=3", "-ac", "2", "-c:a", "pcm_f32le",
         "-f", "wav", "-"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert src.stdout is not None
    sent: list[tuple[int, float]] = []
    received: list[tuple[int, float]] = []
    data_in = bytearray()
    data_out = bytearray()

    def forward() -> None:
        while chunk := os.read(src.stdout.fileno(), 4096):
            sep_proc.stdin.write(chunk)
            sep_proc.stdin.flush()
            data_in.extend(chunk)
            sent.append((len(data_in), time.monotonic()))
        sep_proc.stdin.close()

    def collect() -> None:
        while chunk := os.read(sep_proc.stdout.fileno(), 1 << 16):
            data_out.extend(chunk)
            received.append((len(data_out), time.monotonic()))

    threads = [threading.Thread(target=forward), threading.Thread(target=collect)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    src.wait(30)
    rest = sep_proc.stderr.read().decode()
    assert sep_proc.wait(60) == 0, rest
    head_in = data_in.index(b"data") + 8
    head_out = data_out.index(b"data") + 8
    frame = 8

    def when(marks: list[tuple[int, float]], byte: int) -> float:
        return next(t for n, t in marks if n >= byte)

    latencies = []
    done_frames = 0
    for n, t in received:
        frames = (n - head_out) // frame
        if frames > done_frames:
            latencies.append(t - when(sent, head_in + (done_frames + 1) * frame))
            done_frames = frames
    x = _read_wav(bytes(data_in))
    y = _read_wav(bytes(data_out))
    assert y.shape == x.shape
    assert max(latencies) <= reported + 0.2, (reported, max(latencies))
    assert len(latencies) >= 4  # it streamed: outputs came while the input played
    assert received[0][1] < sent[-1][1]
    meta = load_archive(tiny_mask_archive).metadata
    plan = live.plan_for_latency(meta, SeparatorConfig(), 0.5)
    with torch.no_grad():
        offline = Separator(tiny_mask_archive, plan.config, device="cpu").separate(
            x, RATE, ["vocals"]
        )
    np.testing.assert_array_equal(y, offline["vocals"].numpy())
    assert "measured latency" in rest


# -- sepcli live ----------------------------------------------------------------------
def test_live_without_sounddevice_says_how_to_install(monkeypatch):
    from sepcli.cli import main

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    result = CliRunner().invoke(main, ["live", "--list-devices"])
    assert result.exit_code == 2
    assert "pip install 'sepcli[live]'" in result.output


def _null_device_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default { type null }\npcm.sepclinull { type null }\n")
    return home


@pytest.mark.slow
def test_live_on_an_alsa_null_device(identity_archive, tmp_path):
    """A real PortAudio backend: ALSA's null PCM (it takes samples without a clock,
    so this checks opening, callbacks, stats and a clean end, not timing)."""
    pytest.importorskip("sounddevice")
    wav = write_wav(tmp_path / "in.wav", make_tone(1.0))
    env = _env() | {"HOME": str(_null_device_home(tmp_path))}
    listed = subprocess.run(
        _sepcli("live", "--list-devices"), capture_output=True, env=env, timeout=120
    )
    if b"sepclinull" not in listed.stdout:
        pytest.skip("PortAudio has no ALSA backend here")
    done = subprocess.run(
        _sepcli("live", str(wav), "-m", str(identity_archive), "--output-device", "sepclinull",
                "--latency", "0.5", "--duration", "3"),
        capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "underrun(s)" in err and "s separated" in err


class _FakeSoundDevice:
    """The parts of the ``sounddevice`` module that ``sepcli live`` uses, with a stream
    whose callback a thread calls in real time (no sound card here). ``stop_after``
    makes the device vanish (``active`` turns false), as an unplugged one does."""

    class PortAudioError(Exception):
        pass

    def __init__(self, stop_after: float | None = None) -> None:
        self.stop_after = stop_after
        self.played: list[np.ndarray] = []

    def query_devices(self) -> str:
        return "  0 fake, Fake (0 in, 2 out)"

    def OutputStream(self, *, samplerate, channels, blocksize, dtype, device, callback):  # noqa: N802
        return _FakeStream(self, samplerate, channels, blocksize, callback)

    def Stream(self, **kwargs):  # noqa: N802
        raise self.PortAudioError("Error querying device -1")


class _FakeStream:
    latency = 0.01

    def __init__(self, sd, rate, channels, block, callback) -> None:
        self.sd, self.rate, self.channels, self.block, self.callback = (
            sd, rate, channels, block, callback,
        )  # fmt: skip
        self.active = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while self.active:
            if self.sd.stop_after is not None and n >= self.sd.stop_after * self.rate:
                self.active = False
                return
            out = np.zeros((self.block, self.channels), np.float32)
            self.callback(out, self.block, None, None)
            self.sd.played.append(out.T.copy())
            n += self.block
            wait = start + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def __enter__(self):
        self.active = True
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.active = False
        self._thread.join(5)


def test_live_command_plays_a_file_through_an_in_process_stream(
    tiny_wave_archive, tmp_path, monkeypatch
):
    from sepcli.cli import main

    fake = _FakeSoundDevice()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    x = make_tone(1.0)
    wav = write_wav(tmp_path / "in.wav", x)
    result = CliRunner().invoke(
        main,
        ["live", str(wav), "-m", str(tiny_wave_archive), "--latency", "0.4",
         "--mix", "vocals=0.5,accompaniment=1", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"latency [0-9.]+ s", result.output)
    assert "0 underrun(s), 0 overrun(s)" in result.output
    played = np.concatenate(fake.played, axis=1)
    start = int(np.argmax(np.abs(played).sum(axis=0) > 0))
    meta = load_archive(tiny_wave_archive).metadata
    plan = live.plan_for_latency(meta, SeparatorConfig(), 0.4)
    ref = Separator(tiny_wave_archive, plan.config, device="cpu").separate(
        x, RATE, ["vocals", "accompaniment"]
    )
    want = 0.5 * ref["vocals"].numpy() + ref["accompaniment"].numpy()
    first = int(np.argmax(np.abs(want).sum(axis=0) > 0))
    got = played[:, start - first : start - first + x.shape[1]]
    np.testing.assert_allclose(got, want, atol=1e-6)  # every sample, in order, no gap


def test_live_command_device_errors_are_one_line(tiny_wave_archive, tmp_path, monkeypatch):
    from sepcli.cli import main

    fake = _FakeSoundDevice(stop_after=0.3)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    wav = write_wav(tmp_path / "in.wav", make_tone(3.0))
    args = ["-m", str(tiny_wave_archive), "--latency", "0.4", "--threads", "1"]
    vanished = CliRunner().invoke(main, ["live", str(wav), *args])
    assert vanished.exit_code == 3
    assert "error: the audio device stopped" in vanished.output
    no_input = CliRunner().invoke(main, ["live", *args])  # the fake has no input device
    assert no_input.exit_code == 2
    assert "cannot open the audio device" in no_input.output


@pytest.mark.slow
def test_pipe_ctrl_c_leaves_nothing_behind(tiny_mask_archive, tmp_path):
    import signal

    out = tmp_path / "out.wav"
    proc = subprocess.Popen(
        _sepcli("separate", "-", "-o", str(out), "-m", str(tiny_mask_archive), "--stems", "vocals"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(_wav_bytes(make_tone(1.0))[:-8])  # the source is still playing
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.wav.*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the temp output exists: separation is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip() == "interrupted"
    assert list(tmp_path.iterdir()) == []
