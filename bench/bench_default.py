"""End-to-end separation time of a 3-minute stereo track on 2 CPU threads.

Ours: the installed ``sepcli separate`` with default settings (decode, resample,
chunked inference, phase step, encode) on a given model, timed as a subprocess.
Peer, back to back on the same file: the ``openunmix`` package's UMX-HQ
``Separator`` (four targets, Wiener filtering with 1 iteration, as
``umx song.wav`` runs it), with random weights of the umxhq size (speed does
not depend on weight values; the published weights cannot be downloaded here),
fed the decoded file and writing its four stems with soundfile. Second peer
(``--htdemucs-rounds``, default 1 because it is slow): HTDemucs as ``demucs
song.wav`` runs it (the ``htdemucs`` architecture at its published size,
41,984,456 parameters, random weights; input normalisation, ``apply_model``
with ``shifts=1``, ``split=True``, ``overlap=0.25``; four stems written).

Usage::

    python bench/bench_default.py [--model default] [--minutes 3] [--rounds 3] [--threads 2]
        [--htdemucs-rounds 1]

Prints medians over the rounds and the ratio peer / ours. Needs ``openunmix``
(``pip install --no-deps openunmix``) and, for HTDemucs, ``pip install --no-deps
demucs==4.0.1 julius einops omegaconf antlr4-python3-runtime==4.9.3`` (its
``torchaudio`` and ``dora`` imports are stubbed: neither is used for inference).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

PEER = r"""
import sys, time, types
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
import numpy as np, soundfile as sf, torch
torch.set_num_threads(int(sys.argv[3]))
from openunmix import model as oum, utils as ouu
torch.manual_seed(0)
t0 = time.perf_counter()
audio, rate = sf.read(sys.argv[1], dtype="float32", always_2d=True)
max_bin = int(ouu.bandwidth_to_max_bin(rate, 4096, 16000))
targets = {t: oum.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=max_bin).eval()
           for t in ("vocals", "drums", "bass", "other")}
sep = oum.Separator(targets, niter=1, residual=False, n_fft=4096, n_hop=1024, sample_rate=rate,
                    wiener_win_len=300).eval()
with torch.no_grad():
    est = sep(torch.from_numpy(audio.T.copy())[None])
for i, name in enumerate(("vocals", "drums", "bass", "other")):
    sf.write(f"{sys.argv[2]}/{name}.wav", est[0, i].numpy().T, rate, subtype="PCM_16")
print(time.perf_counter() - t0)
"""

HTDEMUCS = r"""
import sys, time, types
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
dora, dora_log = types.ModuleType("dora"), types.ModuleType("dora.log")
dora_log.fatal, dora.log = print, dora_log
sys.modules.setdefault("dora", dora); sys.modules.setdefault("dora.log", dora_log)
import numpy as np, soundfile as sf, torch
torch.set_num_threads(int(sys.argv[3]))
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs
torch.manual_seed(0)
t0 = time.perf_counter()
audio, rate = sf.read(sys.argv[1], dtype="float32", always_2d=True)
model = HTDemucs(sources=["drums", "bass", "other", "vocals"], samplerate=44100, segment=7.8,
                 channels=48, depth=4, t_layers=5, bottom_channels=512, t_dropout=0.02,
                 dconv_mode=3, cac=True).eval()
wav = torch.from_numpy(audio.T.copy())
ref = wav.mean(0)
wav = (wav - ref.mean()) / ref.std()
with torch.no_grad():
    est = apply_model(model, wav[None], shifts=1, split=True, overlap=0.25, progress=False)[0]
est = est * ref.std() + ref.mean()
for i, name in enumerate(model.sources):
    sf.write(f"{sys.argv[2]}/{name}.wav", est[i].numpy().T, rate, subtype="PCM_16")
print(time.perf_counter() - t0)
"""


def write_track(path: Path, minutes: float, sample_rate: int = 44100) -> None:
    rng = np.random.default_rng(0)
    n = int(minutes * 60 * sample_rate)
    t = np.arange(n) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    audio = np.stack([tone, np.roll(tone, 100)], axis=1) + 0.03 * rng.standard_normal((n, 2))
    sf.write(str(path), audio.astype(np.float32), sample_rate, subtype="PCM_16")


def time_ours(sepcli: str, src: Path, out: Path, model: str, threads: int) -> float:
    cmd = [
        sepcli,
        "separate",
        str(src),
        "-o",
        str(out),
        "-m",
        model,
        "--threads",
        str(threads),
        "--force",
        "--quiet",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sepcli failed: {proc.stderr}")
    return time.perf_counter() - start


def time_peer(src: Path, out: Path, threads: int, script: str = PEER) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(src), str(out), str(threads)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"peer failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="time only sepcli")
    parser.add_argument(
        "--htdemucs-rounds", type=int, default=1, help="rounds of HTDemucs (0 = skip it)"
    )
    args = parser.parse_args()
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    ours, peer, htdemucs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "track.wav"
        write_track(src, args.minutes)
        for i in range(args.rounds):  # interleaved so that machine load affects all alike
            ours.append(time_ours(sepcli, src, Path(tmp) / "ours", args.model, args.threads))
            if not args.no_peer:
                peer.append(time_peer(src, Path(tmp) / "peer", args.threads))
                if i < args.htdemucs_rounds:
                    htdemucs.append(time_peer(src, Path(tmp) / "htd", args.threads, HTDEMUCS))
    print(
        f"input: {args.minutes:g} min stereo 44.1 kHz, {args.threads} threads, {args.rounds} rounds, "
        f"cpu count {os.cpu_count()}"
    )
    print(
        f"sepcli separate -m {args.model}: median {statistics.median(ours):.2f} s "
        f"(runs {', '.join(f'{v:.2f}' for v in ours)})"
    )
    if peer:
        print(
            f"openunmix UMX-HQ Separator (niter=1): median {statistics.median(peer):.2f} s "
            f"(runs {', '.join(f'{v:.2f}' for v in peer)})"
        )
        print(f"ratio openunmix / sepcli: {statistics.median(peer) / statistics.median(ours):.2f}x")
    if htdemucs:
        print(
            f"HTDemucs (apply_model, shifts=1, overlap=0.25): median "
            f"{statistics.median(htdemucs):.2f} s (runs {', '.join(f'{v:.2f}' for v in htdemucs)})"
        )
        print(
            f"ratio HTDemucs / sepcli: {statistics.median(htdemucs) / statistics.median(ours):.2f}x"
        )


if __name__ == "__main__":
    main()
