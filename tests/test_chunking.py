"""Chunk planning, blend windows and the streaming overlap-add engine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepcli.inference.chunking import (
    StreamingOverlapAdd,
    blend_window,
    chunk_stride,
    overlap_add,
    plan_chunks,
    shift_offsets,
)


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch.unsqueeze(1)


def _run_stream(
    fn, x, segment, overlap, context=0, offsets=(0,), block=333, batch_size=2, sources=1
):
    eng = StreamingOverlapAdd(
        fn, x.shape[0], sources, segment, overlap, context, offsets, batch_size
    )
    outs = [eng.push(x[:, i : i + block]) for i in range(0, x.shape[-1], block)]
    outs.append(eng.finish())
    return torch.cat(outs, dim=-1)


@given(
    length=st.integers(0, 5000),
    segment=st.integers(1, 700),
    overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]),
)
@settings(max_examples=200, deadline=None)
def test_plan_covers_every_sample(length, segment, overlap):
    starts = plan_chunks(length, segment, overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[max(s, 0) : s + segment] = True
    assert bool(covered.all())
    assert starts == sorted(starts)
    assert all(s < max(length, 1) for s in starts)


def test_blend_window_is_positive_and_flat_without_overlap():
    assert torch.equal(blend_window(100, 0.0), torch.ones(100))
    for overlap in (0.25, 0.5, 0.75, 0.9):
        w = blend_window(1000, overlap)
        assert w.shape == (1000,)
        assert bool((w > 0).all()) and 0.99 < float(w.max()) <= 1.0
        assert torch.allclose(w, w.flip(0))


@pytest.mark.parametrize("length", [1, 17, 255, 256, 257, 1001, 4099])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("offsets", [(0,), (0, 37, 200)])
def test_streaming_identity_returns_the_input(length, overlap, offsets):
    """Bit for bit when chunks do not overlap; otherwise sum(w x) / sum(w) rounds, to
    at most 2.5 float32 epsilons relative (measured), never more than 4."""
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    y = _run_stream(_identity, x, 256, overlap, context=11, offsets=offsets)
    assert y.shape == (1, 2, length)
    if overlap == 0.0 and offsets == (0,):
        assert torch.equal(y[0], x)
    else:
        torch.testing.assert_close(y[0], x, rtol=4 * torch.finfo(torch.float32).eps, atol=0)


@pytest.mark.parametrize("block", [1, 50, 256, 10_000])
def test_streaming_equals_reference_overlap_add(block):
    """A model whose output depends on the chunk (so the blend matters)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3000)
    segment, overlap = 400, 0.5

    def fn(batch):  # scale each chunk by its own mean square: chunk-dependent
        return (batch * batch.pow(2).mean(dim=(1, 2), keepdim=True)).unsqueeze(1)

    y = _run_stream(fn, x, segment, overlap, block=block)
    starts = plan_chunks(3000, segment, overlap)
    chunks = []
    for s in starts:
        c = torch.zeros(2, segment)
        lo, hi = max(s, 0), min(s + segment, 3000)
        c[:, lo - s : hi - s] = x[:, lo:hi]
        chunks.append(fn(c[None])[0])
    ref = overlap_add(chunks, starts, 3000, blend_window(segment, overlap))
    assert torch.allclose(y, ref, atol=1e-6)


def test_context_gives_real_neighbouring_audio():
    """With context, a chunk sees the real samples around it, zeros only off the track."""
    seen = []

    def fn(batch):
        seen.append(batch.clone())
        return batch.unsqueeze(1)

    x = torch.arange(1, 1001, dtype=torch.float32).repeat(2, 1)
    _run_stream(fn, x, 200, 0.0, context=30, block=1000, batch_size=1)
    chunks = torch.cat(seen)
    assert chunks.shape[-1] == 260
    second = chunks[1, 0]  # core starts at 200
    assert torch.equal(second, torch.arange(171, 431, dtype=torch.float32))
    first = chunks[0, 0]
    assert torch.equal(first[:30], torch.zeros(30))
    assert torch.equal(first[30:], torch.arange(1, 231, dtype=torch.float32))


def test_memory_is_bounded_while_streaming():
    """Internal buffers do not grow with the amount of audio pushed."""
    eng = StreamingOverlapAdd(_identity, 2, 1, 1000, 0.5, context=100)
    sizes = []
    for _ in range(200):
        eng.push(torch.randn(2, 500))
        sizes.append(eng.window.held + eng.accumulators[0].held)
    # accumulator capacity 2 * segment, input at most segment + 2 * context + one block
    assert max(sizes) <= 2 * 1000 + 1000 + 2 * 100 + 500
    assert max(sizes[100:]) <= max(sizes[:20])  # no growth with the amount pushed


def test_shift_offsets_are_seeded():
    assert shift_offsets(0, 100, 1) == [0]
    a, b = shift_offsets(5, 100, 1), shift_offsets(5, 100, 1)
    assert a == b and len(a) == 5 and all(0 <= o < 100 for o in a)
    assert shift_offsets(5, 100, 2) != a


def test_bad_arguments():
    with pytest.raises(ValueError):
        chunk_stride(0, 0.5)
    with pytest.raises(ValueError):
        chunk_stride(10, 1.0)
    eng = StreamingOverlapAdd(_identity, 2, 1, 10)
    with pytest.raises(ValueError):
        eng.push(torch.zeros(3, 5))
    bad = StreamingOverlapAdd(lambda b: b, 2, 1, 10)
    with pytest.raises(RuntimeError, match="model returned shape"):
        bad.push(torch.zeros(2, 50))
