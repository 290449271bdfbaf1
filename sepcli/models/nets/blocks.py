"""Blocks of independent rows, sized to stay in cache.

A layer whose rows are independent (a 1-D convolution over the bins of a
spectrogram, a transformer's per-token feed-forward) can run a block of rows at
a time. Its intermediate activations then stay in the CPU's cache instead of
going out to memory, and the element-wise steps between two matrix products
(bias, norm, activation, residual) run at cache speed.
"""

from __future__ import annotations

__all__ = ["BLOCK_BYTES", "row_blocks"]

#: Bytes of the widest activation of one block of rows (:func:`row_blocks`):
#: small enough to stay in cache, large enough for efficient kernels.
BLOCK_BYTES = 8 << 20


def row_blocks(rows: int, per_row: int, budget: int = BLOCK_BYTES) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``rows`` independent rows, each block about
    ``budget`` bytes of a float32 activation with ``per_row`` elements per row
    (at least one row per block).

    (``budget`` is an argument because TorchScript cannot read a global.)
    """
    step = max(1, budget // max(1, 4 * per_row))
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]
