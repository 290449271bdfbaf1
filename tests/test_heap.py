"""Freed heap memory goes back to the OS between chunks (glibc ``malloc_trim``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import sepcli.inference.heap as heap
from sepcli.inference.separator import Separator


def test_trimmer_is_rate_limited(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(heap, "_TRIM", lambda pad: calls.append(pad) or 1)
    trim = heap.HeapTrimmer(interval=3600.0)
    for _ in range(5):
        trim()
    assert calls == [0] and trim.trims == 1
    every = heap.HeapTrimmer(interval=0.0)
    for _ in range(3):
        every()
    assert every.trims == 3


def test_trimmer_without_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(heap, "_TRIM", None)
    trim = heap.HeapTrimmer(interval=0.0)
    trim()
    assert not trim.available and trim.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_glibc_malloc_trim_is_found_and_runs():
    assert heap.HeapTrimmer().available
    heap.HeapTrimmer(interval=0.0)()  # returns freed pages; must not crash


def test_separation_trims_between_chunks(identity_archive, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(heap, "_TRIM", lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(heap.HeapTrimmer, "__init__", _no_interval)
    x = np.random.default_rng(0).standard_normal((2, 5 * 44100)).astype(np.float32) * 0.3
    sep = Separator(identity_archive, device="cpu", segment_seconds=0.5)
    y = sep.separate(x, 44100)["vocals"].numpy()
    np.testing.assert_allclose(y, x, atol=1e-5)
    chunks = sep.count_chunks(x.shape[-1], 44100, None)
    assert chunks > 1 and len(calls) >= chunks


def _no_interval(self, interval: float = 0.0) -> None:
    self.interval = 0.0
    self._last = float("-inf")
    self.trims = 0
