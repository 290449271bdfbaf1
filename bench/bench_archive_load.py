"""Load time of a model archive: format 2 (data) against format 1 (TorchScript).

For the packaged default (UMX, 5 MB) and for ``htdemucs`` at its published size
(random weights, 42 M parameters), times ``load_archive`` of:

* format 1 as sepcli read it before format 2 (metadata, CRCs, ``torch.jit.load``:
  "today's"), and as it reads it now: the first time with the code scan and
  graph audit ("v1 audit"), later with the verdict remembered ("v1 now");
* format 2 with the scripted module in the user cache (every load after the
  first: hash, metadata, ``torch.jit.load`` of the cached module);
* format 2 cold (first load: weights, build from family code, scripting).

Runs are interleaved (one of each per round) so machine load affects all
alike; figures are medians over the rounds, in seconds.

Usage::

    python bench/bench_archive_load.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sepcli.models import build_model, make_metadata, reference_config
from sepcli.models.archive import (
    METADATA_FILE,
    TORCHSCRIPT_VERSION,
    check_integrity,
    load_archive,
    read_metadata,
    save_archive,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_V2 = ROOT / "sepcli" / "assets" / "default.sepcli"
DEFAULT_V1 = ROOT / "tests" / "data" / "archives" / "default-format1.sepcli"


def load_format1_before(path: Path) -> torch.jit.ScriptModule:
    """What ``load_archive`` did for every archive before format 2."""
    read_metadata(path)
    check_integrity(path)
    return torch.jit.load(str(path), map_location="cpu", _extra_files={METADATA_FILE: ""})


def htdemucs_pair(folder: Path) -> tuple[Path, Path]:
    """(format 1, format 2) archives of a random ``htdemucs`` at its reference size."""
    model = build_model("htdemucs", reference_config("htdemucs")).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta = make_metadata(model, name="htdemucs-random")
    v2 = save_archive(model, meta, folder / "htdemucs-v2.sepcli", probe=False)
    v1 = folder / "htdemucs-v1.sepcli"
    old = meta.replace(format_version=TORCHSCRIPT_VERSION)
    torch.jit.save(torch.jit.script(model), str(v1), _extra_files={METADATA_FILE: old.to_json()})
    return v1, v2


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cold-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["SEPCLI_CACHE"] = str(folder / "cache")
        pairs = {"default (umx)": (DEFAULT_V1, DEFAULT_V2)}
        pairs["htdemucs (random)"] = htdemucs_pair(folder)
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{args.threads} threads, medians of {args.rounds} rounds (cold: {args.cold_rounds})")  # fmt: skip
        for label, (v1, v2) in pairs.items():
            load_archive(v2)  # fill the script cache
            load_archive(v1)  # remember its audit
            runs: dict[str, list[float]] = {"v1 before": [], "v1 now": [], "v2 cached": []}
            for _ in range(args.rounds):
                runs["v1 before"].append(timed(lambda v1=v1: load_format1_before(v1)))
                runs["v1 now"].append(timed(lambda v1=v1: load_archive(v1)))
                runs["v2 cached"].append(timed(lambda v2=v2: load_archive(v2)))
            runs["v1 audit"], runs["v2 cold"] = [], []
            for i in range(args.cold_rounds):
                os.environ["SEPCLI_CACHE"] = str(folder / f"cold{label[:3]}{i}")
                runs["v1 audit"].append(timed(lambda v1=v1: load_archive(v1)))
                runs["v2 cold"].append(timed(lambda v2=v2: load_archive(v2)))
            os.environ["SEPCLI_CACHE"] = str(folder / "cache")
            med = {k: statistics.median(v) for k, v in runs.items()}
            base = med["v1 before"]
            sizes = f"{v1.stat().st_size / 1e6:.1f} MB / {v2.stat().st_size / 1e6:.1f} MB"
            print(f"\n{label} (format 1 / format 2: {sizes})")
            for key, value in med.items():
                print(f"  {key:<11} {value:7.3f} s  ({value / base:4.2f}x format 1 before)")


if __name__ == "__main__":
    main()
