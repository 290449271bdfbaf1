"""Precision and pipeline threads on any device: SNR of bf16/fp16 against fp32, speed.

Usage:
    python bench/bench_precision.py [--device cpu] [--seconds 30] [--repeats 3]
                                    [--precision bf16 fp16] [--threads-check]

Models: the default model and a tiny random Open-Unmix (hidden 16). Song: the
generated one of ``bench/bench_gpu.py``. Each precision runs ``--repeats`` times,
interleaved with fp32, and the fastest run counts (shared machines are noisy).
``--threads-check`` also times ``Separator.separate_file`` on a WAV with the
decode-ahead/write-behind threads forced on and off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gpu import RATE, song_blocks  # noqa: E402

from sepcli.inference.separator import Separator  # noqa: E402
from sepcli.models import UMXConfig, build_model, export_archive  # noqa: E402


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = ref.astype(np.float64), est.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-30)))


def separate(path: Path, device: str, precision: str, mix: np.ndarray) -> tuple[dict, float]:
    sep = Separator(path, device=device, precision=precision)
    start = time.perf_counter()
    out = sep.separate(mix, RATE)
    return {k: v.numpy() for k, v in out.items()}, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", nargs="*", default=["bf16"], help="none: threads only")
    ap.add_argument("--threads-check", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_precision_"))
    torch.manual_seed(0)
    tiny = build_model("umx", UMXConfig(hidden_size=16, num_layers=1)).eval()
    models = {
        "default": ROOT / "sepcli" / "assets" / "default.sepcli",
        "tiny umx": export_archive(tiny, tmp / "tiny.sepcli", name="tiny"),
    }
    mix = np.concatenate(list(song_blocks(args.seconds)), axis=-1)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, "
          f"{args.seconds:g}-s song, best of {args.repeats}\n")  # fmt: skip
    print("| model | precision | min SNR vs fp32 (dB) | x real time | fp32 x real time |")
    print("|---|---|---:|---:|---:|")
    for name, path in models.items() if args.precision else ():
        ref, _ = separate(path, args.device, "fp32", mix[:, : RATE * 2])  # warm-up
        for precision in args.precision:
            t32, th = [], []
            for _ in range(args.repeats):
                ref, t = separate(path, args.device, "fp32", mix)
                t32.append(t)
                est, t = separate(path, args.device, precision, mix)
                th.append(t)
            worst = min(snr(ref[k], est[k]) for k in ref)
            print(f"| {name} | {precision} | {worst:.1f} | {args.seconds / min(th):.2f} | "
                  f"{args.seconds / min(t32):.2f} |", flush=True)  # fmt: skip
    if args.threads_check:
        import soundfile as sf

        wav = tmp / "song.wav"
        sf.write(str(wav), mix.T, RATE, subtype="PCM_16")
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for threads in (False, True):
                sep = Separator(models["default"], device=args.device)
                sep.threads = threads
                start = time.perf_counter()
                sep.separate_file(wav, {s: tmp / f"{s}-{threads}.flac" for s in sep.sources})
                times[threads].append(time.perf_counter() - start)
        print("\n| separate_file, default model, FLAC out | threads off | threads on |")
        print("|---|---:|---:|")
        print(f"| x real time (best of {args.repeats}) | {args.seconds / min(times[False]):.2f} | "
              f"{args.seconds / min(times[True]):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
