"""WAV / raw PCM over pipes: sepcli.audio.stream."""

from __future__ import annotations

import io
import os
import struct
import threading

import numpy as np
import pytest
import soundfile as sf
from conftest import make_tone

from sepcli.audio import ffmpeg_available
from sepcli.audio.stream import (
    PCM_ENCODINGS,
    PcmFormat,
    StreamReader,
    StreamSink,
    StreamWriter,
    open_stream,
)
from sepcli.errors import AudioDecodeError, UsageError


def _pipe_of(data: bytes, chunk: int = 777) -> int:
    """A pipe's read end fed with ``data`` in small writes from a thread."""
    r, w = os.pipe()

    def feed() -> None:
        try:
            for i in range(0, len(data), chunk):
                os.write(w, data[i : i + chunk])
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return r


def _read_all(reader: StreamReader, block: int = 1000) -> np.ndarray:
    parts = list(reader.blocks(block))
    return np.concatenate(parts, axis=1)


def _stream_wav(x: np.ndarray, encoding: str = "f32le", rate: int = 44100) -> bytes:
    buf = io.BytesIO()
    StreamWriter(buf, PcmFormat(encoding, rate, x.shape[0])).write(x)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", PCM_ENCODINGS)
def test_pcm_round_trip(encoding):
    fmt = PcmFormat(encoding, 44100, 2)
    x = make_tone(0.05)
    y = fmt.decode(fmt.encode(x))
    step = 2.0 ** (1 - fmt.bit_depth) if encoding[0] != "f" else 0.0
    assert y.shape == x.shape
    assert np.abs(y - x).max() <= step + 1e-7


def test_pcm_format_checked():
    with pytest.raises(UsageError, match="unknown PCM format"):
        PcmFormat("mp3", 44100, 2)


def test_streaming_wav_with_unknown_size_reads_back():
    x = make_tone(0.3)
    data = _stream_wav(x)
    assert data[4:8] == b"\xff\xff\xff\xff"  # sizes unknown, as ffmpeg writes on a pipe
    with open_stream(_pipe_of(data)) as reader:
        assert (reader.format.sample_rate, reader.format.channels) == (44100, 2)
        y = _read_all(reader)
    np.testing.assert_array_equal(y, x)


def test_file_wav_with_trailing_chunk_and_24_bit():
    x = make_tone(0.2)
    buf = io.BytesIO()
    sf.write(buf, x.T, 44100, format="WAV", subtype="PCM_24")
    data = buf.getvalue() + b"LIST\x04\x00\x00\x00abcd"
    with open_stream(_pipe_of(data)) as reader:
        y = _read_all(reader)
    assert reader.format.encoding == "s24le"
    np.testing.assert_allclose(y, x, atol=2.0**-22)


def test_blocks_come_as_soon_as_frames_arrive():
    """A real-time source is not waited on to fill a whole block."""
    r, w = os.pipe()
    os.write(w, _stream_wav(make_tone(0.01)))  # 441 frames, pipe kept open
    reader = StreamReader(r)
    first = next(reader.blocks(4096))
    assert first.shape == (2, 441)
    os.close(w)
    assert list(reader.blocks(4096)) == []
    os.close(r)


def test_raw_pcm():
    x = make_tone(0.1, channels=1)
    fmt = PcmFormat("s16le", 22050, 1)
    with open_stream(_pipe_of(fmt.encode(x)), fmt) as reader:
        y = _read_all(reader)
    np.testing.assert_allclose(y, x, atol=2.0**-15)


def test_stream_that_stops_mid_frame():
    data = _stream_wav(make_tone(0.1)) + b"\x01\x02\x03"  # 3 of 8 bytes of a frame
    with open_stream(_pipe_of(data)) as reader, pytest.raises(AudioDecodeError, match="mid-frame"):
        _read_all(reader)


def test_stream_shorter_than_its_declared_data():
    buf = io.BytesIO()
    sf.write(buf, make_tone(0.2).T, 44100, format="WAV", subtype="PCM_16")
    data = buf.getvalue()[:-1000]
    with open_stream(_pipe_of(data)) as reader, pytest.raises(AudioDecodeError, match="short of"):
        _read_all(reader)


def test_chained_wavs_same_format_continue_and_rate_change_fails():
    x = make_tone(0.1)

    def wav(rate: int) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, x.T, rate, format="WAV", subtype="FLOAT")
        return buf.getvalue()

    with open_stream(_pipe_of(wav(44100) + wav(44100))) as reader:
        assert _read_all(reader).shape[1] == 2 * x.shape[1]
    with (
        open_stream(_pipe_of(wav(44100) + wav(48000))) as reader,
        pytest.raises(AudioDecodeError, match="changes from 44100 Hz .* to 48000 Hz"),
    ):
        _read_all(reader)


def test_empty_input():
    with pytest.raises(AudioDecodeError, match="empty"):
        open_stream(_pipe_of(b""))


@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
def test_other_formats_through_ffmpeg_and_garbage():
    x = make_tone(0.5)
    buf = io.BytesIO()
    sf.write(buf, x.T, 44100, format="FLAC", subtype="PCM_16")
    with open_stream(_pipe_of(buf.getvalue())) as reader:
        y = _read_all(reader)
    np.testing.assert_allclose(y, x, atol=2.0**-14)
    garbage = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    with pytest.raises(AudioDecodeError, match="not audio"):
        with open_stream(_pipe_of(garbage)) as reader:
            _read_all(reader)


def test_sink_to_a_file_is_atomic(tmp_path):
    x = make_tone(0.2)
    target = tmp_path / "out.wav"
    sink = StreamSink(target, PcmFormat("s16le", 44100, 2))
    sink.write(x)
    assert not target.exists()
    sink.commit()
    y, rate = sf.read(target, dtype="float32")
    assert rate == 44100 and y.shape == (x.shape[1], 2)
    assert struct.unpack("<I", target.read_bytes()[40:44])[0] == x.shape[1] * 4  # sizes filled in
    aborted = StreamSink(tmp_path / "gone.wav", PcmFormat("f32le", 44100, 2))
    aborted.write(x)
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
