"""The tests' one SNR, and the log of every parity figure it computes.

:func:`snr_db` is ``10 log10(|r|^2 / |r - e|^2)`` over all elements of a reference
``r`` and an estimate ``e`` (numpy arrays or torch tensors, any shape, any float
dtype), summed in float64. A bit-identical estimate gives ``inf``; with ``floor``
both powers count as at least ``floor`` (a few tests keep such a floor, so a
figure stays finite).

With ``SEPCLI_PARITY_LOG=path.json`` set, every figure is recorded: the pytest
node id, the caller's label, its occurrence under that id and label, and the dB as
a full float. conftest writes the file when the session ends (one pytest process);
``scripts/compare_parity.py A.json B.json`` compares two runs (docs/benchmarks.md,
"Parity figures"). Without the variable nothing is recorded.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOG_ENV = "SEPCLI_PARITY_LOG"

_figures: list[dict[str, Any]] = []
_count: dict[tuple[str, str], int] = {}
_started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _float64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def snr_db(reference: Any, estimate: Any, label: str = "", *, floor: float = 0.0) -> float:
    """SNR of ``estimate`` against ``reference`` in dB (float64 sums; ``inf`` when equal).

    ``label`` names the figure in the parity log (a stem, a length, ...); figures of
    one test with the same label are told apart by their order.
    """
    ref, est = _float64(reference), _float64(estimate)
    signal, noise = float(np.sum(ref * ref)), float(np.sum((ref - est) ** 2))
    signal, noise = max(signal, floor), max(noise, floor)
    if math.isnan(signal) or math.isnan(noise):
        db = math.nan
    elif noise == 0:
        db = math.inf
    elif signal == 0:
        db = -math.inf
    else:
        db = 10 * math.log10(signal / noise)
    if os.environ.get(LOG_ENV):
        _record(label, db)
    return db


def _record(label: str, db: float) -> None:
    # "tests/test_x.py::test_y[param] (call)": the node id and the phase
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    n = _count.get((test, label), 0)
    _count[(test, label)] = n + 1
    _figures.append({"test": test, "label": label, "n": n, "db": db})


def write_log() -> Path | None:
    """Write the recorded figures to ``$SEPCLI_PARITY_LOG`` (atomically); None when unset."""
    target = os.environ.get(LOG_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = {
        "started": _started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "torch": torch.__version__,
        "figures": _figures,
    }
    tmp = path.with_name(path.name + ".tmp")
    # json writes floats with repr (they read back bit-identical); inf as Infinity
    tmp.write_text(json.dumps(log, indent=1) + "\n")
    tmp.replace(path)
    return path
