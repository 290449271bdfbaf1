"""Decoding: stream the samples of one audio stream, block by block.

soundfile reads what it probed; other files are decoded by an ``ffmpeg``
subprocess writing float32 to a pipe. Memory does not depend on the file's
length. A stream that decodes short of its declared length is an
:class:`~sepcli.errors.AudioDecodeError` (see :mod:`sepcli.audio`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from sepcli.audio.ffmpeg import INSTALL_HINT, ffmpeg_tools, ffmpeg_url, first_line
from sepcli.audio.probe import AudioInfo, c_stderr_silenced, libsndfile_reason, probe
from sepcli.errors import AudioDecodeError, FfmpegNotFoundError, os_error_reason

__all__ = ["AudioReader", "open_audio", "load_audio"]

logger = logging.getLogger(__name__)

_LOSSY_TOLERANCE_S = 0.1


class AudioReader:
    """Streaming reader of one audio stream; use as a context manager.

    Memory does not depend on the file length: :meth:`blocks` decodes block by
    block (soundfile reads, or an ffmpeg pipe). Each call of :meth:`blocks`
    starts again from the beginning of the stream.

    With ``allow_truncated``, a stream that decodes short of its declared
    length (a download cut off at the end) is not an error: the frames that
    decode are yielded and, once :meth:`blocks` is exhausted,
    :attr:`missing_frames` says how many of the declared frames were missing
    (0 for a complete stream; a decoder error in the middle is still raised).
    """

    def __init__(
        self, path: str | Path, stream: int | None = None, *, allow_truncated: bool = False
    ) -> None:
        self.info: AudioInfo = probe(path, stream)
        self.allow_truncated = allow_truncated
        self.missing_frames = 0
        self._sf: sf.SoundFile | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        if self.info.backend == "soundfile":
            try:
                with _quiet_decoder(self.info):
                    self._sf = sf.SoundFile(str(self.info.path))
            except (sf.SoundFileError, RuntimeError) as e:
                raise AudioDecodeError(
                    f"{self.info.path}: cannot open ({libsndfile_reason(e)})"
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
            with _quiet_decoder(self.info):
                f.seek(0)
            while True:
                with _quiet_decoder(self.info):
                    data = f.read(block_frames, dtype="float32", always_2d=True)
                if len(data) == 0:
                    break
                total += len(data)
                yield np.ascontiguousarray(data.T)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioDecodeError(
                f"{path}: corrupt or truncated after {total} frames ({libsndfile_reason(e)})"
            ) from None
        declared = self.info.frames or 0
        tolerance = _lossy_tolerance(declared, self.info.sample_rate) if f.format == "MP3" else 0
        if total == 0:
            raise AudioDecodeError(f"{path}: no audio frames")
        if total < declared - tolerance:
            if self.allow_truncated:
                self.missing_frames = declared - total
                return
            raise AudioDecodeError(
                f"{path}: truncated or corrupt: decoded {total} of {declared} declared frames "
                "(--allow-truncated separates what decodes)"
            )

    def _ffmpeg_blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        tools = ffmpeg_tools()
        info = self.info
        if tools is None:
            raise FfmpegNotFoundError(f"{info.path}: ffmpeg is no longer available; {INSTALL_HINT}")
        self._kill()
        cmd = [tools[0], "-nostdin", "-hide_banner", "-v", "error", "-i", ffmpeg_url(info.path),
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
                f"{info.path}: cannot run ffmpeg ({os_error_reason(e)}); {INSTALL_HINT}"
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
            reason = first_line(errfile.read(64 * 1024), info.path)
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
                if self.allow_truncated:
                    self.missing_frames = est - total
                    return
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


def open_audio(
    path: str | Path, stream: int | None = None, *, allow_truncated: bool = False
) -> AudioReader:
    """Open ``path`` for streaming (see :class:`AudioReader`).

    ``stream`` selects the audio stream of multi-stream files (``.stem.mp4``:
    0 mixture, 1 drums, 2 bass, 3 other, 4 vocals); ``None`` = the first.
    """
    return AudioReader(path, stream, allow_truncated=allow_truncated)


def _quiet_decoder(info: AudioInfo) -> contextlib.AbstractContextManager[None]:
    """Keep libmpg123's C-level warnings (``Warning: Xing stream size off...``)
    off the terminal while it opens or reads an MP3; other formats print nothing."""
    if info.codec.startswith("MP3"):
        return c_stderr_silenced()
    return contextlib.nullcontext()


def load_audio(path: str | Path, stream: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole stream: ``(audio float32 (channel, time), sample_rate)``."""
    with open_audio(path, stream) as reader:
        parts = list(reader.blocks(1 << 18))
        return np.concatenate(parts, axis=1), reader.info.sample_rate
