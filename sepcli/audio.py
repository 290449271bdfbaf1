"""Audio I/O: decode, resample, convert channels, encode, write atomically.

Layout: a track is a float32 array ``(channel, time)``; blocks streamed by
:class:`AudioReader` and :class:`AudioWriter` have the same layout.

Decoding uses soundfile (libsndfile) for :data:`SOUNDFILE_SUFFIXES` and an
``ffmpeg`` subprocess for :data:`FFMPEG_SUFFIXES` (mp4/m4a/stems...). The ffmpeg
executable is looked up on ``PATH`` unless ``SEPCLI_FFMPEG`` names it (an empty
value means "no ffmpeg"); ffprobe is taken from ``SEPCLI_FFPROBE``, else beside
ffmpeg, else from ``PATH``.

What counts as corrupt (an :class:`~sepcli.errors.AudioDecodeError`):

- a file the decoders do not recognise, or an error the decoder raises;
- ffmpeg exiting with a non-zero status;
- fewer frames than the container declares: WAV/RF64/AIFF whose data chunk
  declares more bytes than the file holds (checked before decoding; W64 too); lossless
  and Ogg files that decode short of their declared frame count; MP3 and ffmpeg
  files that decode short of their declared duration by more than
  ``max(0.1 s, 1 %)`` (lossy streams only estimate their length);
- a file that decodes to zero frames.

Writing goes to a hidden temp file beside the target (``.name.XXXXXXXX.tmp``)
and is renamed over the target only when complete, so an existing file is
never damaged. See ``docs/audio-formats.md`` for the format and clip tables.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from sepcli import atomic
from sepcli.errors import AudioDecodeError, AudioEncodeError, FfmpegNotFoundError

__all__ = [
    "AUDIO_SUFFIXES",
    "SOUNDFILE_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "OUTPUT_FORMATS",
    "CLIP_POLICIES",
    "RESCALE_PEAK",
    "ffmpeg_available",
    "is_audio_file",
    "find_audio_files",
    "AudioInfo",
    "probe",
    "AudioReader",
    "open_audio",
    "load_audio",
    "convert_channels",
    "resample",
    "resampled_length",
    "StreamResampler",
    "AudioWriter",
    "write_audio",
]

logger = logging.getLogger(__name__)

#: Suffixes decoded with soundfile (libsndfile 1.2 reads and writes MP3).
SOUNDFILE_SUFFIXES: frozenset[str] = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".w64",
     ".rf64", ".caf", ".au", ".snd"}
)  # fmt: skip
#: Suffixes decoded through ffmpeg (``.stem.mp4`` is ``.mp4``).
FFMPEG_SUFFIXES: frozenset[str] = frozenset(
    {".m4a", ".m4b", ".mp4", ".aac", ".opus", ".wma", ".webm", ".mka", ".mkv", ".mov",
     ".alac", ".ac3", ".eac3", ".dts", ".ape", ".wv", ".amr", ".3gp", ".mp2", ".mpc",
     ".tta", ".spx"}
)  # fmt: skip
#: Lower-case suffixes recognised as audio when scanning folders.
AUDIO_SUFFIXES: frozenset[str] = SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg")
CLIP_POLICIES = ("rescale", "clamp", "none")
#: Peak after the ``rescale`` clip policy scaled a file down.
RESCALE_PEAK = 0.99

_INSTALL_HINT = (
    "install it with 'apt install ffmpeg', 'brew install ffmpeg' or "
    "'conda install -c conda-forge ffmpeg', or set SEPCLI_FFMPEG to its path"
)
_FFPROBE_TIMEOUT_S = 60.0
_LOSSY_TOLERANCE_S = 0.1


# ---------------------------------------------------------------- ffmpeg lookup


def _ffmpeg_exe() -> str | None:
    override = os.environ.get("SEPCLI_FFMPEG")
    if override is not None:
        return shutil.which(override) if override.strip() else None
    return shutil.which("ffmpeg")


def _ffprobe_exe(ffmpeg: str) -> str | None:
    override = os.environ.get("SEPCLI_FFPROBE")
    if override is not None:
        return shutil.which(override) if override.strip() else None
    sibling = Path(ffmpeg).with_name(Path(ffmpeg).name.replace("ffmpeg", "ffprobe"))
    if sibling != Path(ffmpeg) and shutil.which(str(sibling)):
        return str(sibling)
    return shutil.which("ffprobe")


def _ffmpeg_tools() -> tuple[str, str] | None:
    ffmpeg = _ffmpeg_exe()
    if ffmpeg is None:
        return None
    ffprobe = _ffprobe_exe(ffmpeg)
    return None if ffprobe is None else (ffmpeg, ffprobe)


def ffmpeg_available() -> bool:
    """True when both ffmpeg and ffprobe can be run (honours ``SEPCLI_FFMPEG``)."""
    return _ffmpeg_tools() is not None


# ---------------------------------------------------------------- finding files


def is_audio_file(path: Path) -> bool:
    """True when ``path``'s suffix (any case) is in :data:`AUDIO_SUFFIXES`.

    Looks at the name only; hidden files are rejected (they are skipped when
    scanning folders, and sepcli's own temp files are hidden).
    """
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in AUDIO_SUFFIXES


def find_audio_files(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a list of audio files.

    Files are taken as given, whatever their suffix (decoding then says what is
    wrong). Folders are scanned for :func:`is_audio_file` names, sorted by
    path, skipping hidden files and folders; ``recursive`` descends into
    sub-folders. A file reached twice is listed once (first occurrence).

    Raises:
        AudioDecodeError: a path does not exist, or a folder holds no audio.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                files = _scan_folder(path, recursive)
            except OSError as e:
                raise AudioDecodeError(f"{path}: cannot list folder ({_os_reason(e)})") from None
            if not files:
                where = "recursively" if recursive else "top level only, not recursive"
                raise AudioDecodeError(
                    f"{path}: no audio files found (searched {where} for "
                    f"{len(AUDIO_SUFFIXES)} suffixes such as .wav .flac .mp3 .m4a .mp4)"
                )
            for f in files:
                add(f)
        elif path.exists():
            add(path)
        else:
            raise AudioDecodeError(f"{path}: no such file or folder")
    return found


def _scan_folder(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_audio_file(p))
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(root) / f for f in files if is_audio_file(Path(f)))
    return sorted(p for p in out if p.is_file())


# ---------------------------------------------------------------- probing


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
        tools = _ffmpeg_tools()
        if tools is None:
            raise FfmpegNotFoundError(
                f"{path}: reading {suffix} files needs ffmpeg, which was not found; {_INSTALL_HINT}"
            )
        return _probe_ffmpeg(path, stream, tools[1])
    try:
        return _probe_soundfile(path, stream)
    except _SoundfileFailed as failure:
        tools = _ffmpeg_tools()
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
        raise AudioDecodeError(f"{path}: cannot read ({_os_reason(e)})") from None
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


def _libsndfile_reason(e: Exception) -> str:
    msg = str(e)
    if ": " in msg and msg.startswith("Error opening"):
        msg = msg.split(": ", 1)[1]
    if "does not exist" in msg or "not recognised" in msg:
        return _NOT_RECOGNISED
    return msg.strip().rstrip(".") or type(e).__name__


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
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


def _probe_soundfile(path: Path, stream: int | None) -> AudioInfo:
    try:
        with _c_stderr_silenced(), sf.SoundFile(str(path)) as f:
            info = AudioInfo(
                path=path, sample_rate=int(f.samplerate), channels=int(f.channels),
                frames=int(f.frames), backend="soundfile", stream=0, num_streams=1,
                exact_frames=f.format != "MP3", codec=f"{f.format}/{f.subtype}",
            )  # fmt: skip
            major = f.format
    except (sf.SoundFileError, RuntimeError) as e:
        raise _SoundfileFailed(_libsndfile_reason(e)) from None
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
           "-of", "json", _ffmpeg_url(path)]  # fmt: skip
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
            f"{path}: cannot run ffprobe ({_os_reason(e)}); {_INSTALL_HINT}"
        ) from None
    if proc.returncode != 0:
        reason = _first_line(proc.stderr, path) or f"ffprobe exit status {proc.returncode}"
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
        codec=str(s.get("codec_name", "")), container=container,
    )  # fmt: skip


def _frames_from_seconds(value: object, sample_rate: int) -> int | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(round(seconds * sample_rate)) if np.isfinite(seconds) and seconds > 0 else None


def _ffmpeg_url(path: Path) -> str:
    # "file:" stops ffmpeg reading names such as "concat:x" or "http:x" as protocols.
    return "file:" + str(path.resolve())


_FFMPEG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


def _first_line(data: bytes, path: Path | None = None) -> str:
    """First non-empty stderr line of ffmpeg/ffprobe, without its ``[demuxer @ 0x..]``
    context and without the file name (our messages name the file already)."""
    for line in data.decode("utf-8", "replace").splitlines():
        line = _FFMPEG_CONTEXT.sub("", line.strip())
        if path is not None:
            for name in (_ffmpeg_url(path), str(path)):
                if line.startswith(name + ": "):
                    line = line[len(name) + 2 :]
        if line:
            return line[:300]
    return ""


def _os_reason(e: OSError) -> str:
    names = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or folder",
        errno.EISDIR: "is a folder",
        errno.ENOTDIR: "a parent is not a folder",
    }
    if e.errno in names:
        return names[e.errno]
    return e.strerror or str(e) or type(e).__name__


# ---------------------------------------------------------------- reading


class AudioReader:
    """Streaming reader of one audio stream; use as a context manager.

    Memory does not depend on the file length: :meth:`blocks` decodes block by
    block (soundfile reads, or an ffmpeg pipe). Each call of :meth:`blocks`
    starts again from the beginning of the stream.
    """

    def __init__(self, path: str | Path, stream: int | None = None) -> None:
        self.info: AudioInfo = probe(path, stream)
        self._sf: sf.SoundFile | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        if self.info.backend == "soundfile":
            try:
                self._sf = sf.SoundFile(str(self.info.path))
            except (sf.SoundFileError, RuntimeError) as e:
                raise AudioDecodeError(
                    f"{self.info.path}: cannot open ({_libsndfile_reason(e)})"
                ) from None

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        """Yield float32 blocks ``(channels, n)`` with ``1 <= n <= block_frames``.

        Every block but the last has exactly ``block_frames`` frames.

        Raises:
            AudioDecodeError: decoding fails or the file turns out truncated
                (raised after the last good block, see the module docstring).
        """
        if (
            isinstance(block_frames, bool)
            or not isinstance(block_frames, (int, np.integer))
            or block_frames < 1
        ):
            raise ValueError(f"block_frames must be a positive integer, not {block_frames!r}")
        if self._closed:
            raise AudioDecodeError(f"{self.info.path}: reader is closed")
        if self._sf is not None:
            return self._soundfile_blocks(int(block_frames))
        return self._ffmpeg_blocks(int(block_frames))

    def _soundfile_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        f = self._sf
        assert f is not None
        path = self.info.path
        total = 0
        try:
            f.seek(0)
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=True)
                if len(data) == 0:
                    break
                total += len(data)
                yield np.ascontiguousarray(data.T)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioDecodeError(
                f"{path}: corrupt or truncated after {total} frames ({_libsndfile_reason(e)})"
            ) from None
        declared = self.info.frames or 0
        tolerance = _lossy_tolerance(declared, self.info.sample_rate) if f.format == "MP3" else 0
        if total == 0:
            raise AudioDecodeError(f"{path}: no audio frames")
        if total < declared - tolerance:
            raise AudioDecodeError(
                f"{path}: truncated or corrupt: decoded {total} of {declared} declared frames"
            )

    def _ffmpeg_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        tools = _ffmpeg_tools()
        info = self.info
        if tools is None:
            raise FfmpegNotFoundError(
                f"{info.path}: ffmpeg is no longer available; {_INSTALL_HINT}"
            )
        self._kill()
        cmd = [tools[0], "-nostdin", "-hide_banner", "-v", "error", "-i", _ffmpeg_url(info.path),
               "-map", f"0:a:{info.stream}", "-vn", "-sn", "-dn", "-f", "f32le", "-c:a", "pcm_f32le",
               "-ac", str(info.channels), "-ar", str(info.sample_rate), "pipe:1"]  # fmt: skip
        # stderr goes to a file, not a pipe: a chatty ffmpeg must never block us.
        errfile = tempfile.TemporaryFile()
        try:
            # Own session: Ctrl-C reaches Python (KeyboardInterrupt) and we kill
            # ffmpeg ourselves, instead of ffmpeg dying first and looking corrupt.
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                start_new_session=os.name == "posix",
            )
        except OSError as e:
            errfile.close()
            raise FfmpegNotFoundError(
                f"{info.path}: cannot run ffmpeg ({_os_reason(e)}); {_INSTALL_HINT}"
            ) from None
        self._proc = proc
        frame_bytes = 4 * info.channels
        total = 0
        try:
            assert proc.stdout is not None
            while True:
                buf = proc.stdout.read(block_frames * frame_bytes)
                n = len(buf) // frame_bytes
                if n:
                    total += n
                    block = np.frombuffer(buf, dtype="<f4", count=n * info.channels)
                    yield block.reshape(n, info.channels).T.astype(np.float32, order="C")
                if len(buf) < block_frames * frame_bytes:
                    break
            proc.stdout.close()
            rc = proc.wait()
            errfile.seek(0)
            reason = _first_line(errfile.read(64 * 1024), info.path)
            where = f"stream {info.stream} " if info.num_streams > 1 else ""
            if rc != 0:
                raise AudioDecodeError(
                    f"{info.path}: ffmpeg could not decode {where}({reason or f'exit status {rc}'})"
                )
            if total == 0:
                raise AudioDecodeError(
                    f"{info.path}: no audio frames in {where or 'the file'}".rstrip()
                )
            est = info.frames
            # MP4 indexes every packet, so its stream durations are exact; elsewhere (ADTS,
            # Matroska's container-wide duration) it is a guess: trust it only with an error.
            indexed = any(k in info.container for k in ("mp4", "mov"))
            if (
                est is not None
                and (indexed or reason)
                and total < est - _lossy_tolerance(est, info.sample_rate)
            ):
                detail = f"; ffmpeg: {reason}" if reason else ""
                raise AudioDecodeError(
                    f"{info.path}: truncated or corrupt: decoded {total / info.sample_rate:.2f} s "
                    f"of {est / info.sample_rate:.2f} s declared{detail}"
                )
            if reason:
                logger.warning("%s: ffmpeg reported: %s", info.path, reason)
        finally:
            self._kill()
            errfile.close()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()

    def close(self) -> None:
        """Stop any ffmpeg process (killed and waited on) and close the file."""
        self._closed = True
        self._kill()
        if self._sf is not None:
            self._sf.close()
            self._sf = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: S110 - best effort at garbage collection
            pass


def _lossy_tolerance(frames: int, sample_rate: int) -> int:
    return max(int(_LOSSY_TOLERANCE_S * sample_rate), frames // 100)


def open_audio(path: str | Path, stream: int | None = None) -> AudioReader:
    """Open ``path`` for streaming (see :class:`AudioReader`).

    ``stream`` selects the audio stream of multi-stream files (``.stem.mp4``:
    0 mixture, 1 drums, 2 bass, 3 other, 4 vocals); ``None`` = the first.
    """
    return AudioReader(path, stream)


def load_audio(path: str | Path, stream: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole stream: ``(audio float32 (channel, time), sample_rate)``."""
    with open_audio(path, stream) as reader:
        parts = list(reader.blocks(1 << 18))
        return np.concatenate(parts, axis=1), reader.info.sample_rate


# ---------------------------------------------------------------- channels and rate


def convert_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``(C, T)`` to ``(channels, T)``.

    Mono is duplicated; ``channels == 1`` takes the mean of all channels; more
    than two channels to stereo is the mean downmix duplicated to both sides.
    Returns ``audio`` itself when it already has ``channels`` channels.

    Raises:
        ValueError: ``audio`` is not 2-D, or the conversion is not one of these.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channel, time), got shape {audio.shape}")
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels < 1 or have < 1:
        raise ValueError(f"cannot convert {have} channels to {channels}")
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True, dtype=np.float64).astype(audio.dtype)
    if channels == 2:
        mono = audio.mean(axis=0, keepdims=True, dtype=np.float64).astype(audio.dtype)
        return np.repeat(mono, 2, axis=0)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resampled_length(frames: int, in_rate: int, out_rate: int) -> int:
    """Output length of resampling ``frames`` samples: ``frames * out / in`` rounded half up (soxr's rule)."""
    return (2 * frames * out_rate + in_rate) // (2 * in_rate)


def _check_rates(in_rate: int, out_rate: int) -> None:
    for name, value in (("in_rate", in_rate), ("out_rate", out_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer sample rate, not {value!r}")


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    if audio.shape[-1] > length:
        return audio[..., :length]
    if audio.shape[-1] < length:
        pad = np.zeros(audio.shape[:-1] + (length - audio.shape[-1],), dtype=audio.dtype)
        return np.concatenate([audio, pad], axis=-1)
    return audio


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole signal ``(C, T)`` -> ``(C, resampled_length(T))`` with soxr HQ.

    Returns ``audio`` itself when the rates are equal. float32 stays float32.
    """
    _check_rates(in_rate, out_rate)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channel, time), got shape {audio.shape}")
    if in_rate == out_rate:
        return audio
    length = resampled_length(audio.shape[1], in_rate, out_rate)
    if audio.shape[1] == 0:
        return np.zeros((audio.shape[0], 0), dtype=audio.dtype)
    dtype = audio.dtype if audio.dtype in (np.float32, np.float64) else np.float32
    out = soxr.resample(np.ascontiguousarray(audio.T, dtype=dtype), in_rate, out_rate, quality="HQ")
    return np.ascontiguousarray(_fit_length(out.T, length))


class StreamResampler:
    """Block-wise soxr HQ resampler for ``channels`` channels.

    ``process`` takes ``(C, n)`` float32 blocks of any size and returns what is
    ready; ``flush`` returns the rest. The concatenation equals
    :func:`resample` of the whole signal, with exactly
    ``resampled_length(total_in)`` samples. Equal rates pass blocks through
    without copying.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        _check_rates(in_rate, out_rate)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, not {channels}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.channels = int(channels)
        self.frames_in = 0
        self.frames_out = 0
        self._flushed = False
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality="HQ")
        )

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed ``(C, n)``; return ``(C, m)`` float32 resampled samples now available."""
        if self._flushed:
            raise ValueError("StreamResampler.process called after flush")
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"block must be ({self.channels}, n), got shape {block.shape}")
        self.frames_in += block.shape[1]
        if self._stream is None:
            self.frames_out += block.shape[1]
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(block.T, dtype=np.float32))
        self.frames_out += out.shape[0]
        return np.ascontiguousarray(out.T)

    def flush(self) -> np.ndarray:
        """Return the remaining ``(C, m)`` samples; the stream is then finished."""
        if self._flushed:
            raise ValueError("StreamResampler.flush called twice")
        self._flushed = True
        if self._stream is None:
            return np.zeros((self.channels, 0), dtype=np.float32)
        tail = self._stream.resample_chunk(
            np.zeros((0, self.channels), dtype=np.float32), last=True
        )
        tail = np.ascontiguousarray(tail.T)
        want = resampled_length(self.frames_in, self.in_rate, self.out_rate) - self.frames_out
        tail = _fit_length(tail, max(want, 0))
        self.frames_out += tail.shape[1]
        return tail


# ---------------------------------------------------------------- writing

_SUFFIX_FORMATS = {
    ".wav": "wav",
    ".wave": "wav",
    ".flac": "flac",
    ".mp3": "mp3",
    ".ogg": "ogg",
    ".oga": "ogg",
}
_WAV_SUBTYPES = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
_FLAC_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
#: soundfile compression levels (0 = best): MP3 VBR ~V0 (about 250 kb/s), Vorbis q ~0.7.
_LOSSY = {"mp3": ("MP3", "MPEG_LAYER_III", 0.0, "VARIABLE"), "ogg": ("OGG", "VORBIS", 0.3, None)}
_WAV_LIMIT_BYTES = 0xFFFFFFFF - 4096
_COMMIT_BLOCK = 1 << 16


def _output_format(path: Path, format: str | None) -> str:
    if format is None:
        fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise AudioEncodeError(
                f"{path}: cannot tell the output format from suffix {path.suffix or '(none)'!r} "
                f"(use one of {', '.join(OUTPUT_FORMATS)})"
            )
        return fmt
    fmt = str(format).lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise AudioEncodeError(
            f"{path}: unknown output format {format!r} (use one of {', '.join(OUTPUT_FORMATS)})"
        )
    return fmt


def _encoding(
    path: Path, fmt: str, bit_depth: int, channels: int
) -> tuple[str, str, float | None, str | None]:
    """``(major format, subtype, compression_level, bitrate_mode)`` for soundfile."""
    if fmt == "wav":
        if bit_depth not in _WAV_SUBTYPES:
            raise AudioEncodeError(
                f"{path}: WAV bit depth must be 16, 24 or 32 (float), not {bit_depth}"
            )
        return "WAV", _WAV_SUBTYPES[bit_depth], None, None
    if fmt == "flac":
        if bit_depth not in _FLAC_SUBTYPES:
            raise AudioEncodeError(
                f"{path}: FLAC bit depth must be 16 or 24, not {bit_depth} "
                "(FLAC has no float samples; use WAV for 32-bit float)"
            )
        return "FLAC", _FLAC_SUBTYPES[bit_depth], None, None
    if fmt == "mp3" and channels > 2:
        raise AudioEncodeError(f"{path}: MP3 holds at most 2 channels, not {channels}")
    major, subtype, level, mode = _LOSSY[fmt]
    return major, subtype, level, mode


def _new_temp(folder: Path, name: str, tag: str, mode: int) -> tuple[Path, int]:
    """Create ``folder/.name.XXXXXXXX<tag>`` exclusively; return its path and fd."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{tag}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode
            )
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "could not create a unique temp file", str(folder))


def _remove_quietly(paths: list[Path]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:  # pragma: no cover - nothing else to do
            logger.warning("could not remove temp file %s: %s", p, e)
    paths.clear()


def _write_bytes(fh: IO[bytes], data: bytes | memoryview) -> None:
    """The one place raw sample bytes hit the disk (a seam for disk-full tests)."""
    fh.write(data)


class AudioWriter:
    """Streaming, atomic audio encoder.

    Blocks ``(channels, n)`` are appended as raw float32 to a hidden temp file
    beside ``path`` (no size limit, bounded memory). :meth:`commit` applies the
    clip policy with the now known global peak, encodes to a second temp file,
    fsyncs it and renames it over ``path``; :meth:`abort` deletes the temp
    files; :meth:`prepare` does the encoding part of commit without the rename
    (for outputs that must appear together). As a context manager: commit on
    normal exit, abort on any exception
    (``KeyboardInterrupt`` included). Missing parent folders are created (and
    removed again on abort if still empty).

    Clip policies: ``rescale`` scales the whole file by ``0.99 / peak`` when the
    peak exceeds 1; ``clamp`` clips to [-1, 1]; ``none`` writes as is (32-bit
    float WAV, MP3 and Ogg keep values beyond 1; 16/24-bit PCM and FLAC are
    clipped by libsndfile). NaN and inf samples are written as 0 (a warning is
    logged). After commit, ``peak`` (before gain), ``gain`` and ``frames`` say
    what was written.

    Raises:
        AudioEncodeError: bad format/bit depth/clip policy, unwritable folder,
            full disk; no temp or partial file is left behind.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        channels: int,
        format: str | None = None,
        bit_depth: int = 16,
        clip: str = "rescale",
    ) -> None:
        self.path = Path(path)
        self.format = _output_format(self.path, format)
        if clip not in CLIP_POLICIES:
            raise AudioEncodeError(
                f"{self.path}: unknown clip policy {clip!r} (use one of {', '.join(CLIP_POLICIES)})"
            )
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, np.integer))
            or sample_rate <= 0
        ):
            raise AudioEncodeError(
                f"{self.path}: sample rate must be a positive integer, not {sample_rate!r}"
            )
        if (
            isinstance(channels, bool)
            or not isinstance(channels, (int, np.integer))
            or channels < 1
        ):
            raise AudioEncodeError(
                f"{self.path}: channels must be a positive integer, not {channels!r}"
            )
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.bit_depth = int(bit_depth)
        self.clip = clip
        self._major, self._subtype, self._level, self._bitrate_mode = _encoding(
            self.path, self.format, self.bit_depth, self.channels
        )
        self.frames = 0
        self.peak = 0.0
        self.gain = 1.0
        self.nonfinite = 0
        self._state = "open"
        self._temps: list[Path] = []
        self._created_dirs: list[Path] = []
        self._finalizer = weakref.finalize(self, _remove_quietly, self._temps)
        if self.path.is_dir():
            raise AudioEncodeError(f"{self.path}: is a folder")
        try:
            self._make_parents()
            raw_path, fd = _new_temp(self.path.parent, self.path.name, ".f32.tmp", 0o600)
            self._temps.append(raw_path)
            self._raw: IO[bytes] | None = os.fdopen(fd, "wb", buffering=1 << 20)
        except OSError as e:
            self._fail_cleanup()
            raise AudioEncodeError(f"{self.path}: cannot write ({_os_reason(e)})") from None

    def _make_parents(self) -> None:
        missing = []
        parent = self.path.parent
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            d.mkdir()
            self._created_dirs.append(d)

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self._state in ("open", "prepared"):
                self.commit()
        else:
            self.abort()

    def write(self, block: np.ndarray) -> None:
        """Append float32 samples ``(channels, n)`` (a 1-D block is accepted for mono)."""
        if self._state != "open":
            raise AudioEncodeError(f"{self.path}: writer is already {self._state}")
        a = np.asarray(block, dtype=np.float32)
        if a.ndim == 1 and self.channels == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] != self.channels:
            self.abort()
            raise AudioEncodeError(
                f"{self.path}: block has shape {a.shape}, expected ({self.channels}, n)"
            )
        if a.shape[1] == 0:
            return
        finite = np.isfinite(a)
        if not finite.all():
            self.nonfinite += int(a.size - np.count_nonzero(finite))
            a = np.where(finite, a, np.float32(0))
        self.peak = max(self.peak, float(np.max(np.abs(a))))
        try:
            assert self._raw is not None
            _write_bytes(self._raw, np.ascontiguousarray(a.T).data)
        except OSError as e:
            self.abort()
            raise AudioEncodeError(f"{self.path}: cannot write ({_os_reason(e)})") from None
        self.frames += a.shape[1]

    def prepare(self) -> None:
        """Encode and fsync the temp file without publishing it (idempotent).

        For several outputs that must appear together: ``prepare()`` each
        writer, then ``commit()`` each; the commits are then only renames.
        """
        if self._state == "prepared":
            return
        if self._state != "open":
            raise AudioEncodeError(f"{self.path}: writer is already {self._state}")
        if self.frames == 0:
            self.abort()  # FLAC and MP3 encoders would leave a 0-byte file nothing can read
            raise AudioEncodeError(f"{self.path}: no audio was written (0 frames)")
        if self.nonfinite:
            logger.warning("%s: %d NaN/inf samples written as 0", self.path, self.nonfinite)
        if self.clip == "rescale" and self.peak > 1.0:
            self.gain = RESCALE_PEAK / self.peak
            logger.info("%s: peak %.3f > 1, scaled by %.4f", self.path, self.peak, self.gain)
        self._guarded(self._encode)
        self._state = "prepared"

    def commit(self) -> Path:
        """Finish the file (see :meth:`prepare`) and rename it into place; return ``path``."""
        self.prepare()
        self._guarded(self._publish)
        self._state = "committed"
        self._created_dirs.clear()
        return self.path

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run ``step``; on any failure abort (no temp left) and raise a typed error."""
        try:
            step()
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                raise AudioEncodeError(f"{self.path}: cannot write ({_os_reason(e)})") from None
            if isinstance(e, (sf.SoundFileError, RuntimeError, AssertionError, ValueError)):
                raise AudioEncodeError(
                    f"{self.path}: encoding failed ({str(e) or type(e).__name__})"
                ) from None
            raise

    def _publish(self) -> None:
        out_path = self._temps[-1]
        os.replace(out_path, self.path)
        self._temps.remove(out_path)
        _remove_quietly(self._temps)
        atomic.fsync_dir(self.path.parent)

    def _encode(self) -> None:
        raw = self._raw
        assert raw is not None
        raw.flush()
        raw.close()
        self._raw = None
        raw_path = self._temps[0]
        major = self._major
        if (
            major == "WAV"
            and self.frames * self.channels * _sample_bytes(self._subtype) > _WAV_LIMIT_BYTES
        ):
            major = "RF64"  # plain WAV cannot hold more than 4 GiB of samples
        mode = 0o666
        try:
            mode = self.path.stat().st_mode & 0o7777  # keep an existing file's permissions
        except OSError:
            pass
        out_path, fd = _new_temp(self.path.parent, self.path.name, ".tmp", mode)
        self._temps.append(out_path)
        try:
            if mode != 0o666 and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            kwargs: dict[str, Any] = {}
            if self._level is not None:
                kwargs["compression_level"] = self._level
            if self._bitrate_mode is not None:
                kwargs["bitrate_mode"] = self._bitrate_mode
            written = 0
            clamp = self.clip == "clamp"
            with sf.SoundFile(fd, "w", samplerate=self.sample_rate, channels=self.channels,
                              format=major, subtype=self._subtype, closefd=False, **kwargs) as out, \
                    open(raw_path, "rb") as src:  # fmt: skip
                while True:
                    chunk = np.fromfile(src, dtype=np.float32, count=_COMMIT_BLOCK * self.channels)
                    if chunk.size == 0:
                        break
                    chunk = chunk.reshape(-1, self.channels)
                    if self.gain != 1.0:
                        chunk *= np.float32(self.gain)
                    if clamp:
                        np.clip(chunk, -1.0, 1.0, out=chunk)
                    out.write(chunk)
                    written += chunk.shape[0]
            if written != self.frames:
                raise AudioEncodeError(f"{self.path}: wrote {written} of {self.frames} frames")
            os.fsync(fd)
        finally:
            os.close(fd)
        _remove_quietly(self._temps[:-1])
        del self._temps[:-1]

    def _fail_cleanup(self) -> None:
        _remove_quietly(self._temps)
        for d in reversed(self._created_dirs):
            try:
                d.rmdir()
            except OSError:
                break
        self._created_dirs.clear()

    def abort(self) -> None:
        """Delete the temp files; the target is left untouched. Idempotent."""
        if self._state == "committed":
            return
        self._state = "aborted"
        raw, self._raw = getattr(self, "_raw", None), None
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass
        self._fail_cleanup()


def _sample_bytes(subtype: str) -> int:
    return {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}.get(subtype, 4)


def write_audio(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    format: str | None = None,
    bit_depth: int = 16,
    clip: str = "rescale",
) -> Path:
    """Write a whole signal ``(channel, time)`` atomically (see :class:`AudioWriter`)."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise AudioEncodeError(f"{path}: audio must be (channel, time), got shape {a.shape}")
    with AudioWriter(
        path, sample_rate, a.shape[0], format=format, bit_depth=bit_depth, clip=clip
    ) as w:
        for start in range(0, a.shape[1], _COMMIT_BLOCK):
            w.write(a[:, start : start + _COMMIT_BLOCK])
    return Path(path)
