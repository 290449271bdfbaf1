"""Atomic training checkpoints and the random state they carry.

A checkpoint is a ``torch.save`` of plain data (tensors, numbers, strings,
lists, dicts: loadable with ``weights_only=True``, no pickled classes): model,
optimiser and scheduler state dicts, the RNG states of torch, numpy and Python,
the data sampler state, the epoch and the best score. It is written to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the
previous one with ``os.replace``: a crash or a full disk leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepcli import atomic
from sepcli.errors import TrainingError, load_failure_reason

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            kind,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Raises:
        TrainingError: the file could not be written (e.g. no space left); the
            previous file at ``path`` is left as it was and the temp file removed.
    """
    path = Path(path)
    try:
        with atomic.atomic_path(path, durable=True) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as exc:
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            reason = "no space left on device"
        kept = "; the previous checkpoint is intact" if path.exists() else ""
        raise TrainingError(f"{path}: cannot write checkpoint ({reason}){kept}") from exc
    return path


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        TrainingError: missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        refused, reason = load_failure_reason(exc)
        what = reason if refused else f"not a readable checkpoint ({reason})"
        raise TrainingError(f"{path}: {what}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise TrainingError(f"{path}: not a sepcli training checkpoint")
    return state
