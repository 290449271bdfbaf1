"""GPU throughput: x real time and peak GPU memory of the separator.

Usage:
    python bench/bench_gpu.py [--out results.md] [--minutes 3 30] [--batch 1 4 16]
                              [--precision fp32 bf16] [--budget 330] [--device cuda]

Models: the default model (sepcli/assets/default.sepcli) and the largest family
of the family table at run time (``htdemucs`` when the table has it, else the
family whose reference size has the most parameters, ensembles aside) with random
weights at its reference size. Songs: generated stereo 44.1 kHz (sines and
noise bursts), fed block by block to :meth:`Separator.stream` so that nothing
but the separator is timed; stems are consumed and dropped. Each model is run
once on 20 s first (CUDA and cuDNN start-up, not counted).

Every (model, batch, precision) runs on the 3-minute song; the 30-minute song
runs at the largest batch only (both precisions), and anything that would start
after ``--budget`` seconds is listed as skipped, so the whole run fits a GPU
lease. A last row times ``separate_file`` on a 3-minute WAV with the
decode-ahead/write-behind threads on and off.

Writes a markdown table (stdout, and ``--out``) with the GPU's name. Refuses to
run (exit 2, one line) without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sepcli.inference.separator import Separator  # noqa: E402
from sepcli.models import build_model, export_archive, reference_config  # noqa: E402
from sepcli.models.archive import count_parameters  # noqa: E402
from sepcli.models.families import FAMILY_TABLE  # noqa: E402

RATE = 44100
BLOCK = 10 * RATE


def song_blocks(seconds: float, seed: int = 0) -> Iterator[np.ndarray]:
    """A generated stereo song, ``(2, n)`` float32 blocks of 10 s."""
    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    done = 0
    while done < total:
        n = min(BLOCK, total - done)
        t = (np.arange(n) + done) / RATE
        x = 0.15 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1318.5 * t)
        burst = (np.sin(2 * np.pi * 2 * t) > 0.7) * rng.standard_normal(n) * 0.1
        left = x + burst + 0.01 * rng.standard_normal(n)
        right = 0.8 * x + burst + 0.01 * rng.standard_normal(n)
        yield np.stack([left, right]).astype(np.float32)
        done += n


def largest_family() -> str:
    names = [f.name for f in FAMILY_TABLE if f.name != "ensemble"]
    if "htdemucs" in names:
        return "htdemucs"
    sizes = {}
    for name in names:
        try:
            sizes[name] = count_parameters(build_model(name, reference_config(name)))
        except Exception as e:  # a family that cannot build at its reference size here
            print(f"# {name}: not built ({e})", file=sys.stderr)
    return max(sizes, key=sizes.get)


def run_once(sep: Separator, seconds: float) -> tuple[float, float]:
    """``(x real time, peak GPU GiB)`` of separating ``seconds`` of song (NaN GiB off CUDA)."""
    cuda = sep.devices.model.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    frames = 0
    for out in sep.stream(song_blocks(seconds), RATE, 2):
        frames += next(iter(out.values())).shape[-1]
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    assert frames == int(seconds * RATE)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds / wall, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--minutes", type=float, nargs="+", default=[3.0, 30.0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; later runs are skipped")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu: a dry run of the code)")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of song, not timed")
    ap.add_argument("--file-minutes", type=float, default=3.0, help="the separate_file row")
    ap.add_argument("--models", nargs="+", default=None, help="default and/or family names")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; nothing measured", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(args.device))
    else:  # a dry run of this script's code (--device cpu)
        gpu = f"none ({args.device}, {torch.get_num_threads()} threads)"
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    models = args.models or ["default", largest_family()]
    archives = {}
    for name in models:
        if name == "default":
            archives[name] = ROOT / "sepcli" / "assets" / "default.sepcli"
        else:
            torch.manual_seed(0)
            model = build_model(name, reference_config(name)).eval()
            archives[name] = export_archive(model, tmp / f"{name}.sepcli", name=name)
    rows = []
    header = (
        f"GPU: {gpu}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}\n\n"
        "| model | params | song | batch | precision | x real time | peak GPU GiB |\n"
        "|---|---:|---|---:|---|---:|---:|"
    )
    print(header, flush=True)

    def emit(line: str) -> None:  # each row lands in --out at once (a killed run keeps them)
        print(line, flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    if args.out:
        args.out.write_text(header + "\n", encoding="utf-8")
    long_batch = max(args.batch)
    for name, path in archives.items():
        for precision in args.precision:
            for batch in args.batch:
                sep = Separator(path, device=args.device, batch_size=batch, precision=precision)
                params = sep.metadata.num_parameters
                if not rows or rows[-1][0] != name:
                    run_once(sep, args.warmup)  # CUDA, cuDNN and allocator start-up
                for minutes in sorted(args.minutes):
                    if minutes > min(args.minutes) and batch != long_batch:
                        continue
                    song = f"{minutes:g} min"
                    if time.perf_counter() - started > args.budget:
                        cells = (
                            name,
                            f"{params / 1e6:.1f} M",
                            song,
                            batch,
                            precision,
                            "skipped",
                            "(time budget)",
                        )
                    else:
                        xrt, peak = run_once(sep, minutes * 60)
                        cells = (name, f"{params / 1e6:.1f} M", song, batch, precision, f"{xrt:.1f}", f"{peak:.2f}")  # fmt: skip
                    rows.append(cells)
                    emit("| " + " | ".join(map(str, cells)) + " |")
                del sep
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    # separate_file: decode ahead / write behind on and off
    if time.perf_counter() - started < args.budget:
        import soundfile as sf

        wav = tmp / "song.wav"
        with sf.SoundFile(str(wav), "w", RATE, 2, subtype="PCM_16") as f:
            for block in song_blocks(args.file_minutes * 60, seed=1):
                f.write(block.T)
        name = models[0]
        emit("\n| model | run | pipeline | x real time |\n|---|---|---|---:|")
        for threads in (True, False):
            sep = Separator(archives[name], device=args.device, batch_size=long_batch)
            sep.threads = threads
            start = time.perf_counter()
            sep.separate_file(wav, {s: tmp / f"{s}-{threads}.wav" for s in sep.sources})
            xrt = args.file_minutes * 60 / (time.perf_counter() - start)
            emit(f"| {name} | separate_file {args.file_minutes:g} min WAV | "
                 f"threads {'on' if threads else 'off'} | {xrt:.1f} |")  # fmt: skip
    emit(f"\nTotal bench time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
