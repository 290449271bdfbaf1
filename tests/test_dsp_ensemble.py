"""Ensemble algorithms (sepcli.dsp.ensemble) against audio-separator 0.47.1's ``Ensembler``,
whole and streamed (sepcli.inference.ensemble_stream)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from audio_separator_reference import reference_module
from conftest import musdb_stems
from snr import snr_db

from sepcli.dsp.ensemble import ALGORITHMS, SPECTRAL_ALGORITHMS, combine, ensemble
from sepcli.errors import ConfigError
from sepcli.inference.ensemble_stream import StreamingEnsemble


def reference_blend(waves: list[np.ndarray], algorithm: str, weights: list[float] | None):
    """audio-separator's result (test-only reference)."""
    ensembler = reference_module("ensembler").Ensembler(
        logging.getLogger("ref"), algorithm, weights
    )
    return ensembler.ensemble([w.copy() for w in waves])


def streamed(estimates: torch.Tensor, algorithm: str, weights, sizes) -> torch.Tensor:
    """``estimates (member, channel, time)`` pushed in blocks of the given sizes (cycled)."""
    stream = StreamingEnsemble(algorithm, weights)
    parts, pos, k = [], 0, 0
    while pos < estimates.shape[-1]:
        n = sizes[k % len(sizes)]
        parts.append(stream.push(estimates[..., pos : pos + n]))
        pos, k = pos + n, k + 1
    parts.append(stream.finish())
    return torch.cat(parts, dim=-1)


def check_parity(waves: list[np.ndarray], algorithm: str, weights, sizes, floor: float = 60.0):
    ref = reference_blend(waves, algorithm, weights)
    x = torch.from_numpy(np.stack(waves))
    w = torch.tensor(weights) if weights is not None else None
    whole = ensemble(x, algorithm, w).numpy()
    stream = streamed(x, algorithm, w, sizes).numpy()
    n = ref.shape[-1]  # uvr_* : the reference drops the last partial hop
    assert whole.shape == stream.shape == waves[0].shape
    assert n == waves[0].shape[-1] or (algorithm.startswith("uvr_") and n % 1024 == 0)
    if n:  # (a track shorter than one hop: the reference's uvr_* returns nothing)
        for label, ours in (("whole", whole), ("stream", stream)):
            db = snr_db(ref, ours[..., :n], label, floor=1e-30)
            assert db >= floor, (algorithm, label, db)
    # the stream computes the same frames: equal to the whole-signal result
    assert snr_db(whole, stream, "whole/stream", floor=1e-30) >= 120


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("length", [700, 44100 + 517, 4 * 1024])
def test_parity_with_audio_separator_on_random_signals(algorithm, length):
    rng = np.random.default_rng(length)
    waves = [rng.standard_normal((2, length)).astype(np.float32) * s for s in (0.5, 1.0, 0.8)]
    check_parity(waves, algorithm, [1.0, 2.5, 0.5], sizes=[1000, 1, 4097, 333])
    check_parity(waves[:2], algorithm, None, sizes=[2048])


@pytest.mark.data
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_parity_with_audio_separator_on_real_stems(shared_data, algorithm):
    """Three "members' vocals" made of a MUSDB preview's real stems with different
    bleed: the case the algorithms are for."""
    track = sorted((shared_data / "musdb18-preview" / "train").glob("*.stem.mp4"))[0]
    drums, bass, other, vocals = musdb_stems(track, 8.0).numpy()
    waves = [vocals + 0.3 * other, 0.9 * vocals + 0.2 * drums, vocals + 0.1 * bass + 0.05 * other]
    check_parity(waves, algorithm, [2.0, 1.0, 1.0], sizes=[44100, 12345, 777])


def test_tie_rules_follow_the_reference():
    """On equal magnitudes max/min_fft keep the first member, uvr_*_spec the last."""
    values = torch.tensor([[1.0 + 0j], [-1.0 + 0j], [1j]])  # all of magnitude 1
    assert combine(values, "max_fft").item() == 1.0
    assert combine(values, "min_fft").item() == 1.0
    assert combine(values, "uvr_max_spec").item() == 1j
    assert combine(values, "uvr_min_spec").item() == 1j
    wave = torch.tensor([[0.5], [-0.5], [0.25]])
    assert combine(wave, "max_wave").item() == 0.5 and combine(wave, "min_wave").item() == 0.25
    assert combine(wave[:2], "median_wave").item() == 0.0  # mean of the two middle values


def test_weights_count_only_for_the_averages():
    x = torch.randn(3, 2, 5000)
    w = torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(ensemble(x, "avg_wave", w), (x[0] + 3 * x[2]) / 4)
    torch.testing.assert_close(ensemble(x, "avg_fft", w), (x[0] + 3 * x[2]) / 4, atol=1e-5, rtol=0)
    assert torch.equal(ensemble(x, "max_wave", w), ensemble(x, "max_wave"))


def test_bad_algorithm_or_stft_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown ensemble algorithm 'loudest'"):
        ensemble(torch.zeros(2, 1, 10), "loudest")
    with pytest.raises(ConfigError, match="multiple of hop_length"):
        ensemble(torch.zeros(2, 1, 10), "avg_fft", n_fft=1000, hop_length=300)
    with pytest.raises(ConfigError, match="weights"):
        ensemble(torch.zeros(2, 1, 10), "avg_wave", torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("algorithm", SPECTRAL_ALGORITHMS)
def test_stream_memory_is_bounded(algorithm):
    """What the stream keeps does not grow with the number of blocks pushed."""
    stream = StreamingEnsemble(algorithm)
    kept = []
    for _ in range(40):
        stream.push(torch.randn(2, 2, 4410))
        kept.append(stream.buffer.shape[-1] + stream.carry.shape[-1])
    assert max(kept) <= 4410 + 2048 + 1024 and stream.emitted >= 40 * 4410 - 2048
