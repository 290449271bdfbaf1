"""CPU speed of the BS-RoFormer / Mel-Band RoFormer / MDX23C ports against audio-separator.

Both sides get the same random checkpoint at the published size (the UVR YAML
in tests/data/msst, weights drawn by the reference class's own initialisation;
speed does not depend on weight values and the published weights cannot be
downloaded here).

``--mode chunk`` (default): one published chunk through the model alone, in one
process with ``--threads`` threads, variants interleaved over ``--rounds``:

* ``reference``: audio-separator 0.47.1's vendored class (``flash_attn`` as the
  YAML says, i.e. ``scaled_dot_product_attention``);
* ``reference-einsum``: the same with ``flash_attn=False`` (its einsum attention);
* ``ours``: the sepcli module, eager; ``ours-script``: the TorchScript archive module;
* ``ours-bf16``: the eager module under ``torch.autocast("cpu", torch.bfloat16)``
  (its SNR against fp32 is printed: bf16 changes the arithmetic).

The time of a whole track follows: audio-separator's MDXC schedule runs
``count_chunks(length)`` chunks (87 for 3 minutes of BS-RoFormer at 8-s chunks,
4 per sample), the overlap-add around them costs next to nothing. The figure
printed is ``x real time = chunk time * chunks / track seconds``.

``--mode song``: the whole pipeline on ``--seconds`` of real music (MUSDB18
previews end to end from ../shared/data): ``sepcli separate`` on the imported
archive against audio-separator's own ``MDXCSeparator.demix`` (driven directly,
as tests/test_mdxc_recipe.py does: its ``Separator`` needs onnxruntime and
downloads) with its model class, each in a subprocess with ``--threads``
threads, interleaved. At published size a 3-minute song takes over an hour per
side on 2 CPU threads; use ``--seconds 20`` for a shorter check.

Usage::

    python bench/bench_roformer.py [--family bs-roformer|mel-roformer|mdx23c]
        [--mode chunk|song] [--threads 2] [--rounds 2] [--warmup 0] [--seconds 180]

Needs the test-only reference (tests/audio_separator_reference.py).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODEL_TYPE = {"bs-roformer": "bs_roformer", "mel-roformer": "mel_band_roformer", "mdx23c": "mdx23c"}

PEER_SONG = r"""
import logging, sys, time
sys.path.insert(0, sys.argv[5])
import numpy as np, soundfile as sf, torch
torch.set_num_threads(int(sys.argv[4]))
from ml_collections import ConfigDict
from audio_separator_reference import reference_model, reference_module
from sepcli.models.importers.msst import read_msst_yaml
cfg = read_msst_yaml(sys.argv[1])
model_type = sys.argv[6]
ref = reference_model(model_type, cfg)
ref.load_state_dict(torch.load(sys.argv[2], weights_only=True))
t0 = time.perf_counter()
audio, rate = sf.read(sys.argv[3], dtype="float32", always_2d=True)
module = reference_module("architectures.mdxc_separator")
sep = module.MDXCSeparator.__new__(module.MDXCSeparator)
sep.logger = logging.getLogger("peer")
sep.pitch_shift = 0
sep.is_roformer = model_type != "mdx23c"
sep.override_model_segment_size = False
sep.segment_size = 256
sep.overlap = cfg["inference"].get("num_overlap", 8)
sep.batch_size = cfg["inference"].get("batch_size", 1)
sep.torch_device = sep.torch_device_cpu = torch.device("cpu")
sep.model_data_cfgdict = ConfigDict(cfg)
sep.model_run = ref
target = cfg["training"].get("target_instrument")
sep.is_primary_stem_main_target = bool(target)
if target:
    sep.primary_stem_name = target
    sep.secondary_stem_name = [i for i in cfg["training"]["instruments"] if i != target][0]
with torch.no_grad():
    out = sep.demix(audio.T.copy(), override_model_segment_size=False)
for name, wav in out.items():
    sf.write(f"peer-{name}.wav", np.asarray(wav).T, rate, subtype="FLOAT")
print(time.perf_counter() - t0)
"""


def _setup(family: str, tmp: Path, dim_t: int | None = None) -> tuple[dict, Path, Path, Path]:
    """Random published-size checkpoint, its YAML, and the imported archive."""
    import torch
    from audio_separator_reference import PUBLISHED_YAMLS, reference_model, write_msst_yaml

    from sepcli.models.importers.msst import import_msst_archive, read_msst_yaml

    model_type = MODEL_TYPE[family]
    cfg = read_msst_yaml(PUBLISHED_YAMLS[model_type])
    if dim_t is not None:
        cfg["inference"]["dim_t"] = dim_t
    ref = reference_model(model_type, cfg)
    ckpt = tmp / "model.ckpt"
    torch.save(ref.state_dict(), ckpt)
    yaml_path = write_msst_yaml(tmp / "model.yaml", cfg)
    archive = import_msst_archive(yaml_path, ckpt, tmp / "model.sepcli")
    return cfg, ckpt, yaml_path, archive


def _snr(ref, est) -> float:
    import torch

    noise = (ref - est).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


def bench_chunk(family: str, threads: int, rounds: int, dim_t: int | None, warmup: int = 0) -> None:
    import torch
    from audio_separator_reference import reference_model

    from sepcli.inference.mdxc_recipe import MdxcPlan, MdxcRecipe
    from sepcli.models.archive import count_parameters, load_archive
    from sepcli.models.importers.msst import import_msst

    torch.set_num_threads(threads)
    model_type = MODEL_TYPE[family]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, ckpt, yaml_path, archive_path = _setup(family, tmp, dim_t)
        ours, _ = import_msst(yaml_path, ckpt)
        scripted = load_archive(archive_path).module
        ref = reference_model(model_type, cfg)
        ref.load_state_dict(torch.load(ckpt, weights_only=True))
        variants = {"reference": ref, "ours": ours, "ours-script": scripted}
        if model_type != "mdx23c":
            einsum_cfg = copy.deepcopy(cfg)
            einsum_cfg["model"]["flash_attn"] = False
            slow = reference_model(model_type, einsum_cfg)
            slow.load_state_dict(torch.load(ckpt, weights_only=True))
            variants["reference-einsum"] = slow
        plan = MdxcPlan.for_family(family, ours.config)
        rate = ours.sample_rate
        g = torch.Generator().manual_seed(0)
        chunk = 0.3 * torch.randn(1, 2, plan.chunk, generator=g)
        times: dict[str, list[float]] = {k: [] for k in [*variants, "ours-bf16"]}
        outs = {}
        with torch.no_grad():
            for _ in range(warmup):  # untimed: TorchScript profiles its first calls
                for module in variants.values():
                    module(chunk)
            for _ in range(rounds):
                for name, module in variants.items():
                    start = time.perf_counter()
                    outs[name] = module(chunk)
                    times[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    outs["ours-bf16"] = ours(chunk).float()
                times["ours-bf16"].append(time.perf_counter() - start)
        if model_type != "mdx23c":
            # where the time goes: the per-band projections in and out of the transformers
            frames = plan.chunk // ours.hop_length + 1
            band_in = sum(net[1].in_features for net in ours.band_split.to_features)
            tokens = torch.randn(1, frames, band_in)
            feats = torch.randn(1, frames, len(ours.band_split.to_features), ours.config.dim)
            with torch.no_grad():
                start = time.perf_counter()
                ours.band_split(tokens)
                split = time.perf_counter() - start
                start = time.perf_counter()
                for est in ours.mask_estimators:
                    est(feats)
                masks = time.perf_counter() - start
            total = statistics.median(times["ours"])
            share = (
                f"  per chunk: band split {split:.2f} s + mask estimators {masks:.2f} s = "
                f"{100 * (split + masks) / total:.0f}% of the eager forward ({total:.2f} s)"
            )
        else:
            share = ""
        expected = outs["reference"]
        if expected.dim() == 3:
            expected = expected.unsqueeze(1)
        song = 180 * rate
        chunks = MdxcRecipe(plan).count_chunks(song)
        print(
            f"{family}: {count_parameters(ours):,} parameters, chunk {plan.chunk} samples "
            f"({plan.chunk / rate:.2f} s), num_overlap {plan.num_overlap}, {chunks} chunks "
            f"for 3 min; {threads} threads, {rounds} rounds after {warmup} untimed (medians)"
        )
        if share:
            print(share)
        base = statistics.median(times["reference"])
        for name, ts in times.items():
            t = statistics.median(ts)
            snr = _snr(expected, outs[name] if outs[name].dim() == 4 else outs[name][:, None])
            print(
                f"  {name:17s} {t:8.2f} s/chunk  x{t * chunks / 180:6.1f} real time  "
                f"speed-up {base / t:4.2f}  SNR vs reference {snr:6.1f} dB"
            )


def _real_song(seconds: int, path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from sepcli.audio import load_audio

    data = ROOT.parent / "shared" / "data" / "musdb18-preview" / "train"
    parts, total = [], 0
    for stem in sorted(data.glob("*.stem.mp4")):
        audio = load_audio(stem, stream=0)[0]
        parts.append(audio)
        total += audio.shape[-1]
        if total >= seconds * 44100:
            break
    if total < seconds * 44100:
        sys.exit(f"not enough MUSDB18 previews in {data}")
    mix = np.concatenate(parts, axis=-1)[:, : seconds * 44100]
    sf.write(path, mix.T, 44100, subtype="FLOAT")


def bench_song(family: str, threads: int, rounds: int, seconds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, ckpt, yaml_path, archive = _setup(family, tmp)
        song = tmp / "song.wav"
        _real_song(seconds, song)
        sepcli = str(Path(sys.executable).with_name("sepcli"))
        ours_cmd = [sepcli, "separate", str(song), "-m", str(archive), "-o", str(tmp / "out"),
                    "--threads", str(threads), "--bit-depth", "32", "--clip", "none",
                    "--force", "--quiet"]  # fmt: skip
        peer_cmd = [sys.executable, "-c", PEER_SONG, str(yaml_path), str(ckpt), str(song),
                    str(threads), str(ROOT / "tests"), MODEL_TYPE[family]]  # fmt: skip
        times: dict[str, list[float]] = {"ours": [], "peer": []}
        for _ in range(rounds):
            for name, cmd in (("peer", peer_cmd), ("ours", ours_cmd)):
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                if proc.returncode:
                    sys.exit(f"{name} failed: {proc.stderr[-2000:]}")
                times[name].append(time.perf_counter() - start)
        ours, peer = statistics.median(times["ours"]), statistics.median(times["peer"])
        print(
            f"{family}: {seconds} s of real music, {threads} threads, {rounds} rounds: "
            f"sepcli {ours:.1f} s (x{ours / seconds:.1f} real time), audio-separator "
            f"{peer:.1f} s (x{peer / seconds:.1f}); peer / ours = {peer / ours:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(MODEL_TYPE), default="bs-roformer")
    parser.add_argument("--mode", choices=("chunk", "song"), default="chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls of each variant first")
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument(
        "--dim-t", type=int, default=None, help="chunk frames (default: the published dim_t)"
    )
    args = parser.parse_args()
    if args.mode == "chunk":
        bench_chunk(args.family, args.threads, args.rounds, args.dim_t, args.warmup)
    else:
        bench_song(args.family, args.threads, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
