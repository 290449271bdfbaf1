"""How far one ulp on 1 % of the input moves the BS-RoFormer parity test's output.

The model of ``tests/test_cli_separate_mdxc.py::test_bs_roformer_separate_equals_
audio_separator_on_real_music`` (the published YAML at tiny widths, the reference
class's random weights with seed 1, the published 8-s chunking) is imported as
the test imports it and run by sepcli's ``Separator`` on ``--seconds`` of the
MUSDB previews, with and without the test's noise floor (and on white noise, a
control), then again after one ulp was added to a seeded 1 % of the input
samples. Printed: the SNR of the perturbed output against the unperturbed one,
per stem. A parity figure can be only as high, and as stable, as this one
(docs/benchmarks.md, "Parity figures").

Usage::

    python bench/parity_conditioning.py [--seconds 12] [--noise-db -60]

Needs ../shared/data and the test-only reference (tests/audio_separator_reference.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def one_ulp(mix, fraction: float, seed: int):
    """``mix`` with one ulp added (towards +inf) to a seeded ``fraction`` of its samples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = mix.copy()
    flat = out.reshape(-1)
    idx = rng.choice(flat.size, size=int(round(fraction * flat.size)), replace=False)
    flat[idx] = np.nextafter(flat[idx], np.float32(np.inf))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--noise-db", type=float, default=-60.0)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args()

    import numpy as np
    import torch
    from audio_separator_reference import reference_model, tiny_msst_yaml, write_msst_yaml
    from conftest import SHARED_DATA, real_song, with_noise_floor
    from snr import snr_db

    from sepcli.inference.separator import Separator
    from sepcli.models.importers.msst import import_msst_archive

    torch.set_num_threads(1)
    cfg = tiny_msst_yaml("bs_roformer", 801)
    ref = reference_model("bs_roformer", cfg, seed=1)
    music = real_song(SHARED_DATA, args.seconds)
    noise = 0.1 * np.random.default_rng(0).standard_normal(music.shape).astype(np.float32)
    inputs = {
        "music": music,
        f"music + noise {args.noise_db:g} dB": with_noise_floor(music, args.noise_db),
        "white noise (control)": noise,
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bs.ckpt"
        torch.save(ref.state_dict(), ckpt)
        config = write_msst_yaml(Path(tmp) / "bs.yaml", cfg)
        archive = import_msst_archive(config, ckpt, Path(tmp) / "bs.sepcli", "bs_roformer")
        separator = Separator(archive, device="cpu")
        for name, mix in inputs.items():
            base = separator.separate(mix, 44100)
            moved = separator.separate(one_ulp(mix, args.fraction, seed=1), 44100)
            figures = ", ".join(f"{stem} {snr_db(base[stem], moved[stem]):.1f} dB" for stem in base)
            print(f"{name}, {args.seconds} s, one ulp on {args.fraction:.0%} of samples: "
                  f"{figures}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
