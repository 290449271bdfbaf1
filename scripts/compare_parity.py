"""Compare the parity figures of two test runs: every figure must be the same float.

    SEPCLI_PARITY_LOG=A.json python -m pytest -q -m '' tests/...   # run A
    SEPCLI_PARITY_LOG=B.json python -m pytest -q -m '' tests/...   # run B
    python scripts/compare_parity.py A.json B.json

The logs are written by tests/snr.py (every ``snr_db`` of the tests: pytest node
id, label, occurrence, dB). Prints a table of every figure of both runs and
exits 1 if any figure differs (exact float equality: the same input must give
the same bits, so the same figure) or is in one run only; prints the largest
difference. docs/benchmarks.md, "Parity figures".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

Key = tuple[str, str, int]


def load(path: Path) -> tuple[dict, dict[Key, float]]:
    log = json.loads(path.read_text())
    figures: dict[Key, float] = {}
    for f in log["figures"]:
        key = (f["test"], f["label"], f["n"])
        if key in figures:
            raise SystemExit(f"error: {path}: figure {key} recorded twice")
        figures[key] = float(f["db"])
    return log, figures


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def difference(a: float, b: float) -> float:
    if same(a, b):
        return 0.0
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="parity log of the first run")
    parser.add_argument("b", type=Path, help="parity log of the second run")
    args = parser.parse_args(argv)
    log_a, a = load(args.a)
    log_b, b = load(args.b)
    keys = sorted(a.keys() | b.keys())
    width = max((len(f"{t} [{lab}] #{n}") for t, lab, n in keys), default=10)
    print(f"{'figure':<{width}}  {'A (dB)':>22}  {'B (dB)':>22}  {'|A-B|':>9}")
    differ, missing, largest = 0, 0, (0.0, None)
    for key in keys:
        name = f"{key[0]} [{key[1]}] #{key[2]}"
        va, vb = a.get(key), b.get(key)
        if va is None or vb is None:
            missing += 1
            mark = "only in " + ("B" if va is None else "A")
            print(f"{name:<{width}}  {_fmt(va):>22}  {_fmt(vb):>22}  {mark}")
            continue
        d = difference(va, vb)
        if d:
            differ += 1
            if largest[1] is None or d > largest[0]:
                largest = (d, key)
        print(
            f"{name:<{width}}  {_fmt(va):>22}  {_fmt(vb):>22}  {d:>9.3g}{'  DIFFERS' if d else ''}"
        )
    for label, log in (("A", log_a), ("B", log_b)):
        print(f"{label}: {args.a if label == 'A' else args.b}, {len(log['figures'])} figures, "
              f"{log.get('started')} .. {log.get('finished')}")  # fmt: skip
    print(f"{len(keys)} figures: {len(keys) - differ - missing} identical, {differ} differ, "
          f"{missing} in one run only")  # fmt: skip
    if largest[1] is not None:
        t, lab, n = largest[1]
        print(f"largest difference: {largest[0]:.6g} dB at {t} [{lab}] #{n}")
    else:
        print("largest difference: 0 dB")
    return 1 if differ or missing else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else repr(value)


if __name__ == "__main__":
    sys.exit(main())
