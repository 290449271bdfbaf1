"""Encoding: streaming, atomic audio writers (WAV, FLAC, MP3, Ogg Vorbis).

Samples go to a hidden raw temp file beside the target; on commit they are
encoded to a second temp file, fsync'ed and renamed over the target with
:mod:`sepcli.atomic` (the one temp-file-and-rename mechanism of sepcli), so an
existing file is never damaged. The same samples give the same bytes (a float
WAV has no PEAK chunk, whose timestamp would differ from run to run).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import soundfile as sf

from sepcli import atomic
from sepcli.audio.formats import CLIP_POLICIES, OUTPUT_FORMATS, RESCALE_PEAK
from sepcli.errors import AudioEncodeError, os_error_reason

__all__ = [
    "AudioWriter",
    "output_format",
    "write_audio",
    "output_bit_depth",
    "MP3_BITRATES",
    "MP3_VBR_QUALITIES",
]

logger = logging.getLogger(__name__)

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


#: Constant MP3 bitrates (kb/s) of MPEG-1 Layer III, for 32-48 kHz audio.
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
#: LAME VBR qualities, ``-V0`` (best, about 245 kb/s) to ``-V9`` (about 65 kb/s).
MP3_VBR_QUALITIES = tuple(range(10))
#: (min, max) CBR kb/s libsndfile maps its compression level onto, by sample rate
#: class: MPEG-1 (>= 32 kHz), MPEG-2 (>= 16 kHz), MPEG-2.5.
_MP3_CBR_RANGES = ((32000, 32, 320), (16000, 8, 160), (0, 8, 64))


def output_bit_depth(requested: int | None, source_bits: int | None, fmt: str) -> int:
    """Bit depth to write: ``requested``, else the source's (``None``: lossy or
    unknown source, 16), limited to what ``fmt`` holds (FLAC: 24)."""
    bits = requested or source_bits or 16
    if fmt == "flac":
        bits = min(bits, 24)
    return bits


def _mp3_cbr_level(kbps: int, sample_rate: int, path: Path) -> float:
    """libsndfile compression level that makes LAME write ``kbps`` constant bitrate.

    libsndfile maps a level c in [0, 1] to ``max - (max - min) * c`` kb/s (then
    LAME takes the nearest legal rate); the inverse, kept below 1 (1.0 is refused).
    """
    low, high = next((lo, hi) for rate, lo, hi in _MP3_CBR_RANGES if sample_rate >= rate)
    if kbps not in MP3_BITRATES or not low <= kbps <= high:
        legal = [b for b in MP3_BITRATES if low <= b <= high]
        raise AudioEncodeError(
            f"{path}: MP3 bitrate {kbps} kb/s is not available at {sample_rate} Hz "
            f"(use one of {', '.join(map(str, legal))})"
        )
    return min((high - kbps) / (high - low), 0.999)


def output_format(path: str | Path, format: str | None) -> str:
    """The format a writer for ``path`` uses: ``format``, else from the suffix."""
    return _output_format(Path(path), format)


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
        *,
        mp3_bitrate: int | None = None,
        mp3_vbr: int | None = None,
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
        if mp3_bitrate is not None and mp3_vbr is not None:
            raise AudioEncodeError(
                f"{self.path}: give an MP3 bitrate (constant) or a VBR quality, not both"
            )
        if self.format == "mp3" and mp3_bitrate is not None:
            self._level = _mp3_cbr_level(int(mp3_bitrate), self.sample_rate, self.path)
            self._bitrate_mode = "CONSTANT"
        elif self.format == "mp3" and mp3_vbr is not None:
            if mp3_vbr not in MP3_VBR_QUALITIES:
                raise AudioEncodeError(f"{self.path}: MP3 VBR quality must be 0-9, not {mp3_vbr}")
            self._level = mp3_vbr / 10  # libsndfile: LAME VBR quality = 10 * level
            self._bitrate_mode = "VARIABLE"
        self.frames = 0
        self.peak = 0.0
        self.gain = 1.0
        self.nonfinite = 0
        self._state = "open"
        self._temps: list[Path] = []
        self._created_dirs: list[Path] = []
        self._finalizer = weakref.finalize(self, atomic.remove_quietly, self._temps)
        if self.path.is_dir():
            raise AudioEncodeError(f"{self.path}: is a folder")
        try:
            self._make_parents()
            raw_path, fd = atomic.create_temp(self.path, suffix=".f32.tmp", mode=0o600)
            self._temps.append(raw_path)
            self._raw: IO[bytes] | None = os.fdopen(fd, "wb", buffering=1 << 20)
        except OSError as e:
            self._fail_cleanup()
            raise AudioEncodeError(f"{self.path}: cannot write ({os_error_reason(e)})") from None

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
            raise AudioEncodeError(f"{self.path}: cannot write ({os_error_reason(e)})") from None
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
                raise AudioEncodeError(
                    f"{self.path}: cannot write ({os_error_reason(e)})"
                ) from None
            if isinstance(e, (sf.SoundFileError, RuntimeError, AssertionError, ValueError)):
                raise AudioEncodeError(
                    f"{self.path}: encoding failed ({str(e) or type(e).__name__})"
                ) from None
            raise

    def _publish(self) -> None:
        out_path = self._temps[-1]
        atomic.publish(out_path, self.path, durable=True)
        self._temps.remove(out_path)
        atomic.remove_quietly(self._temps)

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
        out_path, fd = atomic.create_temp(self.path, mode=mode)
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
                if self._subtype in ("FLOAT", "DOUBLE"):
                    _no_peak_chunk(out)
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
        atomic.remove_quietly(self._temps[:-1])
        del self._temps[:-1]

    def _fail_cleanup(self) -> None:
        atomic.remove_quietly(self._temps)
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


#: libsndfile's ``SFC_SET_ADD_PEAK_CHUNK`` (``sndfile.h``; soundfile has no name for it).
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


def _no_peak_chunk(out: sf.SoundFile) -> None:
    """Write no PEAK chunk: libsndfile adds one to float WAV/RF64 files, stamped with
    the second it was written, so two identical runs would differ byte for byte.
    Only before the first frame is written (libsndfile ignores it later)."""
    sf._snd.sf_command(out._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, sf._snd.SF_FALSE)


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
