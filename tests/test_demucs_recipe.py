"""Demucs' chunking (sepcli.inference.demucs_recipe) against ``demucs.apply.apply_model``.

Reference, test-only (see tests/test_models_htdemucs.py)::

    pip install --no-deps demucs==4.1.0
    pip install --no-deps einops julius

A tiny random ``demucs.htdemucs.HTDemucs`` (8 kHz, 0.5-s segments) runs through
``apply_model(split=True, overlap=0.25)``; our port with the same weights runs
through the whole-track reference and the streaming engine. Random shift offsets
are taken from the ones ``apply_model`` draws (its model calls consume Python's
``random`` too, so they cannot be re-drawn from a seed).
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from snr import snr_db

from sepcli.inference.demucs_recipe import (
    DemucsChunkRecipe,
    DemucsRecipe,
    apply_bag,
    apply_fixed_segment,
    chunk_window,
    demucs_chunk_starts,
    demucs_weight,
    draw_shift_offsets,
)
from sepcli.models.importers.demucs import config_from_kwargs
from sepcli.models.nets.htdemucs import HTDemucs

htdemucs_ref = pytest.importorskip("demucs.htdemucs", reason="demucs is not installed")
demucs_apply = pytest.importorskip("demucs.apply", reason="demucs is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 8000
SEGMENT = 4000  # 0.5 s
TINY = dict(channels=8, dconv_comp=4, depth=2, nfft=256, t_layers=2, t_heads=2)


def pair(seed: int = 0, sources=("a", "b", "c"), segment=Fraction(1, 2)):
    """The reference model and our port with the same random weights."""
    torch.manual_seed(seed)
    ref = htdemucs_ref.HTDemucs(list(sources), samplerate=RATE, segment=segment, **TINY).eval()
    ours = HTDemucs(config_from_kwargs({"sources": list(sources), **ref._init_args_kwargs[1]}))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def apply_reference(model, mix: torch.Tensor, shifts: int, seed: int = 0):
    """``apply_model`` on ``mix (C, T)``, and the shift offsets it drew."""
    drawn: list[int] = []
    randint = random.randint

    def recording(a: int, b: int) -> int:
        value = randint(a, b)
        drawn.append(value)
        return value

    random.seed(seed)
    demucs_apply.random.randint = recording
    try:
        with torch.no_grad():
            out = demucs_apply.apply_model(
                model, mix[None], shifts=shifts, split=True, overlap=0.25
            )
    finally:
        demucs_apply.random.randint = randint
    return out[0], drawn


@pytest.fixture(scope="module")
def models():
    return pair()


def test_chunk_plan_matches_demucs() -> None:
    assert demucs_chunk_starts(10000, 4000, 0.25) == [0, 3000, 6000, 9000]
    assert demucs_chunk_starts(0, 4000, 0.25) == []
    assert chunk_window(0, 4000, 4000) == (0, 0)
    assert chunk_window(9000, 10000, 4000) == (7500, 1500)  # 1000 kept, centred
    assert chunk_window(0, 1001, 4000) == (-1499, 1499)  # a short track, centred
    w = demucs_weight(5)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 2, 1]) / 3)
    offsets = draw_shift_offsets(50, 3, seed=1)
    assert set(offsets) == {0, 1, 2, 3} and offsets == draw_shift_offsets(50, 3, seed=1)


@pytest.mark.parametrize("length", [1, 1001, SEGMENT, SEGMENT + 1, 9000, 13_337])
@pytest.mark.parametrize("shifts", [0, 2])
def test_reference_and_streaming_equal_apply_model(models, length: int, shifts: int) -> None:
    ref, ours = models
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    expected, offsets = apply_reference(ref, mix, shifts, seed=length)
    assert len(offsets) == shifts
    recipe = DemucsRecipe.for_model(ours.segment_samples, RATE)
    whole = apply_fixed_segment(ours, mix, 3, recipe, offsets, batch_size=3)
    assert snr_db(expected, whole, "whole") >= 60
    for block, batch in ((997, 1), (SEGMENT * 3, 4)):
        streamer = DemucsChunkRecipe(recipe, tuple(offsets)).engine(ours, 2, 3, batch_size=batch)
        parts = list(streamer.run(iter(mix.split(block, dim=-1))))
        streamed = torch.cat(parts, dim=-1)
        assert streamed.shape == expected.shape
        assert snr_db(expected, streamed, f"block {block} batch {batch}") >= 60, (block, batch)


def test_bag_equals_bag_of_models() -> None:
    (ref1, ours1), (ref2, ours2) = pair(1), pair(2)
    weights = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]
    bag = demucs_apply.BagOfModels([ref1, ref2], weights)
    mix = torch.randn(2, 9100)
    expected, offsets = apply_reference(bag, mix, shifts=1, seed=3)
    recipe = DemucsRecipe.for_model(SEGMENT, RATE)
    got = apply_bag(
        [ours1, ours2], torch.tensor(weights), mix, [recipe, recipe], [offsets[:1], offsets[1:]]
    )
    assert snr_db(expected, got) >= 60


def test_streaming_memory_is_bounded() -> None:
    """An identity-like model over a long track: buffers stay at a few segments."""
    seg = 1000

    def fn(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([batch, 2 * batch], dim=1)

    recipe = DemucsRecipe(seg, 0.25, 1.0, max_shift=300)
    streamer = DemucsChunkRecipe(recipe, (10, 250)).engine(fn, 2, 2, batch_size=2)
    total, largest_input, largest_acc = 0, 0, 0
    gen = torch.Generator().manual_seed(0)
    pieces = []
    for _ in range(300):
        block = torch.randn(2, 517, generator=gen)
        pieces.append(block)
        out = streamer.push(block)
        total += out.shape[-1]
        largest_input = max(largest_input, streamer.window.held)
        largest_acc = max(largest_acc, max(a.held for a in streamer.accumulators))
    total += streamer.finish().shape[-1]
    assert total == 300 * 517
    assert largest_input <= 2 * seg + 517
    assert largest_acc <= 4 * seg


def test_identity_model_reconstructs_the_input() -> None:
    """Chunking an identity model returns the input, for odd and short lengths."""
    recipe = DemucsRecipe(64, 0.25, 1.0, max_shift=20)
    for length in (1, 63, 64, 65, 1000):
        mix = torch.randn(1, length)
        for offsets in ((), (0, 20, 7)):
            out = apply_fixed_segment(lambda b: b[:, None], mix, 1, recipe, offsets)
            assert torch.allclose(out[0], mix, atol=1e-6)
            streamer = DemucsChunkRecipe(recipe, offsets).engine(lambda b: b[:, None], 1, 1)
            streamed = torch.cat(list(streamer.run(iter(mix.split(9, dim=-1)))), dim=-1)
            assert torch.allclose(streamed[0], mix, atol=1e-6)


def test_recipe_validation() -> None:
    with pytest.raises(ValueError):
        DemucsRecipe(0)
    with pytest.raises(ValueError):
        DemucsRecipe(100, overlap=1.0)
    with pytest.raises(ValueError):
        DemucsRecipe(100, transition_power=0.5)
    recipe = DemucsRecipe(100, max_shift=10)
    with pytest.raises(ValueError, match="shift offset"):
        apply_fixed_segment(lambda b: b[:, None], torch.zeros(1, 5), 1, recipe, [11])
