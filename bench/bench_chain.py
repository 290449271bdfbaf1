"""Peak resident memory of a three-step chain, over a short and a long input, and
against the largest of its steps run alone.

Usage:
    python bench/bench_chain.py [--minutes 3 30] [--threads 1] [--width small|test]
                                [--phase mixture|wiener]

The chain is ``sepcli separate IN -m hd --then vocals:mel --then
vocals.lead_vocals:umx`` with random-weight archives of three families written
into a temporary folder: HT-Demucs (drums, bass, other, vocals), a Mel-Band
RoFormer on the vocals (lead_vocals, back_vocals; 2.56-s chunks) and an
Open-Unmix on the lead (dry, reverb; n_fft 4096, Wiener). ``--width test`` is
the width of tests/test_chains.py, ``small`` a narrower one (speed only: memory
is what is measured). ``--phase`` (default: each model's own) is passed to every
step; only the Open-Unmix step has a phase step (``wiener`` by default,
``mixture`` is faster). The inputs are the stereo 44.1 kHz 16-bit tone-and-noise
files of bench/bench_memory.py. Each command runs under GNU ``/usr/bin/time -v``
(bench_memory.measure); for the first length, each step also runs alone on the
file its chain step read, and the chain's peak is compared with the largest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import measure, write_long_wav  # noqa: E402

WIDTHS = {
    "test": dict(hd=dict(channels=8, bottom_channels=32, t_layers=2, t_heads=4, dconv_comp=4.0),
                 mel=dict(dim=32, depth=1, num_bands=24, dim_head=16, heads=2, num_overlap=2),
                 umx=dict(hidden_size=64)),
    "small": dict(hd=dict(channels=4, bottom_channels=16, t_layers=1, t_heads=2, dconv_comp=4.0,
                          t_hidden_scale=2.0),
                  mel=dict(dim=16, depth=1, num_bands=24, dim_head=8, heads=2, num_overlap=2),
                  umx=dict(hidden_size=32, num_layers=1)),
}  # fmt: skip


def write_archives(folder: Path, width: str) -> list[Path]:
    from sepcli.models import UMXConfig, build_model, export_archive
    from sepcli.models.nets.htdemucs import HTDemucsConfig
    from sepcli.models.nets.mel_roformer import MelRoformerConfig

    w = WIDTHS[width]
    torch.manual_seed(0)
    configs = [
        ("htdemucs", "hd", HTDemucsConfig(**w["hd"])),
        ("mel-roformer", "mel", MelRoformerConfig(
            sources=("lead_vocals", "back_vocals"), dim_t=256, **w["mel"])),
        ("umx", "umx", UMXConfig(sources=("dry", "reverb"), **w["umx"])),
    ]  # fmt: skip
    return [
        export_archive(build_model(family, config.to_dict()), folder / f"{name}.sepcli", name=name)
        for family, name, config in configs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[3, 30])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", choices=sorted(WIDTHS), default="small")
    parser.add_argument("--phase", choices=["mixture", "wiener"], default=None)
    args = parser.parse_args()
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    common = ["--threads", str(args.threads), "--quiet", "--force"]
    if args.phase:
        common += ["--phase", args.phase]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hd, mel, umx = write_archives(folder, args.width)
        chain = ["-m", str(hd), "--then", f"vocals:{mel}", "--then", f"vocals.lead_vocals:{umx}"]
        peaks = []
        for k, minutes in enumerate(args.minutes):
            src = folder / f"track-{minutes:g}min.wav"
            write_long_wav(src, minutes)
            out = folder / "out"
            peak, wall = measure([sepcli, "separate", str(src), "-o", str(out), *chain, *common])
            peaks.append(peak)
            print(f"chain {minutes:>5g} min: peak RSS {peak:8.1f} MiB, wall {wall:7.1f} s",
                  flush=True)  # fmt: skip
            if k == 0:
                inputs = [src, out / src.stem / "vocals.wav",
                          out / src.stem / "vocals.lead_vocals.wav"]  # fmt: skip
                alone = []
                for archive, source in zip((hd, mel, umx), inputs, strict=True):
                    step_out = folder / f"alone-{archive.stem}"
                    peak1, wall1 = measure(
                        [sepcli, "separate", str(source), "-m", str(archive), "-o",
                         str(step_out), *common]
                    )  # fmt: skip
                    alone.append(peak1)
                    print(f"  step {archive.stem:>4} alone: peak RSS {peak1:8.1f} MiB, "
                          f"wall {wall1:7.1f} s", flush=True)  # fmt: skip
                    shutil.rmtree(step_out)
                print(f"chain / largest step ({minutes:g} min): {peak / max(alone):.3f}")
            src.unlink()
            shutil.rmtree(out)
        if len(peaks) >= 2:
            print(f"chain peak RSS ratio {args.minutes[-1]:g} min / {args.minutes[0]:g} min: "
                  f"{peaks[-1] / peaks[0]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
