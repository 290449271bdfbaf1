"""Per-chunk time of new RoFormer config shapes: sepcli vs the reference module.

    python bench/bench_shapes.py                      # published chunks (slow on a CPU)
    python bench/bench_shapes.py --frames 64 --repeat 2 --threads 2

Three published configs (splifft 0.0.9's JSON configs) at their published
widths: unwa's HyperACE v2 vocals (``hyperace_residual_v2`` head), unwa's
large inst v2 (``axial_refiner_large_v2`` head) and amane's 4-stem large
Mel-Band RoFormer (``skip_connection``). Each runs one chunk of ``--frames``
STFT frames (default: the published chunk) through sepcli's module and through
splifft 0.0.9's ``BSRoformer`` with the same random weights (splifft's forward
gives the mask; the time of its STFT/iSTFT, which sepcli's forward includes, is
not counted for it, so the ratio favours the reference). Median of
``--repeat`` runs after one warm-up, ``torch.inference_mode``. On a shared
machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CONFIGS = (
    "bs_roformer-unwa-hyperace_v2_vocals",
    "mel_roformer-unwa-large_inst_v2",
    "mel_roformer-amane-4_stems_large",
)


def _time(fn, x, repeat: int) -> float:
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames", type=int, default=0, help="STFT frames per chunk (0: published)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import splifft
    from splifft_reference import load_reference_into, splifft_roformer

    from sepcli.dsp.stft import stft
    from sepcli.models import build_model
    from sepcli.models.importers.splifft import config_from_splifft

    folder = Path(splifft.__file__).parent / "data" / "config"
    print("| config | head | frames | sepcli s/chunk | splifft s/chunk | ratio |")
    print("|---|---|---|---|---|---|")
    for name in CONFIGS:
        cfg = config_from_splifft(json.loads((folder / f"{name}.json").read_text()))
        frames = args.frames or cfg.chunk_samples // cfg.stft_hop_length + 1
        torch.manual_seed(0)
        ref = splifft_roformer(cfg, frames)
        ours = build_model(cfg.family, cfg).eval()
        load_reference_into(ours, ref)
        mix = 0.5 * torch.randn(1, cfg.audio_channels, cfg.stft_hop_length * (frames - 1))
        spec = stft(mix, ours.n_fft, ours.hop_length, ours.window, ours.normalized)
        b, c, f, n = spec.shape
        spec_ri = torch.view_as_real(spec).permute(0, 2, 1, 3, 4).reshape(b, f * c, n, 2)
        t_ours = _time(ours, mix, args.repeat)
        t_ref = _time(ref, spec_ri, args.repeat)
        head = cfg.mask_estimator + (" + skip_connection" if cfg.skip_connection else "")
        print(
            f"| {name} | {head} | {frames} | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
