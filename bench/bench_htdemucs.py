"""HT-Demucs: ``sepcli separate`` against the ``demucs`` package's own path, same files.

Both sides read the same WAV (a song made of real MUSDB18 previews from
``../shared/data``, or a synthetic track when the data is absent) and write four
16-bit WAV stems; each runs as a fresh subprocess with the same thread count,
interleaved round by round so that machine load affects both alike. Times are
wall clock of the whole subprocess (imports, decode, separation, encode); peak
RSS is the child's, as GNU ``time -v`` reports it.

* peer: ``demucs.states.load_model(FILE.th)`` and
  ``apply_model(model, mix, shifts=1, split=True, overlap=0.25)`` after Demucs'
  own input normalisation (``demucs.separate``'s defaults);
* ours: ``sepcli separate -m X.sepcli`` (the archive imported once from the same
  ``.th`` with ``sepcli models import --format demucs``; not timed) with
  ``--shifts 0`` (and ``--shifts 1`` when ``--our-shifts 1``).

The checkpoint is written in Demucs' file format with random weights at the
published ``htdemucs`` size (speed does not depend on weight values).

Usage::

    python bench/bench_htdemucs.py [--minutes 3] [--rounds 1] [--threads 2] [--our-shifts 0]
        [--batch-size 1] [--memory-minutes 0] [--narrow]

``--narrow`` uses 8 channels instead of 48 (fast; for the memory scaling check),
``--memory-minutes M`` also runs ours on an M-minute input (the song repeated) and
reports its peak RSS next to the 3-minute one. Needs ``pip install --no-deps
demucs==4.1.0 einops julius``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_memory import measure  # this folder is on sys.path when run as a script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb18-preview" / "train"

PEER = r"""
import sys, time
import numpy as np, soundfile as sf, torch
torch.set_num_threads(int(sys.argv[3]))
from demucs.apply import apply_model
from demucs.states import load_model
t0 = time.perf_counter()
model = load_model(sys.argv[4]).eval()
audio, rate = sf.read(sys.argv[1], dtype="float32", always_2d=True)
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

PUBLISHED = dict(
    samplerate=44100, segment=Fraction(39, 5), channels=48, nfft=4096, depth=4, dconv_mode=3,
    bottom_channels=512, t_layers=5, t_heads=8, t_dropout=0.02,
)  # fmt: skip


def write_song(path: Path, minutes: float) -> str:
    """The first ``minutes`` of the MUSDB18 previews played one after another."""
    n = int(minutes * 60 * 44100)
    files = sorted(SHARED.glob("*.stem.mp4")) if SHARED.is_dir() else []
    if files:
        from sepcli.audio import load_audio

        parts, total = [], 0
        for f in files:
            audio, _ = load_audio(f, stream=0)
            parts.append(audio)
            total += audio.shape[-1]
            if total >= n:
                break
        song = np.concatenate(parts, axis=-1)
        reps = -(-n // song.shape[-1])
        song = np.tile(song, (1, reps))[:, :n]
        label = f"MUSDB18 previews ({len(parts)} files)"
    else:
        rng = np.random.default_rng(0)
        t = np.arange(n) / 44100
        tone = 0.2 * np.sin(2 * np.pi * 220 * t)
        song = np.stack([tone, np.roll(tone, 100)]) + 0.03 * rng.standard_normal((2, n))
        label = "synthetic tone + noise (no ../shared/data)"
    sf.write(str(path), song.T.astype(np.float32), 44100, subtype="PCM_16")
    return label


def write_checkpoint(folder: Path, narrow: bool) -> Path:
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    kwargs = dict(PUBLISHED)
    if narrow:
        kwargs.update(channels=8, dconv_comp=4, bottom_channels=64)
    torch.manual_seed(0)
    model = HTDemucs(["drums", "bass", "other", "vocals"], **kwargs)
    args, kw = model._init_args_kwargs
    path = folder / "955717e8.th"
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kw,
                "state": get_state(model, None, half=True), "training_args": {}}, path)  # fmt: skip
    return path


def run_timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a subprocess, by ``bench_memory.measure``.

    That reads the peak from ``/usr/bin/time -v``: the child's ``ru_maxrss`` seen
    by this process through ``wait4`` would include this process's own resident
    size at the fork (Linux keeps the high-water mark across ``exec``), and this
    process holds the long song it wrote.
    """
    rss, wall = measure(cmd)
    return wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--our-shifts", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--memory-minutes", type=float, default=0.0)
    parser.add_argument("--narrow", action="store_true", help="8-channel model (fast)")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    sepcli = shutil.which("sepcli") or str(Path(sys.executable).parent / "sepcli")
    ours, peer = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        label = write_song(tmp / "song.wav", args.minutes)
        th = write_checkpoint(tmp, args.narrow)
        archive = tmp / "htdemucs.sepcli"
        subprocess.run([sepcli, "models", "import", "--format", "demucs", str(th), "-o",
                        str(archive)], check=True, capture_output=True)  # fmt: skip
        ours_cmd = [sepcli, "separate", str(tmp / "song.wav"), "-m", str(archive), "-o",
                    str(tmp / "ours"), "--threads", str(args.threads), "--shifts",
                    str(args.our_shifts), "--batch-size", str(args.batch_size), "--force",
                    "--quiet"]  # fmt: skip
        (tmp / "peer").mkdir()
        peer_cmd = [sys.executable, "-c", PEER, str(tmp / "song.wav"), str(tmp / "peer"),
                    str(args.threads), str(th)]  # fmt: skip
        for _ in range(args.rounds):
            ours.append(run_timed(ours_cmd))
            if not args.no_peer:
                peer.append(run_timed(peer_cmd))
        long_rss = None
        if args.memory_minutes:
            write_song(tmp / "long.wav", args.memory_minutes)
            cmd = [c if c != str(tmp / "song.wav") else str(tmp / "long.wav") for c in ours_cmd]
            long_rss = run_timed(cmd)
    size = "narrow (8 channels)" if args.narrow else "published htdemucs size (41,984,456 params)"
    print(f"input: {args.minutes:g} min, {label}; model: {size}; {args.threads} threads; "
          f"{args.rounds} rounds; cpu count {os.cpu_count()}")  # fmt: skip

    def show(name: str, runs: list[tuple[float, float]]) -> float:
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        print(f"{name}: median {wall:.1f} s (runs {', '.join(f'{r[0]:.1f}' for r in runs)}), "
              f"peak RSS {rss:.0f} MB")  # fmt: skip
        return wall

    mine = show(f"sepcli separate --shifts {args.our_shifts} --batch-size {args.batch_size}", ours)
    if peer:
        theirs = show("demucs apply_model (shifts=1, overlap=0.25, split)", peer)
        print(f"ratio demucs / sepcli: {theirs / mine:.2f}x")
    if long_rss:
        print(f"sepcli on {args.memory_minutes:g} min: {long_rss[0]:.1f} s, peak RSS "
              f"{long_rss[1]:.0f} MB ({long_rss[1] / max(r[1] for r in ours):.2f}x the "
              f"{args.minutes:g}-min figure)")  # fmt: skip


if __name__ == "__main__":
    main()
