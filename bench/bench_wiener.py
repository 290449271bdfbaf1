"""Speed of sepcli's multichannel Wiener EM against norbert on the same real spectrogram.

    python bench/bench_wiener.py [--data ../shared/data] [--seconds 30] [--runs 3]

The spectrogram: ``--seconds`` of stereo music, built by concatenating the stems
(drums, bass, other, vocals) of the first MUSDB18 validation previews; the
magnitude estimates are the true stem magnitudes perturbed by log-normal noise
(sigma 0.3), the mixture is the sum of the stems; STFT 4096/1024 (Open-Unmix's).
Every method gets the same inputs; runs are interleaved, each figure is the
median over ``--runs`` runs, and ratios are against norbert in the same process.
The relative difference to norbert's output is printed next to each timing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import norbert
import numpy as np
import torch

from sepcli.datasets import MUSDB_VALIDATION_TRACKS
from sepcli.dsp.stft import stft
from sepcli.dsp.wiener import wiener

ROOT = Path(__file__).resolve().parents[1]


def load_spectrograms(data: Path, seconds: float, n_fft: int, hop: int):
    from sepcli.audio import load_audio

    folder = data / "musdb18-preview" / "train"
    need = int(seconds * 44100)
    parts, have = [], 0
    for name in MUSDB_VALIDATION_TRACKS:
        path = folder / f"{name}.stem.mp4"
        stems = np.stack([load_audio(path, stream=k)[0] for k in (1, 2, 3, 4)])
        parts.append(stems)
        have += stems.shape[-1]
        if have >= need:
            break
    stems = torch.from_numpy(np.concatenate(parts, axis=-1)[..., :need]).unsqueeze(0)
    mix = stft(stems.sum(1), n_fft, hop)
    gen = torch.Generator().manual_seed(0)
    noise = torch.exp(0.3 * torch.randn(stems.shape[:3] + mix.shape[-2:], generator=gen))
    return stft(stems, n_fft, hop).abs() * noise, mix


def run_norbert(mags: torch.Tensor, mix: torch.Tensor, iterations: int) -> np.ndarray:
    v = mags[0].numpy().transpose(3, 2, 1, 0).astype(np.float64)  # (N, F, C, S)
    x = mix[0].numpy().transpose(2, 1, 0).astype(np.complex128)  # (N, F, C)
    return norbert.wiener(v, x, iterations, use_softmask=False, eps=1e-10).transpose(3, 2, 1, 0)[
        None
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mags, mix = load_spectrograms(args.data, args.seconds, 4096, 1024)
    it = args.iterations
    print(
        f"# {args.seconds:g} s stereo, 4 sources, {mix.shape[-1]} frames x {mix.shape[-2]} bins, "
        f"{it} EM iteration(s), torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    methods = {
        "norbert.wiener (numpy, float64)": lambda: run_norbert(mags, mix, it),
        "sepcli wiener complex64, one window": lambda: wiener(
            mags, mix, it, window_frames=0
        ).numpy(),
        "sepcli wiener complex128, one window": lambda: wiener(
            mags.double(), mix.to(torch.complex128), it, window_frames=0
        ).numpy(),
        "sepcli wiener complex64, windows of 300": lambda: wiener(
            mags, mix, it, window_frames=300
        ).numpy(),
    }
    reference = None
    times: dict[str, list[float]] = {name: [] for name in methods}
    errors: dict[str, float] = {}
    for _ in range(args.runs):
        for name, fn in methods.items():
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if reference is None:
                reference = out
            errors[name] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
    base = statistics.median(times["norbert.wiener (numpy, float64)"])
    print(
        f"{'method':42s} {'median s':>9s} {'runs':>5s} {'speed-up vs norbert':>20s} {'rel. diff':>10s}"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:42s} {med:9.3f} {len(values):5d} {base / med:19.1f}x {errors[name]:10.1e}")


if __name__ == "__main__":
    main()
