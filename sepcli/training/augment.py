"""Data augmentation for training chunks (Uhlich et al. 2017; Open-Unmix).

Pure functions over numpy arrays ``(channel, time)`` with an explicit
``numpy.random.Generator``: no global state, so a chunk is a function of its seed.

Reference: S. Uhlich et al., "Improving music source separation based on deep
neural networks through data augmentation and network blending", ICASSP 2017.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "random_gain",
    "random_channel_swap",
    "random_speed",
    "change_speed",
    "random_start",
    "crop",
    "rms",
]


def random_gain(audio: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Scale ``audio`` ``(channel, time)`` by one gain drawn uniformly in ``[low, high]``."""
    return audio * np.float32(rng.uniform(low, high))


def random_channel_swap(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Swap left and right of a stereo ``(2, time)`` chunk with probability 1/2.

    One draw is made whatever the channel count, so that the random stream does
    not depend on it; mono audio is returned unchanged.
    """
    swap = rng.random() < 0.5
    if swap and audio.shape[0] == 2:
        return audio[::-1]
    return audio


def random_speed(rng: np.random.Generator, probability: float, semitones: float) -> float:
    """A playback-speed factor: ``2 ** (u / 12)`` with ``u`` uniform in
    ``[-semitones, semitones]`` with probability ``probability``, else 1.

    Two draws are made whatever the outcome, so the random stream does not
    depend on it.
    """
    apply = rng.random() < probability
    shift = rng.uniform(-semitones, semitones)
    return float(2.0 ** (shift / 12.0)) if apply else 1.0


def change_speed(audio: np.ndarray, factor: float, length: int) -> np.ndarray:
    """Play ``audio`` ``(channel, time)`` ``factor`` times faster (pitch and tempo
    together, as a tape would) by band-limited resampling; cut or zero-padded to
    ``length`` samples.

    The speed augmentation of Demucs (Défossez et al. 2019; ``repitch`` in
    later versions changes pitch alone): with ``audio`` about ``length * factor``
    samples long, the result spans the same time as an unchanged chunk.
    """
    import soxr

    out = soxr.resample(np.ascontiguousarray(audio.T), factor, 1.0).T
    return crop(out, 0, length)


def random_start(length: int, segment_samples: int, rng: np.random.Generator) -> int:
    """A chunk start drawn uniformly in ``[0, length - segment_samples]`` (0 when shorter)."""
    return int(rng.integers(0, max(length - segment_samples, 0) + 1))


def crop(audio: np.ndarray, start: int, segment_samples: int) -> np.ndarray:
    """``audio[:, start:start + segment_samples]`` as float32, zero-padded at the end if short."""
    chunk = np.asarray(audio[:, start : start + segment_samples], dtype=np.float32)
    if chunk.shape[1] < segment_samples:
        chunk = np.pad(chunk, ((0, 0), (0, segment_samples - chunk.shape[1])))
    return chunk


def rms(audio: np.ndarray) -> float:
    """Root mean square of ``audio`` (0 for an empty array)."""
    if audio.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
