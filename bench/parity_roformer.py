"""SNR of the bs-roformer / mel-roformer / mdx23c ports against audio-separator 0.47.1.

Prints the figures of docs/models.md ("Parity with audio-separator 0.47.1"): the
models at the published sizes (the UVR YAMLs in tests/data/msst, the reference
class's own random initialisation, one 1-s input, eager and TorchScript), and
the MDXC chunking through ``sepcli separate`` against audio-separator's own
``MDXCSeparator.demix`` (tiny widths, the published chunking, ``--seconds`` of
real music from ../shared/data or of noise when it is absent).

Usage::

    python bench/parity_roformer.py [--seconds 60] [--skip-published] [--skip-cli]

Needs the test-only reference (tests/audio_separator_reference.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def published(rows: list[str]) -> None:
    import torch
    from audio_separator_reference import PUBLISHED_YAMLS, reference_model
    from snr import snr_db

    from sepcli.models import build_model
    from sepcli.models.importers.msst import config_from_msst, read_msst_yaml

    yamls = dict(PUBLISHED_YAMLS)
    yamls["mel_band_roformer (viperx ep_3005)"] = (
        ROOT / "tests/data/msst/model_mel_band_roformer_ep_3005_sdr_11.4360.yaml"
    )
    for label, path in yamls.items():
        model_type = label.split(" ")[0]
        cfg = read_msst_yaml(path)
        if model_type == "mdx23c":
            cfg["inference"]["dim_t"] = 32  # a 1-s chunk (the U-Net needs frames % 32 == 0)
        ours_cfg = config_from_msst(cfg, model_type)
        ref = reference_model(model_type, cfg)
        ours = build_model(ours_cfg.family, ours_cfg).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        scripted = torch.jit.script(ours)
        length = ours_cfg.chunk_samples if model_type == "mdx23c" else 44100
        mix = 0.3 * torch.randn(1, 2, length, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = ref(mix)
            got = ours(mix)
            script = scripted(mix)
        if expected.dim() == 3:
            expected = expected.unsqueeze(1)
        params = sum(p.numel() for p in ours.parameters())
        rows.append(
            f"| {path.name} | {params:,} | {snr_db(expected, got):.1f} | {snr_db(got, script):.1f} |"
        )
        print(rows[-1], flush=True)


def cli(rows: list[str], seconds: int) -> None:
    import numpy as np
    import soundfile as sf
    import test_cli_separate_mdxc as t
    from conftest import real_song

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shared = ROOT.parent / "shared" / "data"
        if (shared / "musdb18-preview" / "train").is_dir():
            mix, what = real_song(shared, seconds), "real music"
        else:
            g = np.random.default_rng(0)
            mix, what = (0.1 * g.standard_normal((2, seconds * 44100))).astype(np.float32), "noise"
        song = tmp / "song.wav"
        sf.write(song, mix.T, 44100, subtype="FLOAT")
        for model_type, dim_t, overlap in (
            ("bs_roformer", 801, None),
            ("mel_band_roformer", 1101, None),
            ("mdx23c", 64, 2),
        ):
            sub = tmp / model_type
            sub.mkdir()
            scores = t._check(sub, model_type, song, mix, dim_t, overlap)
            text = ", ".join(f"{k} {v:.1f}" for k, v in scores.items())
            rows.append(f"| {model_type}, dim_t {dim_t}, {seconds} s of {what} | {text} |")
            print(rows[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--skip-published", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    rows: list[str] = []
    if not args.skip_published:
        print("| config | parameters | eager vs reference (dB) | TorchScript vs eager (dB) |")
        published(rows)
    if not args.skip_cli:
        print("| sepcli separate vs audio-separator demix | SNR per stem (dB) |")
        cli(rows, args.seconds)


if __name__ == "__main__":
    main()
