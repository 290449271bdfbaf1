"""The streaming engine (sepcli.inference.engine), checked the same way for every recipe."""

from __future__ import annotations

import pytest
import torch

from sepcli.inference.chunking import OverlapAddRecipe
from sepcli.inference.demucs_recipe import DemucsChunkRecipe, DemucsRecipe
from sepcli.inference.engine import InputWindow, OutputAccumulator, Recipe
from sepcli.inference.mdxc_recipe import MdxcPlan, MdxcRecipe
from sepcli.inference.msst_recipe import MsstPlan, MsstRecipe

RECIPES: dict[str, Recipe] = {
    "overlap-add": OverlapAddRecipe(64, 0.25),
    "overlap-add-context-shifts": OverlapAddRecipe(64, 0.5, context=9, offsets=(0, 13, 40)),
    "demucs": DemucsChunkRecipe(DemucsRecipe(64, 0.25, 1.0, max_shift=20)),
    "demucs-shifts": DemucsChunkRecipe(DemucsRecipe(50, 0.5, 2.0, max_shift=20), (3, 20)),
    "mdxc-roformer": MdxcRecipe(MdxcPlan("roformer", 64, 2)),
    "mdxc-tfc-tdf": MdxcRecipe(MdxcPlan("tfc-tdf", 64, 3)),
    "msst": MsstRecipe(MsstPlan(64, 4, 2)),  # latency: the padding is known (2 * 48 + 1)
    "msst-batch": MsstRecipe(MsstPlan(40, 2, 4)),  # latency: the batch is not the last
    "msst-unpadded": MsstRecipe(MsstPlan(40, 1, 2)),  # one chunk per sample, no borders
}


def _fn(batch: torch.Tensor) -> torch.Tensor:
    """Two sources that depend on the whole chunk, so that the blend matters."""
    scale = 1 + batch.pow(2).mean(dim=(1, 2), keepdim=True)
    return torch.stack([torch.tanh(batch * scale), batch / scale], dim=1)


def _mix(length: int) -> torch.Tensor:
    return torch.randn(2, length, generator=torch.Generator().manual_seed(length))


@pytest.mark.parametrize("name", RECIPES)
def test_latency_is_the_longest_wait_of_a_sample(name: str) -> None:
    """Fed one sample at a time, output sample ``t`` comes out once ``t + latency``
    samples are in, and some sample waits exactly that long."""
    recipe = RECIPES[name]
    x = _mix(500)
    engine = recipe.engine(_fn, 2, 2)
    waits: list[int] = []
    for n in range(1, x.shape[-1] + 1):
        out = engine.push(x[:, n - 1 : n])
        waits += [n - t for t in range(len(waits), len(waits) + out.shape[-1])]
    assert len(waits) > 300  # most of the track came out before the end
    assert max(waits) == recipe.latency_samples == engine.latency_samples
    assert len(waits) + engine.finish().shape[-1] == x.shape[-1]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("length", [1, 30, 63, 64, 65, 333])
def test_blocks_do_not_change_the_output_and_chunks_are_counted(name: str, length: int) -> None:
    recipe = RECIPES[name]
    x = _mix(length)
    runs = []
    for block, batch_size in ((1, 1), (7, 3), (10_000, 2)):
        calls: list[int] = []
        engine = recipe.engine(_fn, 2, 2, batch_size=batch_size, on_chunk=calls.append)
        runs.append(torch.cat(list(engine.run(iter(x.split(block, dim=-1)))), dim=-1))
        assert sum(calls) == recipe.count_chunks(length), block
    assert runs[0].shape == (2, 2, length)
    assert all(torch.equal(runs[0], other) for other in runs[1:])


def test_overlap_add_runs_a_short_track_once_even_with_shifts() -> None:
    """A shifted grid's first chunk fits in a track shorter than one segment; the
    track still runs once at its own length, as documented and counted."""
    recipe = OverlapAddRecipe(256, 0.5, offsets=(0, 37, 200))
    seen: list[torch.Tensor] = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch)
        return _fn(batch)

    x = _mix(99)
    engine = recipe.engine(fn, 2, 2)
    out = torch.cat([engine.push(x), engine.finish()], dim=-1)
    assert len(seen) == 1 == recipe.count_chunks(99)
    assert torch.equal(seen[0][0], x) and torch.equal(out, _fn(x[None])[0])


def test_input_window_pads_the_track_ends_and_refuses_dropped_input() -> None:
    window = InputWindow(1)
    window.append(torch.arange(1.0, 11.0)[None])
    assert window.read(-2, 4).tolist() == [[0, 0, 1, 2]]
    assert window.read(8, 4).tolist() == [[9, 10, 0, 0]]
    window.trim(5)
    assert window.held == 5 and window.read(5, 2).tolist() == [[6, 7]]
    with pytest.raises(AssertionError, match="dropped"):
        window.read(4, 2)
    with pytest.raises(ValueError):
        window.append(torch.zeros(2, 3))
    assert window.gather(torch.tensor([9, 5, -1, 7, 10])).tolist() == [[10, 6, 0, 8, 0]]
    with pytest.raises(AssertionError, match="dropped"):
        window.gather(torch.tensor([6, 4]))


def test_accumulator_emits_weighted_means_and_refuses_samples_without_weight() -> None:
    acc = OutputAccumulator(1, 1)
    acc.add(0, torch.full((1, 1, 4), 2.0), torch.ones(4), end=100)
    acc.add(2, torch.full((1, 1, 4), 5.0), torch.tensor([1.0, 2.0, 1.0, 1.0]), end=100)
    out = acc.emit(4, lambda total, weight: total / weight)
    assert out.flatten().tolist() == [2.0, 2.0, 3.5, 4.0]
    acc.add(8, torch.ones(1, 1, 2), torch.ones(2), end=100)
    with pytest.raises(AssertionError, match="without weight"):
        acc.emit(10, lambda total, weight: total / weight)
    out = acc.emit(10, lambda total, weight: total.clamp(max=weight), zero_weights=True)
    assert out.flatten().tolist() == [1, 1, 0, 0, 1, 1]  # 6, 7 without weight: allowed
    acc.add(12, torch.ones(1, 1, 2), torch.ones(2), end=100)
    with pytest.raises(AssertionError, match="without weight"):  # 14, 15: no chunk reached them
        acc.emit(16, lambda total, weight: total / weight, zero_weights=True)


@pytest.mark.parametrize("name", RECIPES)
def test_memory_does_not_grow_with_the_track(name: str) -> None:
    recipe = RECIPES[name]
    engine = recipe.engine(_fn, 2, 2, batch_size=2)
    gen = torch.Generator().manual_seed(0)
    held = []
    for _ in range(300):
        engine.push(torch.randn(2, 97, generator=gen))
        held.append(engine.window.held + sum(a.held for a in engine.accumulators))
    assert max(held[100:]) <= max(held[:100]) <= 8 * 64 * len(engine.accumulators) + 97


@pytest.mark.parametrize("name", RECIPES)
def test_an_empty_track_runs_no_chunk(name: str) -> None:
    calls: list[int] = []
    engine = RECIPES[name].engine(_fn, 2, 2, on_chunk=calls.append)
    assert engine.push(torch.zeros(2, 0)).shape == (2, 2, 0)
    assert engine.finish().shape == (2, 2, 0)
    assert calls == [] and RECIPES[name].count_chunks(0) == 0
