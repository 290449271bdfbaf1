"""Audio over pipes: read a WAV or raw PCM stream of unknown length, write one.

A pipe cannot seek, so nothing here does: :class:`StreamReader` parses a RIFF
(or RF64) header as it arrives and then yields blocks as soon as whole frames
are there (a partial ``read`` of a pipe returns what is available), so a
real-time source is separated while it plays. A data chunk whose size is
``0xFFFFFFFF`` or ``0`` (what ffmpeg and sox write when piping) runs to the end
of the stream. Any other input (MP3, FLAC, Ogg, a container) is decoded by an
``ffmpeg`` subprocess fed from the pipe, whose WAV output is read the same way.

:class:`StreamWriter` writes a WAV header with unknown sizes (``0xFFFFFFFF``,
as ffmpeg does on a pipe) or nothing (raw PCM), then samples as they come,
flushed after every block.

What is an :class:`~sepcli.errors.AudioDecodeError` here (one line each):

- a stream that ends in the middle of a frame, or before its declared data size;
- a second WAV header (chained streams) with another rate, channel count or
  sample format ("rate change");
- bytes that are neither WAV, nor given as raw PCM, nor anything ffmpeg decodes.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from sepcli.audio.ffmpeg import INSTALL_HINT, ffmpeg_tools, first_line
from sepcli.errors import AudioDecodeError, AudioEncodeError, FfmpegNotFoundError, UsageError

__all__ = [
    "PCM_ENCODINGS",
    "PcmFormat",
    "StreamReader",
    "StreamWriter",
    "StreamSink",
    "open_stream",
    "encoding_for_bits",
]

#: Raw PCM sample encodings (ffmpeg's ``-f`` names), little-endian.
PCM_ENCODINGS = ("f32le", "f64le", "s16le", "s24le", "s32le", "u8")

_DTYPES = {"f32le": "<f4", "f64le": "<f8", "s16le": "<i2", "s32le": "<i4", "u8": "u1"}
_WIDTHS = {"f32le": 4, "f64le": 8, "s16le": 2, "s24le": 3, "s32le": 4, "u8": 1}
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_READ_BYTES = 1 << 16


def encoding_for_bits(bits: int) -> str:
    """The stream encoding for a ``--bit-depth`` (32 is float, as for files)."""
    return {8: "u8", 16: "s16le", 24: "s24le", 32: "f32le", 64: "f64le"}[bits]


@dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian PCM: ``encoding`` (one of :data:`PCM_ENCODINGS`),
    ``sample_rate`` in Hz, ``channels``."""

    encoding: str
    sample_rate: int
    channels: int

    def __post_init__(self) -> None:
        if self.encoding not in PCM_ENCODINGS:
            raise UsageError(
                f"unknown PCM format {self.encoding!r}; choose from {', '.join(PCM_ENCODINGS)}"
            )
        if not 1 <= self.sample_rate <= 1_000_000:
            raise UsageError(f"sample rate must be 1 to 1000000 Hz, got {self.sample_rate}")
        if not 1 <= self.channels <= 64:
            raise UsageError(f"channels must be 1 to 64, got {self.channels}")

    @property
    def frame_bytes(self) -> int:
        return _WIDTHS[self.encoding] * self.channels

    @property
    def bit_depth(self) -> int:
        return _WIDTHS[self.encoding] * 8

    def decode(self, data: bytes | memoryview) -> np.ndarray:
        """Whole frames of bytes -> float32 ``(channels, n)`` in [-1, 1)."""
        enc = self.encoding
        if enc == "s24le":
            raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            x = ((ints ^ 0x800000) - 0x800000).astype(np.float32) / 8388608.0
        else:
            a = np.frombuffer(data, _DTYPES[enc])
            if enc == "u8":
                x = (a.astype(np.float32) - 128.0) / 128.0
            elif enc[0] == "s":
                x = a.astype(np.float32) / float(2 ** (8 * _WIDTHS[enc] - 1))
            else:
                x = a.astype(np.float32)
        return np.ascontiguousarray(x.reshape(-1, self.channels).T)

    def encode(self, block: np.ndarray) -> bytes:
        """float ``(channels, n)`` -> interleaved bytes; integer formats are clamped
        to full scale (a stream cannot be rescaled after the fact), floats pass."""
        x = np.ascontiguousarray(np.asarray(block, np.float32).T)
        enc = self.encoding
        if enc[0] == "f":
            return x.astype(_DTYPES[enc]).tobytes()
        if enc == "u8":
            return (np.clip(np.round(x * 128.0), -128, 127) + 128).astype("u1").tobytes()
        full = float(2 ** (8 * _WIDTHS[enc] - 1))
        ints = np.clip(np.round(x.astype(np.float64) * full), -full, full - 1).astype("<i4")
        if enc == "s24le":
            return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        return ints.astype(_DTYPES[enc]).tobytes()


class _Bytes:
    """A byte source (file descriptor) with a little look-back buffer and partial reads."""

    def __init__(self, fd: int, prefix: bytes = b"") -> None:
        self.fd = fd
        self.buf = bytearray(prefix)
        self.eof = False
        self.total = 0  # bytes consumed by the parser

    def fill(self, need: int) -> bool:
        """Read until ``need`` bytes are buffered; False at end of stream."""
        while len(self.buf) < need and not self.eof:
            self.more()
        return len(self.buf) >= need

    def more(self) -> int:
        """One read (returns what the pipe has, up to 64 KiB); 0 at end of stream."""
        if self.eof:
            return 0
        try:
            data = os.read(self.fd, _READ_BYTES)
        except OSError as e:
            raise AudioDecodeError(f"cannot read the input stream ({e.strerror or e})") from None
        if not data:
            self.eof = True
        self.buf += data
        return len(data)

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.total += len(out)
        return out


def _parse_fmt(body: bytes, name: str) -> tuple[str, int, int]:
    if len(body) < 16:
        raise AudioDecodeError(f"{name}: WAV 'fmt ' chunk too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the tag
    if tag == 1 and bits in (8, 16, 24, 32):
        encoding = {8: "u8", 16: "s16le", 24: "s24le", 32: "s32le"}[bits]
    elif tag == 3 and bits in (32, 64):
        encoding = "f32le" if bits == 32 else "f64le"
    else:
        raise AudioDecodeError(
            f"{name}: WAV sample format {tag:#x} with {bits} bits is not supported in a stream "
            "(PCM 8/16/24/32-bit or float 32/64-bit)"
        )
    if channels < 1 or rate < 1:
        raise AudioDecodeError(f"{name}: WAV header with {channels} channels at {rate} Hz")
    return encoding, rate, channels


class StreamReader:
    """Blocks of a WAV or raw PCM stream read from a file descriptor (see module).

    Attributes:
        format: the stream's :class:`PcmFormat` (known once the header was read).
        frames: frames yielded so far.
    """

    def __init__(
        self,
        fd: int,
        raw: PcmFormat | None = None,
        *,
        name: str = "stdin",
        prefix: bytes = b"",
        proc: subprocess.Popen[bytes] | None = None,
        cleanup: list | None = None,
    ) -> None:
        self.name = name
        self._src = _Bytes(fd, prefix)
        self._proc = proc
        self._cleanup = cleanup or []
        self.frames = 0
        self._remaining: int | None = None  # data bytes left in this chunk (None: to the end)
        if raw is not None:
            self.format = raw
        else:
            self.format = self._header()

    # -- the RIFF header ------------------------------------------------------
    def _header(self) -> PcmFormat:
        src, name = self._src, self.name
        if not src.fill(12):
            self._decoder_error()
            raise AudioDecodeError(f"{name}: no audio (the stream ended before a WAV header)")
        magic, riff_size, wave = struct.unpack("<4sI4s", bytes(src.buf[:12]))
        if magic not in (b"RIFF", b"RF64") or wave != b"WAVE":
            self._decoder_error()
            raise AudioDecodeError(f"{name}: not a WAV stream")
        src.take(12)
        fmt: tuple[str, int, int] | None = None
        ds64_data: int | None = None
        while True:
            if not src.fill(8):
                raise AudioDecodeError(f"{name}: the stream ended inside the WAV header")
            cid, size = struct.unpack("<4sI", src.take(8))
            if cid == b"data":
                if fmt is None:
                    raise AudioDecodeError(f"{name}: WAV data before its 'fmt ' chunk")
                if magic == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                    size = ds64_data
                unknown = size in _UNKNOWN_SIZES or riff_size in _UNKNOWN_SIZES
                self._remaining = None if unknown else size
                return PcmFormat(*fmt)
            body_size = size + (size & 1)
            if body_size > 1 << 20:
                raise AudioDecodeError(f"{name}: WAV header chunk {cid!r} of {size} bytes")
            if not src.fill(body_size):
                raise AudioDecodeError(f"{name}: the stream ended inside the WAV header")
            body = src.take(body_size)
            if cid == b"fmt ":
                fmt = _parse_fmt(body, name)
            elif cid == b"ds64" and len(body) >= 16:
                ds64_data = struct.unpack("<Q", body[8:16])[0]

    def _next_chunk(self) -> bool:
        """After a data chunk of declared size: skip trailing chunks; a second WAV
        header (chained streams) must have the same format. False at the end."""
        src = self._src
        while True:
            if not src.fill(4):
                if src.buf:
                    raise AudioDecodeError(f"{self.name}: {len(src.buf)} stray bytes at the end")
                return False
            if bytes(src.buf[:4]) in (b"RIFF", b"RF64"):
                before = self.format
                seconds = self.frames / before.sample_rate
                after = self._header()
                if after != before:
                    raise AudioDecodeError(
                        f"{self.name}: the stream changes from {_describe(before)} to "
                        f"{_describe(after)} at {seconds:.2f} s; sepcli needs one format per stream"
                    )
                return True
            if not src.fill(8):
                raise AudioDecodeError(f"{self.name}: the stream ends inside a WAV chunk header")
            cid, size = struct.unpack("<4sI", src.take(8))
            if cid == b"data":
                self._remaining = None if size in _UNKNOWN_SIZES else size
                return True
            size += size & 1
            while size:
                if not src.fill(1):
                    return False
                size -= len(src.take(min(size, len(src.buf))))

    # -- samples --------------------------------------------------------------
    def blocks(self, max_frames: int) -> Iterator[np.ndarray]:
        """float32 blocks ``(channels, n)``, ``1 <= n <= max_frames``, each yielded as soon
        as its frames arrived (a real-time source is not waited on to fill a block)."""
        fmt, src = self.format, self._src
        width = fmt.frame_bytes
        if True:
            while True:
                if not src.buf and not src.more():
                    break
                have = len(src.buf)
                if self._remaining is not None:
                    have = min(have, self._remaining)
                n = min(have // width, max_frames)
                if n == 0:
                    if self._remaining == 0:
                        if not self._next_chunk():
                            break
                        continue
                    if self._remaining is not None and len(src.buf) >= self._remaining:
                        # the declared chunk ends mid-frame
                        raise AudioDecodeError(f"{self.name}: WAV data size is not whole frames")
                    if not src.more():
                        break
                    continue
                data = src.take(n * width)
                if self._remaining is not None:
                    self._remaining -= len(data)
                self.frames += n
                yield fmt.decode(data)
            self._decoder_error()
            if self._remaining:
                raise AudioDecodeError(
                    f"{self.name}: the stream ended {self._remaining} bytes short of the "
                    f"declared WAV data, after {self.frames / fmt.sample_rate:.2f} s"
                )
            if src.buf:
                raise AudioDecodeError(
                    f"{self.name}: the stream stopped mid-frame ({len(src.buf)} of {width} bytes "
                    f"of the last frame) after {self.frames / fmt.sample_rate:.2f} s"
                )
            if self.frames == 0:
                raise AudioDecodeError(f"{self.name}: no audio samples")

    def _decoder_error(self) -> None:
        """Raise ffmpeg's reason when the bytes came from a decoder that failed."""
        proc = self._proc
        if proc is None:
            return
        rc = proc.wait()
        if rc != 0:
            err = self._cleanup[0] if self._cleanup else None
            reason = ""
            if err is not None:
                err.seek(0)
                reason = first_line(err.read())
            raise AudioDecodeError(
                f"{self.name}: not audio that WAV, raw PCM or ffmpeg can read"
                + (f" ({reason})" if reason else "")
            )

    def close(self) -> None:
        """Stop a decoder subprocess (if any) and release its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for item in self._cleanup:
            if hasattr(item, "close"):
                item.close()
            elif isinstance(item, threading.Thread):
                item.join(1.0)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(fmt: PcmFormat) -> str:
    return f"{fmt.sample_rate} Hz {fmt.channels} ch {fmt.encoding}"


def _feed(fd_in: int, prefix: bytes, sink: IO[bytes]) -> None:
    """Copy ``prefix`` then ``fd_in`` to ``sink`` (ffmpeg's stdin) until either end closes."""
    try:
        sink.write(prefix)
        sink.flush()
        while True:
            data = os.read(fd_in, _READ_BYTES)
            if not data:
                break
            sink.write(data)
            sink.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        try:
            sink.close()
        except OSError:
            pass


def open_stream(fd: int, raw: PcmFormat | None = None, *, name: str = "stdin") -> StreamReader:
    """A :class:`StreamReader` over ``fd``: raw PCM when ``raw`` is given, else WAV,
    else whatever ``ffmpeg`` decodes from the pipe.

    Raises:
        AudioDecodeError: nothing arrives, or the bytes are not audio.
        FfmpegNotFoundError: the input is not WAV and ffmpeg is not installed.
    """
    if raw is not None:
        return StreamReader(fd, raw, name=name)
    src = _Bytes(fd)
    src.fill(12)
    head = bytes(src.buf)
    if not head:
        raise AudioDecodeError(f"{name}: no audio (the input stream is empty)")
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return StreamReader(fd, name=name, prefix=head)
    tools = ffmpeg_tools()
    if tools is None:
        raise FfmpegNotFoundError(
            f"{name}: not a WAV stream, and decoding other formats needs ffmpeg; {INSTALL_HINT}"
        )
    err = tempfile.TemporaryFile()
    cmd = [tools[0], "-nostdin", "-hide_banner", "-v", "error", "-probesize", "65536",
           "-i", "pipe:0", "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        start_new_session=os.name == "posix",
    )
    assert proc.stdin is not None and proc.stdout is not None
    feeder = threading.Thread(
        target=_feed, args=(fd, head, proc.stdin), name="sepcli-ffmpeg-feed", daemon=True
    )
    feeder.start()
    try:
        return StreamReader(proc.stdout.fileno(), name=name, proc=proc, cleanup=[err, feeder])
    except BaseException:
        proc.kill()
        proc.wait()
        err.close()
        raise


class StreamWriter:
    """Write float blocks ``(channels, n)`` to a binary file object as a streaming WAV
    (sizes ``0xFFFFFFFF``: unknown, as ffmpeg writes on a pipe) or raw PCM.

    ``write`` flushes after every block so a reader downstream gets samples as they
    are computed. A closed reader raises ``BrokenPipeError`` (the caller decides
    that this ends the run quietly).
    """

    def __init__(self, fh: IO[bytes], fmt: PcmFormat, *, wav: bool = True) -> None:
        self.fh = fh
        self.format = fmt
        self.frames = 0
        if wav:
            self._write(_wav_header(fmt))

    def _write(self, data: bytes) -> None:
        try:
            self.fh.write(data)
            self.fh.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise AudioEncodeError(f"cannot write the output stream ({e.strerror or e})") from None

    def write(self, block: np.ndarray) -> None:
        if block.shape[0] != self.format.channels:
            raise ValueError(f"expected {self.format.channels} channels, got {block.shape[0]}")
        if block.shape[-1]:
            self._write(self.format.encode(block))
            self.frames += block.shape[-1]


def _wav_header(fmt: PcmFormat) -> bytes:
    """A RIFF/WAVE header with unknown sizes; float as WAVE_FORMAT_IEEE_FLOAT (3)."""
    width = _WIDTHS[fmt.encoding]
    tag = 3 if fmt.encoding[0] == "f" else 1
    body = struct.pack(
        "<HHIIHH",
        tag,
        fmt.channels,
        fmt.sample_rate,
        fmt.sample_rate * width * fmt.channels,
        width * fmt.channels,
        width * 8,
    )
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(body)) + body
        + b"data" + struct.pack("<I", 0xFFFFFFFF)
    )  # fmt: skip


class StreamSink:
    """A :class:`StreamWriter` on standard output (``"-"``), a FIFO or a file.

    A regular file is written to a hidden temp file beside it and renamed by
    :meth:`commit` (its WAV sizes filled in), so a failed run leaves nothing
    behind; :meth:`abort` removes the temp file. Standard output and FIFOs are
    written directly, as they are read.
    """

    def __init__(self, target: str | os.PathLike[str], fmt: PcmFormat, *, wav: bool = True) -> None:
        from pathlib import Path

        from sepcli import atomic

        self.target = str(target)
        self._tmp: Path | None = None
        self._own = False
        if self.target == "-":
            fh: IO[bytes] = os.fdopen(os.dup(1), "wb", buffering=0)
        else:
            path = Path(self.target)
            try:
                if path.exists() and not path.is_file():  # a FIFO (or a device)
                    fh = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in commit/abort
                else:
                    self._tmp, fd = atomic.create_temp(path)
                    fh = os.fdopen(fd, "wb")
            except OSError as e:
                raise AudioEncodeError(f"{path}: cannot write ({e.strerror or e})") from None
        self._fh = fh
        self.writer = StreamWriter(fh, fmt, wav=wav)
        self._wav = wav

    def write(self, block: np.ndarray) -> None:
        self.writer.write(block)

    def commit(self) -> None:
        """Finish: fill in the WAV sizes of a file and publish it."""
        from sepcli import atomic

        try:
            if self._tmp is not None:
                if self._wav:
                    data = self.writer.frames * self.writer.format.frame_bytes
                    self._fh.seek(4)
                    self._fh.write(struct.pack("<I", min(36 + data, 0xFFFFFFFF)))
                    self._fh.seek(40)
                    self._fh.write(struct.pack("<I", min(data, 0xFFFFFFFF)))
                self._fh.close()
                atomic.publish(self._tmp, self.target)
                self._tmp = None
            else:
                self._fh.close()
        except OSError as e:
            self.abort()
            raise AudioEncodeError(f"{self.target}: cannot write ({e.strerror or e})") from None

    def abort(self) -> None:
        """Close without publishing; a temp file is removed."""
        from sepcli import atomic

        try:
            self._fh.close()
        except OSError:
            pass
        if self._tmp is not None:
            atomic.remove_quietly([self._tmp])
            self._tmp = None
