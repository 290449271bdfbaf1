"""Quality of several models on the same tracks, scored the same way.

Runs ``sepcli evaluate`` (BSSEval v4, museval-compatible, median of medians)
for each ``--model`` on one dataset subset, then prints ``sepcli compare`` of
the results: the default model's card table next to the same-budget baseline
and the oracle bounds, all from one command.

Usage::

    python bench/bench_quality.py --data ../shared/data/musdb18-preview --subset valid \\
        --model default --model runs/baseline/umx-reference-baseline.sepcli \\
        --model oracle:irm1 --model oracle:mix [--stems vocals,accompaniment] [--out eval-bench]

Results already in ``--out`` are reused (``sepcli evaluate`` resumes), so the
table can be re-printed without scoring again; ``sepcli evaluate`` refuses a
folder that holds another archive's results (or other settings), so a new
model whose label is taken needs another ``--out``. Each model's folder is
``OUT/<label>`` where the label is the model name or the archive's file stem (prefixed with its
folder's name when several ``--model`` archives share a file name).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def label_of(model: str) -> str:
    name = Path(model).name
    if name.endswith(".sepcli"):
        name = name[: -len(".sepcli")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--subset", default="valid")
    parser.add_argument("--model", action="append", required=True, help="repeatable")
    parser.add_argument("--stems", default="vocals,accompaniment")
    parser.add_argument("--out", default="eval-bench")
    parser.add_argument("--metric", default="SDR")
    args = parser.parse_args()
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    outs: list[str] = []
    names = [label_of(m) for m in args.model]
    for model, label in zip(args.model, names, strict=True):
        if names.count(label) > 1:  # archives of the same file name: all get their folder
            label = f"{label_of(str(Path(model).parent))}-{label}"
        out = Path(args.out) / label
        cmd = [
            sepcli,
            "evaluate",
            "--data",
            args.data,
            "--subset",
            args.subset,
            "--model",
            model,
            "--stems",
            args.stems,
            "--out",
            str(out),
            "--quiet",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{model}: sepcli evaluate failed: {proc.stderr.strip()[-2000:]}")
        print(f"{model}: scored in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
        outs.append(str(out))
    print(f"\n{args.subset} tracks of {args.data}, {args.metric} (median of medians / mean)")
    wide = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "220")}  # whole labels
    subprocess.run([sepcli, "compare", "--metric", args.metric, *outs], check=True, env=wide)


if __name__ == "__main__":
    main()
