"""Channel and sample-rate conversion of ``(channel, time)`` float arrays (soxr HQ)."""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["convert_channels", "resample", "resampled_length", "StreamResampler"]


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
