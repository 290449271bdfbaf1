"""Live separation: latency, underruns and real-time factor; quality against latency.

Two parts (``--skip-timing`` / ``--skip-sdr`` drop one):

* **Timing.** For each ``--model`` (with its ``--latency``), the latency sepcli
  promises (:func:`sepcli.inference.live.prepare`: the chunk plan's delay plus
  1.5 x the longest warm-up push plus 50 ms) becomes the playback delay of a
  :class:`~sepcli.inference.live.LiveEngine` fed in real time, 1024-frame
  blocks, by a clock thread standing in for a sound card (the same
  push/pull a PortAudio callback makes), for ``--minutes`` of audio: the MUSDB18
  previews in ../shared/data played one after another (a synthetic track
  without them). Reported: the playback delay (what a listener hears, constant by
  construction), the input-sample-to-stems-ready latency (median, p99, max:
  it must stay under the delay), underruns, overruns and the real-time factor.
  ``htdemucs`` is the ``demucs`` package's ``HTDemucs`` at the published size
  (``bench_htdemucs.PUBLISHED``) with random weights (speed does not depend on
  the weight values), imported with ``sepcli models import --format demucs``.
* **Quality.** Vocals and accompaniment SDR (global SDR, as MDX/``evaluate
  --metric`` ``SDR``; median over tracks) of the default model on the 14
  validation previews it was not trained on, for the offline plan and each
  ``--sdr-latencies`` plan. Streaming with a plan gives exactly the offline run
  with that plan (tests/test_live.py), so the plans are run whole-track here.

Usage::

    python bench/bench_live.py [--minutes 10] [--threads 2] [--model default=1.0]
        [--model htdemucs=12] [--sdr-latencies 0.5,1,2,4] [--sdr-seconds 30]

Run it on an idle machine: timings taken while other jobs run are upper bounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb18-preview" / "train"
BLOCK = 1024
RATE = 44100


def htdemucs_archive(tmp: Path) -> Path:
    from bench_htdemucs import write_checkpoint

    th = write_checkpoint(tmp, narrow=False)
    archive = tmp / "htdemucs.sepcli"
    subprocess.run([sys.executable, "-m", "sepcli", "models", "import", "--format", "demucs",
                    str(th), "-o", str(archive)], check=True, capture_output=True)  # fmt: skip
    return archive


def song(minutes: float) -> tuple[np.ndarray, str]:
    import soundfile as sf
    from bench_htdemucs import write_song

    with tempfile.TemporaryDirectory() as tmp:
        label = write_song(Path(tmp) / "song.wav", minutes)
        audio, _ = sf.read(Path(tmp) / "song.wav", dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), label


def time_model(model: str, latency: float, x: np.ndarray, tmp: Path, check: bool) -> dict:
    from sepcli.hub import load_model
    from sepcli.inference import live
    from sepcli.inference.separator import Separator

    archive = load_model(str(htdemucs_archive(tmp)) if model == "htdemucs" else model)
    plan = live.plan_for_latency(archive.metadata, Separator(archive).config, latency)
    sep = Separator(archive, plan.config, device="cpu")
    stems = list(sep.sources)
    try:
        delay_s, alg, warm = live.prepare(sep, stems, RATE, 2, BLOCK, check=check)
    except live.TooSlowError as e:
        return {"model": model, "latency": latency, "error": str(e)}
    delay = int(round(delay_s * RATE))
    engine = live.LiveEngine(sep, stems, RATE, 2, delay, block_frames=BLOCK)
    engine.start()
    start = time.monotonic()
    n, total = 0, x.shape[1] + delay + BLOCK
    while n < total:
        piece = x[:, n : n + BLOCK]
        if piece.shape[1]:
            engine.push(piece)
        elif not engine._in_closed:
            engine.close_input()
        engine.pull(BLOCK)
        n += BLOCK
        wait = start + n / RATE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    engine.close_input()
    engine.join(60)
    st = engine.stats
    lat = st.latencies or [0.0]
    return {
        "model": model,
        "latency": latency,
        "plan": "own" if plan.offline else f"{plan.segment_seconds:.2f}+{plan.context_seconds:.2f}",
        "delay": delay_s,
        "median": statistics.median(lat),
        "p99": float(np.percentile(lat, 99)),
        "max": max(lat),
        "underruns": st.underruns,
        "overruns": st.overruns,
        "rtf": st.rtf,
        "warm_rtf": warm.rtf,
        "alg": alg / RATE,
        "minutes": x.shape[1] / RATE / 60,
    }


def sdr_table(latencies: list[float], seconds: float) -> list[dict]:
    from sepcli.audio import load_audio
    from sepcli.evaluation.metrics import global_sdr
    from sepcli.hub import load_model
    from sepcli.inference import live
    from sepcli.inference.separator import Separator

    archive = load_model("default")
    valid = archive.metadata.extra["training"]["valid_tracks"]
    files = [f for f in sorted(SHARED.glob("*.stem.mp4")) if f.name.split(".stem")[0] in valid]
    n = int(seconds * RATE)
    tracks = []
    for f in files:
        mix = load_audio(f, stream=0)[0][:, :n]
        vocals = load_audio(f, stream=4)[0][:, :n]
        tracks.append((mix, vocals))
    rows = []
    for latency in [None, *latencies]:
        plan = live.plan_for_latency(archive.metadata, Separator(archive).config, latency)
        sep = Separator(archive, plan.config, device="cpu")
        alg = live.algorithmic_latency(sep, ["vocals"], RATE, 2, BLOCK) / RATE
        voc, acc = [], []
        for mix, vocals in tracks:
            est = sep.separate(mix, RATE, ["vocals", "accompaniment"])
            ref = torch.from_numpy(np.stack([vocals, mix - vocals]))[None]
            got = torch.stack([est["vocals"], est["accompaniment"]])[None]
            sdr = global_sdr(ref, got)[0]
            voc.append(float(sdr[0]))
            acc.append(float(sdr[1]))
        rows.append({
            "latency": "offline" if latency is None else f"{latency:g}",
            "plan": "own (10 s + 2 s)" if plan.offline
            else f"{plan.segment_seconds:.3f} + {plan.context_seconds:.3f}",
            "delay": alg,
            "vocals": statistics.median(voc),
            "accompaniment": statistics.median(acc),
            "tracks": len(tracks),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="append", default=None, help="NAME=LATENCY")
    parser.add_argument("--sdr-latencies", default="0.5,1,2,4")
    parser.add_argument("--sdr-seconds", type=float, default=30.0)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-sdr", action="store_true")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="run even when the warm-up says the model cannot keep up (count what happens)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or ["default=1.0", "htdemucs=12"]
    if not args.skip_timing:
        x, label = song(args.minutes)
        print(f"timing: {label}, {args.minutes:g} min, {args.threads} threads", flush=True)
        print("| model | --latency | plan | delay s | ready median s | p99 s | max s "
              "| underruns | overruns | RTF |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for item in models:
                name, _, lat = item.partition("=")
                r = time_model(name, float(lat or 1.0), x, Path(tmp), not args.no_check)
                if "error" in r:
                    print(f"| {name} | {lat} | {r['error']} |", flush=True)
                    continue
                print(f"| {name} | {lat} | {r['plan']} | {r['delay']:.2f} | {r['median']:.3f} "
                      f"| {r['p99']:.3f} | {r['max']:.3f} | {r['underruns']} | {r['overruns']} "
                      f"| {r['rtf']:.3f} |", flush=True)  # fmt: skip
    if not args.skip_sdr:
        lats = [float(v) for v in args.sdr_latencies.split(",") if v]
        rows = sdr_table(lats, args.sdr_seconds)
        print("| --latency | plan (segment + look-ahead s) | plan delay s | vocals SDR "
              "| accompaniment SDR |")  # fmt: skip
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['latency']} | {r['plan']} | {r['delay']:.2f} | {r['vocals']:.2f} "
                  f"| {r['accompaniment']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
