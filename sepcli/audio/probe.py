"""Probing: what a file holds (rate, channels, declared length) before decoding.

soundfile (libsndfile) answers for :data:`~sepcli.audio.formats.SOUNDFILE_SUFFIXES`,
ffprobe for :data:`~sepcli.audio.formats.FFMPEG_SUFFIXES` and for files soundfile
cannot open. WAV/RF64/AIFF/W64 headers are also read here by a small RIFF parser,
because libsndfile silently shortens files whose data chunk declares more bytes
than the file holds; such files are refused as truncated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf

from sepcli.audio.ffmpeg import INSTALL_HINT, ffmpeg_tools, ffmpeg_url, first_line
from sepcli.audio.formats import FFMPEG_SUFFIXES, SOUNDFILE_SUFFIXES
from sepcli.errors import AudioDecodeError, FfmpegNotFoundError, os_error_reason

__all__ = ["AudioInfo", "probe"]

logger = logging.getLogger(__name__)

_FFPROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class AudioInfo:
    """What a decoder says about one audio stream of a file.

    ``frames`` is what the container declares: exact for the soundfile
    backend (``exact_frames=True``; MP3 without a LAME header is an estimate
    too), an estimate from ffprobe's duration for
    the ffmpeg backend (``exact_frames=False``; AAC usually decodes a few
    hundred frames more, because ffmpeg keeps the encoder padding), and
    ``None`` when not even an estimate exists. The frames that
    :meth:`AudioReader.blocks` yields are the truth.
    """

    path: Path
    sample_rate: int
    channels: int
    frames: int | None
    backend: str  # "soundfile" | "ffmpeg"
    stream: int = 0
    num_streams: int = 1
    exact_frames: bool = True
    codec: str = ""
    container: str = ""
    #: Bits per sample of a lossless source (16, 24, 32 for 32-bit int or float),
    #: ``None`` for lossy codecs and when unknown; outputs follow it by default.
    bit_depth: int | None = None

    @property
    def duration(self) -> float | None:
        """Length in seconds (exact or estimated, see ``exact_frames``), ``None`` when unknown."""
        return None if self.frames is None else self.frames / self.sample_rate


def probe(path: str | Path, stream: int | None = None) -> AudioInfo:
    """Describe audio stream ``stream`` (``None`` = first) of ``path``.

    Raises:
        AudioDecodeError: missing, empty, unreadable, corrupt or non-audio
            file, or a stream index that does not exist.
        FfmpegNotFoundError: the format needs ffmpeg and it is not installed.
    """
    path = Path(path)
    _check_readable(path)
    if stream is not None and (not isinstance(stream, int) or stream < 0):
        raise AudioDecodeError(f"{path}: stream index must be an integer >= 0, not {stream!r}")
    suffix = path.suffix.lower()
    if suffix in FFMPEG_SUFFIXES:
        tools = ffmpeg_tools()
        if tools is None:
            raise FfmpegNotFoundError(
                f"{path}: reading {suffix} files needs ffmpeg, which was not found; {INSTALL_HINT}"
            )
        return _probe_ffmpeg(path, stream, tools[1])
    try:
        return _probe_soundfile(path, stream)
    except _SoundfileFailed as failure:
        tools = ffmpeg_tools()
        if tools is not None:
            try:
                info = _probe_ffmpeg(path, stream, tools[1])
            except AudioDecodeError:
                pass
            else:
                logger.info("%s: soundfile failed (%s); decoding with ffmpeg", path, failure)
                return info
        reason = str(failure)
        if suffix not in SOUNDFILE_SUFFIXES:
            reason = f"unknown suffix {suffix!r}; soundfile: {reason}"
        elif reason == _NOT_RECOGNISED:
            reason = f"soundfile: {reason}"
        else:
            raise AudioDecodeError(f"{path}: corrupt or unreadable (soundfile: {reason})") from None
        raise AudioDecodeError(f"{path}: not a recognised audio file ({reason})") from None


def _check_readable(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioDecodeError(f"{path}: no such file") from None
    except OSError as e:
        raise AudioDecodeError(f"{path}: cannot read ({os_error_reason(e)})") from None
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise AudioDecodeError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError(f"{path}: cannot read (permission denied)")


_NOT_RECOGNISED = "format not recognised"


class _SoundfileFailed(Exception):
    """libsndfile could not open a file (internal: may fall back to ffmpeg)."""


def libsndfile_reason(e: Exception) -> str:
    msg = str(e)
    if ": " in msg and msg.startswith("Error opening"):
        msg = msg.split(": ", 1)[1]
    if "does not exist" in msg or "not recognised" in msg:
        return _NOT_RECOGNISED
    return msg.strip().rstrip(".") or type(e).__name__


@contextlib.contextmanager
def c_stderr_silenced() -> Iterator[None]:
    """Silence C-level stderr (libsndfile's MP3 decoder prints "Note: ..." lines
    when it probes a file); Python-level errors are raised, not printed."""
    try:
        target = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(target)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, target)
        yield
    finally:
        os.dup2(saved, target)
        os.close(saved)
        os.close(null)


#: libsndfile subtypes of lossless PCM -> bits per sample (8-bit is written as 16).
_SUBTYPE_BITS = {
    "PCM_S8": 16, "PCM_U8": 16, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32,
    "FLOAT": 32, "DOUBLE": 32, "ALAC_16": 16, "ALAC_20": 24, "ALAC_24": 24, "ALAC_32": 32,
}  # fmt: skip
#: ffmpeg codecs whose ``bits_per_raw_sample``/``bits_per_sample`` is a source bit depth.
_LOSSLESS_CODECS = ("pcm_", "flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd")


def _ffprobe_bits(stream: dict) -> int | None:
    codec = str(stream.get("codec_name", ""))
    if not codec.startswith(_LOSSLESS_CODECS):
        return None
    for key in ("bits_per_raw_sample", "bits_per_sample"):
        try:
            bits = int(stream.get(key) or 0)
        except (TypeError, ValueError):
            continue
        if bits > 0:
            return 16 if bits <= 16 else 24 if bits <= 24 else 32
    return None


def _probe_soundfile(path: Path, stream: int | None) -> AudioInfo:
    try:
        with c_stderr_silenced(), sf.SoundFile(str(path)) as f:
            info = AudioInfo(
                path=path, sample_rate=int(f.samplerate), channels=int(f.channels),
                frames=int(f.frames), backend="soundfile", stream=0, num_streams=1,
                exact_frames=f.format != "MP3", codec=f"{f.format}/{f.subtype}",
                bit_depth=_SUBTYPE_BITS.get(f.subtype),
            )  # fmt: skip
            major = f.format
    except (sf.SoundFileError, RuntimeError) as e:
        raise _SoundfileFailed(libsndfile_reason(e)) from None
    if stream not in (None, 0):
        raise AudioDecodeError(
            f"{path}: has 1 audio stream; stream {stream} does not exist (use 0)"
        )
    if major in ("WAV", "WAVEX", "RF64", "AIFF", "W64"):
        short = _declared_data_shortfall(path)
        if short is not None:
            declared, present = short
            raise AudioDecodeError(
                f"{path}: truncated or corrupt: header declares {declared} bytes of audio, "
                f"file holds {present}"
            )
    if info.frames == 0:
        raise AudioDecodeError(f"{path}: no audio frames (empty or truncated stream)")
    return info


def _declared_data_shortfall(path: Path) -> tuple[int, int] | None:
    """``(declared, present)`` data bytes when a RIFF/RF64/AIFF file is cut short.

    Returns ``None`` when the file is complete, the layout is not understood,
    or the writer declared an unknown length (0 or 0xFFFFFFFF, as streaming
    writers do). libsndfile silently shortens such files, hence this check.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12:
            return None
        if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
            endian, ds64_size = "<", None
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            endian, ds64_size = ">", None
        elif head[:4] == b"riff" and size >= 40:
            return _w64_shortfall(fh, size)
        else:
            return None
        pos = 12
        for _ in range(10_000):
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid = chunk[:4]
            (csize,) = struct.unpack(endian + "I", chunk[4:])
            if cid == b"ds64":
                body = fh.read(16)
                if len(body) == 16:
                    ds64_size = struct.unpack("<Q", body[8:16])[0]
            elif cid in (b"data", b"SSND"):
                declared = ds64_size if (csize == 0xFFFFFFFF and ds64_size) else csize
                if declared in (0, 0xFFFFFFFF):
                    return None
                present = size - (pos + 8)
                return (declared, present) if present < declared else None
            pos += 8 + csize + (csize & 1)
    return None


def _w64_shortfall(fh: IO[bytes], size: int) -> tuple[int, int] | None:
    # Sony Wave64: 16-byte GUID chunk ids, 64-bit sizes that count the 24-byte header,
    # chunks aligned to 8 bytes; the data GUID starts with b"data".
    pos = 40
    for _ in range(10_000):
        fh.seek(pos)
        chunk = fh.read(24)
        if len(chunk) < 24:
            return None
        (csize,) = struct.unpack("<Q", chunk[16:24])
        if chunk[:4] == b"data":
            declared, present = csize - 24, size - (pos + 24)
            return (declared, present) if 0 < present < declared else None
        if csize < 24:
            return None
        pos += (csize + 7) & ~7
    return None


def _probe_ffmpeg(path: Path, stream: int | None, ffprobe: str) -> AudioInfo:
    cmd = [ffprobe, "-v", "error", "-show_streams", "-show_format", "-select_streams", "a",
           "-of", "json", ffmpeg_url(path)]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=_FFPROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(
            f"{path}: ffprobe did not answer within {_FFPROBE_TIMEOUT_S:.0f} s"
        ) from None
    except OSError as e:
        raise FfmpegNotFoundError(
            f"{path}: cannot run ffprobe ({os_error_reason(e)}); {INSTALL_HINT}"
        ) from None
    if proc.returncode != 0:
        reason = first_line(proc.stderr, path) or f"ffprobe exit status {proc.returncode}"
        raise AudioDecodeError(f"{path}: not a readable audio file (ffprobe: {reason})")
    try:
        report = json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
        streams = report.get("streams", [])
        container = str(report.get("format", {}).get("format_name", ""))
    except (ValueError, AttributeError):
        raise AudioDecodeError(f"{path}: ffprobe gave unreadable output") from None
    streams = [s for s in streams if s.get("codec_type", "audio") == "audio"]
    if not streams:
        raise AudioDecodeError(f"{path}: no audio stream")
    index = 0 if stream is None else stream
    if index >= len(streams):
        raise AudioDecodeError(
            f"{path}: has {len(streams)} audio stream(s); stream {index} does not exist "
            f"(valid: 0..{len(streams) - 1})"
        )
    s = streams[index]
    try:
        sample_rate = int(s["sample_rate"])
        channels = int(s["channels"])
    except (KeyError, TypeError, ValueError):
        raise AudioDecodeError(
            f"{path}: stream {index} has no sample rate or channel count"
        ) from None
    if sample_rate <= 0 or channels <= 0:
        raise AudioDecodeError(
            f"{path}: stream {index} has no audio (rate {sample_rate}, {channels} channels)"
        )
    # Matroska/WebM give no per-stream duration; the container's is then the estimate.
    estimated = _frames_from_seconds(s.get("duration"), sample_rate)
    if estimated is None:
        estimated = _frames_from_seconds(report.get("format", {}).get("duration"), sample_rate)
    return AudioInfo(
        path=path, sample_rate=sample_rate, channels=channels, frames=estimated, backend="ffmpeg",
        stream=index, num_streams=len(streams), exact_frames=False,
        codec=str(s.get("codec_name", "")), container=container, bit_depth=_ffprobe_bits(s),
    )  # fmt: skip


def _frames_from_seconds(value: object, sample_rate: int) -> int | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(round(seconds * sample_rate)) if np.isfinite(seconds) and seconds > 0 else None
