"""Quality and speed of the phase methods: the table of docs/phase.md.

    python bench/bench_phase.py MODEL_ARCHIVE --data ../shared/data
    python bench/bench_phase.py --oracle --data ../shared/data      # true stem magnitudes

For each method (mixture phase; Wiener with 0, 1, 2 EM iterations; fast
Griffin-Lim with 32 and 100 iterations from random and from mixture phase; MISI)
it prints vocals and accompaniment SDR (BSSEval v4 via
:func:`sepcli.evaluation.bsseval.bss_eval_v4`, 1 s windows: median over the
windows of a track, then median over the tracks) and seconds per minute of audio.

Tracks: the 14 MUSDB18 validation tracks of ``DATA/musdb18-preview`` (7 s
previews). The mixture is the sum of the four stems (the stored AAC mixture
differs from it by about 27 dB), and the accompaniment reference is
drums + bass + other.

* With a model (``output: magnitude``), every method runs through
  :class:`sepcli.inference.separator.Separator` (chunking included), so the
  time is the whole separation; accompaniment is the separator's derived stem.
* With ``--oracle`` the magnitudes are the true stem magnitudes (STFT
  ``--n-fft``/``--hop``, Open-Unmix's 4096/1024 by default), the whole track is
  one chunk, and the time is the phase step alone
  (:func:`sepcli.dsp.phase.reconstruct`); accompaniment is the sum of the
  drums, bass and other estimates. This is an upper bound on what a perfect
  magnitude model would get from each phase method.

Random initialisations are seeded (seed 0) so the table is reproducible.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sepcli.datasets import open_dataset
from sepcli.dsp.phase import reconstruct
from sepcli.dsp.stft import stft
from sepcli.evaluation.bsseval import bss_eval_v4

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("drums", "bass", "other", "vocals")

#: (label, method, options) rows of the table.
METHODS: list[tuple[str, str, dict]] = [
    ("mixture phase", "mixture", {}),
    ("Wiener, 0 iterations", "wiener", {"wiener_iters": 0}),
    ("Wiener, 1 iteration", "wiener", {"wiener_iters": 1}),
    ("Wiener, 2 iterations", "wiener", {"wiener_iters": 2}),
    ("Griffin-Lim 32, random init", "griffin-lim", {"gl_iters": 32, "gl_init": "random"}),
    ("Griffin-Lim 100, random init", "griffin-lim", {"gl_iters": 100, "gl_init": "random"}),
    ("Griffin-Lim 32, mixture init", "griffin-lim", {"gl_iters": 32, "gl_init": "mixture"}),
    ("Griffin-Lim 100, mixture init", "griffin-lim", {"gl_iters": 100, "gl_init": "mixture"}),
    ("MISI 32, mixture init", "misi", {"gl_iters": 32, "gl_init": "mixture"}),
]


@dataclass
class Row:
    label: str
    vocals: list[float] = field(default_factory=list)
    accompaniment: list[float] = field(default_factory=list)
    track_seconds: list[float] = field(default_factory=list)


def track_sdr(references: torch.Tensor, estimates: torch.Tensor) -> tuple[float, float]:
    """Median over 1 s windows of BSSEval v4 SDR for (vocals, accompaniment)."""
    sdr = bss_eval_v4(references, estimates).sdr.numpy()
    return float(np.nanmedian(sdr[0])), float(np.nanmedian(sdr[1]))


def oracle_track(stems: torch.Tensor, rows: list[Row], n_fft: int, hop: int) -> None:
    """``stems``: ``(4, channel, time)`` in SOURCES order."""
    length = stems.shape[-1]
    mix_spec = stft(stems.sum(0, keepdim=True), n_fft, hop)
    mags = stft(stems.unsqueeze(0), n_fft, hop).abs()
    refs = torch.stack([stems[3], stems[:3].sum(0)])
    for row, (_, method, options) in zip(rows, METHODS, strict=True):
        start = time.perf_counter()
        est = reconstruct(
            method,
            mags,
            mix_spec,
            n_fft,
            hop,
            length,
            generator=torch.Generator().manual_seed(0),
            **options,
        )[0]
        row.track_seconds.append(time.perf_counter() - start)
        vocals, acc = track_sdr(refs, torch.stack([est[3], est[:3].sum(0)]))
        row.vocals.append(vocals)
        row.accompaniment.append(acc)


def model_track(archive, stems: torch.Tensor, rows: list[Row], segment: float | None) -> None:
    from sepcli.inference.separator import Separator

    mix = stems.sum(0)
    refs = torch.stack([stems[3], stems[:3].sum(0)])
    for row, (_, method, options) in zip(rows, METHODS, strict=True):
        sep = Separator(
            archive, device="cpu", phase=method, seed=0, segment_seconds=segment, **options
        )
        start = time.perf_counter()
        out = sep.separate(mix, 44100, stems=["vocals", "accompaniment"])
        row.track_seconds.append(time.perf_counter() - start)
        est = torch.stack([torch.as_tensor(out["vocals"]), torch.as_tensor(out["accompaniment"])])
        vocals, acc = track_sdr(refs, est)
        row.vocals.append(vocals)
        row.accompaniment.append(acc)


def gl_drift(data: Path, seconds: float = 3.0, iterations: int = 32) -> None:
    """Does Griffin-Lim keep the true phase when the magnitudes are slightly wrong?

    True stem magnitudes of the first validation track times log-normal noise
    (sigma 0, 0.05, 0.2); plain SDR over the four sources, true phase versus
    Griffin-Lim started from the true phase.
    """
    from sepcli.dsp.griffinlim import griffin_lim
    from sepcli.dsp.stft import istft

    track = open_dataset(data / "musdb18-preview", subset="valid")[0]
    audio = track.load(list(SOURCES), sample_rate=44100)
    stems = torch.from_numpy(np.stack([audio[s] for s in SOURCES]))[..., : int(seconds * 44100)]
    stems = stems.unsqueeze(0)
    n_fft, hop, length = 2048, 512, stems.shape[-1]
    spec = stft(stems, n_fft, hop)
    phase = spec / spec.abs().clamp_min(1e-20)

    def sdr(est: torch.Tensor) -> float:
        err = (stems - est).pow(2).sum()
        return float(10 * torch.log10(stems.pow(2).sum() / err))

    print(
        f"# GL drift: {track.name}, first {seconds:g} s, STFT {n_fft}/{hop}, {iterations} iterations"
    )
    print("| magnitude noise (sigma) | true phase SDR | GL plain | GL fast (0.99) |")
    print("|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.0, 0.05, 0.2):
        mags = spec.abs() * torch.exp(sigma * torch.randn(spec.shape, generator=gen))
        true = sdr(istft(mags * phase, n_fft, hop, length))
        plain = sdr(griffin_lim(mags, n_fft, hop, length, iterations, "mixture", spec, 0.0))
        fast = sdr(griffin_lim(mags, n_fft, hop, length, iterations, "mixture", spec, 0.99))
        print(f"| {sigma:g} | {true:.2f} | {plain:.2f} | {fast:.2f} |", flush=True)


def track_record(name: str, audio_seconds: float, rows: list[Row]) -> dict:
    """The last track's results, as one JSON line."""
    return {
        "track": name,
        "audio_seconds": audio_seconds,
        "rows": {r.label: [r.vocals[-1], r.accompaniment[-1], r.track_seconds[-1]] for r in rows},
    }


def rows_from_records(records: list[dict]) -> tuple[list[Row], float]:
    rows = [Row(label) for label, _, _ in METHODS]
    for record in records:
        for row in rows:
            vocals, acc, seconds = record["rows"][row.label]
            row.vocals.append(vocals)
            row.accompaniment.append(acc)
            row.track_seconds.append(seconds)
    return rows, sum(r["audio_seconds"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", help="model archive (output: magnitude)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--oracle", action="store_true", help="use the true stem magnitudes")
    parser.add_argument("--n-fft", type=int, default=4096)
    parser.add_argument("--hop", type=int, default=1024)
    parser.add_argument("--segment", type=float, default=None, help="separator chunk length (s)")
    parser.add_argument(
        "--tracks", default=None, help="a slice START:STOP of the sorted validation tracks"
    )
    parser.add_argument("--jsonl", type=Path, help="append one JSON line of results per track")
    parser.add_argument(
        "--table-from", type=Path, nargs="+", help="only print the table of saved JSON lines"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gl-drift", action="store_true", help="only the Griffin-Lim drift check (true phase)"
    )
    args = parser.parse_args()
    if args.gl_drift:
        torch.set_num_threads(args.threads)
        gl_drift(args.data)
        return
    if args.table_from:
        lines = [line for p in args.table_from for line in p.read_text().splitlines() if line]
        records = {r["track"]: r for r in map(json.loads, lines)}
        rows, total = rows_from_records(list(records.values()))
        print_table(rows, total, len(records), args)
        return
    if not args.oracle and not args.model:
        parser.error("give a MODEL_ARCHIVE or --oracle")
    torch.set_num_threads(args.threads)

    archive = None
    if not args.oracle:
        from sepcli.models.archive import load_archive

        archive = load_archive(args.model, device="cpu")
        if archive.metadata.output != "magnitude":
            parser.error(
                f"{args.model}: output is {archive.metadata.output!r}; the phase step needs 'magnitude'"
            )

    tracks = open_dataset(args.data / "musdb18-preview", subset="valid")
    if args.tracks:
        first, _, last = args.tracks.partition(":")
        tracks = tracks[int(first or 0) : int(last) if last else None]
    rows = [Row(label) for label, _, _ in METHODS]
    total_seconds = 0.0
    for track in tracks:
        audio = track.load(list(SOURCES), sample_rate=44100)
        stems = torch.from_numpy(np.stack([audio[s] for s in SOURCES]))
        seconds = stems.shape[-1] / 44100
        total_seconds += seconds
        if args.oracle:
            oracle_track(stems, rows, args.n_fft, args.hop)
        else:
            model_track(archive, stems, rows, args.segment)
        if args.jsonl:
            with args.jsonl.open("a") as fh:
                fh.write(json.dumps(track_record(track.name, seconds, rows)) + "\n")
        done = len(rows[0].vocals)
        print(f"# done {track.name} ({done}/{len(tracks)})", flush=True)
        print_table(rows, total_seconds, done, args)


def print_table(
    rows: list[Row], total_seconds: float, tracks: int, args: argparse.Namespace
) -> None:
    """The markdown table over the tracks done so far (printed after every track)."""
    what = (
        f"ORACLE magnitudes (true stems), STFT {args.n_fft}/{args.hop}, time = phase step only"
        if args.oracle
        else f"model {args.model}, time = whole separation (Separator, CPU)"
    )
    print(
        f"\n# {what}; {tracks} validation tracks, {total_seconds:.0f} s of audio; "
        f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}"
    )
    print("\n| method | vocals SDR (dB) | accompaniment SDR (dB) | s per min of audio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        per_min = sum(row.track_seconds) / (total_seconds / 60)
        print(
            f"| {row.label} | {statistics.median(row.vocals):.2f} | "
            f"{statistics.median(row.accompaniment):.2f} | {per_min:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
