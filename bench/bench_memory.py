"""Peak resident memory of `sepcli separate` for a 5-minute and a 60-minute track.

Usage:
    python bench/bench_memory.py [--model default] [--minutes 5 60] [--threads 2]

Writes two stereo 44.1 kHz 16-bit WAV files of band-limited noise into a
temporary folder, runs the installed `sepcli separate` on each under
GNU `/usr/bin/time -v` (required) and prints peak RSS,
wall time and the ratio of the peaks. Nothing is kept afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def write_long_wav(path: Path, minutes: float, sample_rate: int = 44100) -> None:
    """Stream a long file to disk block by block (the bench itself stays small)."""
    rng = np.random.default_rng(0)
    block = sample_rate * 10
    total = int(minutes * 60 * sample_rate)
    with sf.SoundFile(str(path), "w", sample_rate, 2, subtype="PCM_16", format="WAV") as f:
        done = 0
        t0 = 0
        while done < total:
            n = min(block, total - done)
            t = (np.arange(n) + t0) / sample_rate
            tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1760 * t)
            noise = 0.05 * rng.standard_normal((n, 2))
            f.write(np.stack([tone, tone], axis=1) + noise)
            done += n
            t0 += n


def measure(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` under GNU ``time -v``; return (peak RSS in MiB, wall seconds).

    The peak is the one ``time`` reports for its child. This process's own
    ``getrusage(RUSAGE_CHILDREN)`` (or ``wait4``) is no substitute: Linux keeps
    the high-water mark across ``fork`` and ``exec``, so it would include this
    process's resident size at the fork, and it is the maximum over every child
    run so far.
    """
    timer = shutil.which("time") or "/usr/bin/time"
    if not os.path.exists(timer):
        sys.exit("peak RSS needs GNU time (/usr/bin/time); install it, e.g. apt install time")
    start = time.perf_counter()
    proc = subprocess.run([timer, "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kib / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stems", default="vocals,accompaniment")
    args = parser.parse_args()
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            src = Path(tmp) / f"track-{minutes:g}min.wav"
            write_long_wav(src, minutes)
            out = Path(tmp) / "out"
            cmd = [
                sepcli,
                "separate",
                str(src),
                "-o",
                str(out),
                "-m",
                args.model,
                "--stems",
                args.stems,
                "--threads",
                str(args.threads),
                "--quiet",
                "--force",
            ]
            peak, wall = measure(cmd)
            results.append((minutes, peak, wall))
            print(f"{minutes:>5g} min: peak RSS {peak:8.1f} MiB, wall {wall:7.1f} s", flush=True)
            src.unlink()
            shutil.rmtree(out)
    if len(results) >= 2:
        base, last = results[0], results[-1]
        print(f"peak RSS ratio {last[0]:g} min / {base[0]:g} min: {last[1] / base[1]:.3f}")


if __name__ == "__main__":
    main()
