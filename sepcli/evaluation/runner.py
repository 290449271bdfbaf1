"""Score separations of a dataset the way the field does (museval's conventions).

For each track: decode the references, get the estimates (a model through the
same :class:`~sepcli.inference.separator.Separator` as ``sepcli separate``, an
oracle, or files ``DIR/<track>/<stem>.<ext>``), score them, and write one JSON
per track in museval's per-frame format (``OUT/<subset>/<track>.json``). Tracks
already scored in ``OUT`` are read back instead of scored again (resume).

Grouping follows ``museval.eval_mus_track``: when both ``vocals`` and
``accompaniment`` are scored they are evaluated as a pair; the other stems
(with ``vocals``) are evaluated together and ``vocals`` is reported from the
pair. A single stem is scored against its complement (``accompaniment`` for
``vocals``, else the sum of the other sources; the estimated complement is the
mixture minus the estimate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sepcli import __version__, atomic
from sepcli.audio import AUDIO_SUFFIXES, load_audio, write_audio
from sepcli.datasets import Track
from sepcli.errors import AudioError, DatasetError, SepcliError, UsageError
from sepcli.evaluation.bsseval import bss_eval_v4, match_length
from sepcli.evaluation.metrics import aggregate, global_sdr, si_sdr
from sepcli.evaluation.oracles import ORACLES, oracle_separate
from sepcli.progress import Progress, ProgressFn

__all__ = [
    "METRIC_KINDS",
    "EvalConfig",
    "Estimator",
    "SeparatorEstimator",
    "OracleEstimator",
    "DirectoryEstimator",
    "RunResult",
    "score_track",
    "evaluate_tracks",
    "read_track_json",
    "summary_from_dir",
]

logger = logging.getLogger(__name__)

METRIC_KINDS = ("bsseval", "sdr", "sisdr")
_MIXING = ("drums", "bass", "other", "vocals")


@dataclass(frozen=True)
class EvalConfig:
    """Options of an evaluation run.

    Attributes:
        metrics: ``bsseval`` (framewise SDR/ISR/SIR/SAR), ``sdr`` (MDX global
            SDR) or ``sisdr`` (SI-SDR); the last two give one frame per track.
        stems: stems to score (default: every stem both sides have, without mixture).
        window, hop: BSSEval window and hop in seconds (museval: 1 and 1).
        filters_len: BSSEval distortion filter length (museval: 512; other values
            give figures that are not comparable with published ones).
        samples: length in seconds of listening excerpts to write (None: none).
        write_estimates: also write the estimates as ``OUT/estimates/<track>/<stem>.wav``.
        device: where the metrics are computed.
    """

    metrics: str = "bsseval"
    stems: tuple[str, ...] | None = None
    window: float = 1.0
    hop: float = 1.0
    filters_len: int = 512
    samples: float | None = None
    write_estimates: bool = False
    device: str = "cpu"


class Estimator(Protocol):
    """Makes estimates for one track."""

    label: str
    #: what makes the estimates (JSON-able); results in an output folder are only
    #: resumed by an estimator with the same identity
    identity: dict[str, Any]

    def available(self, track: Track) -> Sequence[str] | None:
        """Stems this estimator can give for ``track`` (None: any)."""

    def estimate(
        self,
        track: Track,
        stems: Sequence[str],
        references: Mapping[str, np.ndarray],
        sample_rate: int,
    ) -> dict[str, np.ndarray]:
        """Estimates ``(channel, time)`` for ``stems``."""


class SeparatorEstimator:
    """Estimates from a :class:`~sepcli.inference.separator.Separator` (the ``separate`` pipeline)."""

    def __init__(self, separator: Any, label: str) -> None:
        from sepcli.inference.stems import available_stems

        self.separator = separator
        self.label = label
        self._stems = available_stems(separator.sources)
        self.identity = {
            "kind": "model",
            "weights": _weights_digest(separator.archive),
            **separator.identity(),
        }

    def available(self, track: Track) -> Sequence[str] | None:
        return self._stems

    def estimate(
        self,
        track: Track,
        stems: Sequence[str],
        references: Mapping[str, np.ndarray],
        sample_rate: int,
    ) -> dict[str, np.ndarray]:
        out = self.separator.separate(references["mixture"], sample_rate, list(stems))
        return {name: value.detach().cpu().numpy() for name, value in out.items()}


class OracleEstimator:
    """Estimates from the true sources (see :mod:`sepcli.evaluation.oracles`)."""

    def __init__(self, method: str, n_fft: int = 4096, hop_length: int = 1024) -> None:
        if method not in ORACLES:
            raise UsageError(
                f"unknown oracle {method!r}; choose from {', '.join('oracle:' + o for o in ORACLES)}"
            )
        self.method = method
        self.label = f"oracle:{method}"
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.identity = {"kind": "oracle", "method": method, "n_fft": n_fft, "hop": hop_length}

    def available(self, track: Track) -> Sequence[str] | None:
        return None

    def estimate(
        self,
        track: Track,
        stems: Sequence[str],
        references: Mapping[str, np.ndarray],
        sample_rate: int,
    ) -> dict[str, np.ndarray]:
        names = _mixing_sources(track)
        loaded = references if all(n in references for n in names) else track.load(names)
        sources = torch.from_numpy(np.stack([loaded[n] for n in names]))
        mixture = torch.from_numpy(references["mixture"])
        est = oracle_separate(self.method, sources, mixture, self.n_fft, self.hop_length).numpy()
        by_name = dict(zip(names, est, strict=True))
        out: dict[str, np.ndarray] = {}
        for stem in stems:
            if stem in by_name:
                out[stem] = by_name[stem]
            elif stem == "accompaniment":
                out[stem] = sum(v for n, v in by_name.items() if n != "vocals")
            else:
                raise DatasetError(
                    f"track {track.name!r}: oracle cannot make {stem!r} from {', '.join(names)}"
                )
        return out


class DirectoryEstimator:
    """Estimates stored as ``DIR/<track>/<stem>.<ext>`` (museval's layout without subset)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"estimates folder not found: {self.root}")
        self.label = str(self.root)
        self.identity = {"kind": "estimates", "root": str(self.root.resolve())}

    def _files(self, track: Track) -> dict[str, Path]:
        folder = self.root / track.name
        if (
            not folder.is_dir()
            and track.subset
            and (self.root / track.subset / track.name).is_dir()
        ):
            folder = self.root / track.subset / track.name
        if not folder.is_dir():
            raise DatasetError(f"no estimates for track {track.name!r} (expected folder {folder})")
        return {
            p.stem: p
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES
        }

    def available(self, track: Track) -> Sequence[str] | None:
        return list(self._files(track))

    def estimate(
        self,
        track: Track,
        stems: Sequence[str],
        references: Mapping[str, np.ndarray],
        sample_rate: int,
    ) -> dict[str, np.ndarray]:
        files = self._files(track)
        out: dict[str, np.ndarray] = {}
        for stem in stems:
            if stem not in files:
                raise DatasetError(
                    f"track {track.name!r}: estimate {stem!r} missing in {self.root / track.name}"
                )
            try:
                audio, rate = load_audio(files[stem])
            except AudioError as exc:
                raise DatasetError(f"track {track.name!r}: {exc}") from exc
            if rate != sample_rate:
                raise DatasetError(
                    f"track {track.name!r}: estimate {files[stem]} is {rate} Hz, references are {sample_rate} Hz"
                )
            out[stem] = audio
        return out


def _mixing_sources(track: Track) -> list[str]:
    """The stored sources whose sum is the mixture (never accompaniment next to its parts)."""
    if all(s in track.stored for s in _MIXING):
        return list(_MIXING)
    return [s for s in track.sources]


@dataclass
class RunResult:
    """What an evaluation run did."""

    scored: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _fit(track: Track, stem: str, est: np.ndarray, ref: np.ndarray) -> torch.Tensor:
    est = np.asarray(est, dtype=np.float32)
    if est.ndim != 2 or est.shape[0] != ref.shape[0]:
        raise DatasetError(
            f"track {track.name!r}: estimate {stem!r} has shape {est.shape}, references have {ref.shape[0]} channels"
        )
    return match_length(torch.from_numpy(est), ref.shape[-1])


def _frames_json(
    values: Mapping[str, Sequence[float]], hop: float, window: float
) -> list[dict[str, Any]]:
    names = list(values)
    count = len(values[names[0]])
    frames = []
    for i in range(count):
        metrics = {}
        for name in names:
            v = float(values[name][i])
            metrics[name] = (
                round(v, 5) if math.isfinite(v) else math.nan
            )  # museval stores inf as NaN
        frames.append({"time": i * hop, "duration": window, "metrics": metrics})
    return frames


def _score_group(
    refs: torch.Tensor, ests: torch.Tensor, config: EvalConfig, sample_rate: int
) -> list[dict[str, list[float]]]:
    if config.metrics == "bsseval":
        window = int(config.window * sample_rate)
        scores = bss_eval_v4(refs, ests, window, int(config.hop * sample_rate), config.filters_len)
        return [
            {"SDR": scores.sdr[j].tolist(), "SIR": scores.sir[j].tolist(),
             "ISR": scores.isr[j].tolist(), "SAR": scores.sar[j].tolist()}
            for j in range(refs.shape[0])
        ]  # fmt: skip
    if config.metrics == "sdr":
        return [{"SDR": [float(v)]} for v in global_sdr(refs, ests)]
    return [{"SI-SDR": [float(v)]} for v in si_sdr(refs, ests)]


def score_track(
    track: Track,
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    stems: Sequence[str],
    sample_rate: int,
    config: EvalConfig,
) -> dict[str, Any]:
    """Score one track's estimates; returns museval's per-track JSON document.

    Raises:
        DatasetError: estimates of the wrong shape.
    """
    device = torch.device(config.device)
    ref = {s: torch.from_numpy(references[s]) for s in stems}
    est = {s: _fit(track, s, estimates[s], references[s]) for s in stems}
    groups: list[tuple[list[str], list[str]]] = []  # (stems scored together, stems reported)
    if "vocals" in stems and "accompaniment" in stems:
        groups.append((["vocals", "accompaniment"], ["vocals", "accompaniment"]))
        rest = [s for s in stems if s != "accompaniment"]
        if len(rest) >= 2:
            groups.append((rest, [s for s in rest if s != "vocals"]))
    elif len(stems) >= 2:
        groups.append((list(stems), list(stems)))
    else:
        groups.append(([stems[0], f"no_{stems[0]}"], [stems[0]]))

    results: dict[str, dict[str, list[float]]] = {}
    for together, report in groups:
        refs_list, ests_list = [], []
        for s in together:
            if s in ref:
                refs_list.append(ref[s])
                ests_list.append(est[s])
            else:  # complement of a single stem
                target = s[3:]
                if target == "vocals" and "accompaniment" in references:
                    refs_list.append(torch.from_numpy(references["accompaniment"]))
                else:
                    others = [n for n in _mixing_sources(track) if n != target and n in references]
                    if not others:
                        raise DatasetError(
                            f"track {track.name!r}: cannot score {target!r} alone (no other source)"
                        )
                    refs_list.append(torch.from_numpy(sum(references[n] for n in others)))
                ests_list.append(torch.from_numpy(references["mixture"]) - est[target])
        scores = _score_group(
            torch.stack(refs_list).to(device),
            torch.stack(ests_list).to(device),
            config,
            sample_rate,
        )
        for s, values in zip(together, scores, strict=True):
            if s in report:
                results[s] = values
    if config.metrics == "bsseval":
        window, hop = config.window, config.hop
    else:
        window, hop = next(iter(references.values())).shape[-1] / sample_rate, 0.0
    return {
        "targets": [
            {"name": s, "frames": _frames_json(results[s], hop, window)}
            for s in stems
            if s in results
        ],
        "track": track.name,
        "subset": track.subset,
        "metrics": config.metrics,
        "sample_rate": sample_rate,
        "sepcli_version": __version__,
    }


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    atomic.write_text(path, json.dumps(document, indent=1))


def read_track_json(path: str | Path) -> dict[str, dict[str, list[float]]]:
    """Read a per-track JSON (museval's or ours): ``stem -> metric -> per-frame values``.

    Raises:
        DatasetError: the file is unreadable or not in museval's format.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        out: dict[str, dict[str, list[float]]] = {}
        for target in document["targets"]:
            metrics: dict[str, list[float]] = {}
            for frame in target["frames"]:
                for name, value in frame["metrics"].items():
                    metrics.setdefault(name, []).append(math.nan if value is None else float(value))
            out[target["name"]] = metrics
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"not a per-track evaluation JSON: {path} ({exc})") from exc


def _json_path(out_dir: Path, track: Track) -> Path:
    return out_dir / (track.subset or "all") / f"{track.name}.json"


def _excerpt_offset(mixture: np.ndarray, length: int, sample_rate: int) -> int:
    """Start of the loudest ``length``-sample excerpt, on a 1-second grid."""
    total = mixture.shape[-1]
    if total <= length:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(np.square(mixture, dtype=np.float64).sum(0))])
    starts = np.arange(0, total - length + 1, sample_rate)
    return int(starts[np.argmax(energy[starts + length] - energy[starts])])


def _write_outputs(
    out_dir: Path, track: Track, references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray], sample_rate: int, config: EvalConfig,
) -> None:  # fmt: skip
    if config.write_estimates:
        for stem, audio in estimates.items():
            write_audio(out_dir / "estimates" / track.name / f"{stem}.wav", audio, sample_rate, bit_depth=32,
                        clip="none")  # fmt: skip
    if config.samples:
        length = max(1, int(config.samples * sample_rate))
        start = _excerpt_offset(references["mixture"], length, sample_rate)
        folder = out_dir / "samples" / track.name
        for stem, audio in {"mixture": references["mixture"], **estimates}.items():
            write_audio(
                folder / f"{stem}.wav", audio[:, start : start + length], sample_rate, clip="clamp"
            )


def _stems_for(track: Track, estimator: Estimator, config: EvalConfig) -> list[str]:
    have = [s for s in track.stems if s != "mixture"]
    if config.stems:
        missing = [s for s in config.stems if s not in have]
        if missing:
            raise DatasetError(
                f"track {track.name!r} has no reference for {', '.join(missing)} ({track.path})"
            )
    offered = estimator.available(track)
    if config.stems:
        if offered is not None:
            absent = [s for s in config.stems if s not in offered]
            if absent:
                raise DatasetError(
                    f"track {track.name!r}: no estimate for {', '.join(absent)} from {estimator.label}"
                )
        return list(config.stems)
    stems = [s for s in have if offered is None or s in offered]
    if not stems:
        raise DatasetError(
            f"track {track.name!r}: no stem in common between references and {estimator.label}"
        )
    return stems


def evaluate_tracks(
    tracks: Sequence[Track],
    estimator: Estimator,
    out_dir: str | Path,
    config: EvalConfig = EvalConfig(),
    progress: ProgressFn | None = None,
) -> RunResult:
    """Score every track, writing ``OUT/<subset>/<track>.json`` and ``OUT/summary.json``.

    A track whose JSON already exists is read back (resume). A track that fails
    with a :class:`~sepcli.errors.SepcliError` (missing stem, mismatched
    lengths or rates, missing estimates...) is recorded in ``skipped`` with its
    message and the others are still scored.

    Args:
        progress: gets an ``evaluate`` event (tracks) after each track, ``item``
            its name, ``info`` its ``status`` (``"scored"``, ``"resumed"`` or
            ``"skipped"``) and ``message`` (why it was skipped, else ``None``).
    """
    if config.metrics not in METRIC_KINDS:
        raise UsageError(
            f"unknown metrics {config.metrics!r}; choose from {', '.join(METRIC_KINDS)}"
        )
    out = Path(out_dir)
    _claim_output(out, tracks, estimator, config)
    result = RunResult()
    per_track: dict[str, dict[str, dict[str, list[float]]]] = {}

    def report(i: int, track: Track, status: str, message: str | None = None) -> None:
        if progress is not None:
            info = {"status": status, "message": message}
            progress(Progress("evaluate", i + 1, len(tracks), "tracks", track.name, info))

    for i, track in enumerate(tracks):
        path = _json_path(out, track)
        if path.is_file():
            try:
                per_track[track.name] = read_track_json(path)
                result.resumed.append(track.name)
                report(i, track, "resumed")
                continue
            except DatasetError:
                logger.warning("re-scoring %s: unreadable %s", track.name, path)
        try:
            stems = _stems_for(track, estimator, config)
            wanted = list(dict.fromkeys([*stems, "mixture", *_complement_needs(track, stems)]))
            references = track.load(wanted)
            sample_rate = track.probe().sample_rate
            estimates = estimator.estimate(track, stems, references, sample_rate)
            document = score_track(track, references, estimates, stems, sample_rate, config)
            _write_outputs(out, track, references, estimates, sample_rate, config)
            _write_json(path, document)
        except SepcliError as exc:
            result.skipped[track.name] = str(exc)
            report(i, track, "skipped", str(exc))
            continue
        per_track[track.name] = read_track_json(path)
        result.scored.append(track.name)
        report(i, track, "scored")
    result.summary = {
        "estimator": estimator.label,
        "metrics": config.metrics,
        "tracks": {name: _medians(stems) for name, stems in per_track.items()},
        "aggregate": aggregate(per_track),
        "skipped": dict(result.skipped),
        "sepcli_version": __version__,
    }
    _write_json(out / "summary.json", result.summary)
    return result


#: ``OUT/evaluation.json``: which estimator and scoring settings the results in OUT belong to
RUN_FILE = "evaluation.json"


def _weights_digest(archive: Any) -> str:
    """SHA-256 of an archive file, or of its weights when it was built in memory."""
    path = getattr(archive, "path", None)
    if path is not None and Path(path).is_file():
        from sepcli.hashing import sha256_file

        return sha256_file(Path(path))
    digest = hashlib.sha256(archive.metadata.to_json().encode())
    for name, value in archive.module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _claim_output(
    out: Path, tracks: Sequence[Track], estimator: Estimator, config: EvalConfig
) -> None:
    """Record in ``OUT/evaluation.json`` what the results in OUT come from, or check it.

    Resuming reads back the per-track JSONs already in OUT, so OUT must hold
    results of the same estimator (same weights and separation settings, same
    oracle or estimates folder) scored the same way; anything else would mix
    two models' figures under one name.

    Raises:
        UsageError: OUT holds results of another estimator or other scoring
            settings, or results that say nothing about where they come from.
    """
    record = {
        "format": "sepcli-evaluation",
        "estimator": estimator.label,
        "identity": getattr(estimator, "identity", {"label": estimator.label}),
        "scoring": {
            "metrics": config.metrics,
            "stems": list(config.stems) if config.stems else None,
            "window": config.window,
            "hop": config.hop,
            "filters_len": config.filters_len,
        },
    }
    path = out / RUN_FILE
    advice = "choose another --out or delete it"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"{path}: unreadable ({exc}); {advice}") from None
        differ = [
            key
            for part in ("identity", "scoring")
            for key in sorted(set(record[part]) | set(saved.get(part, {})))
            if record[part].get(key) != saved.get(part, {}).get(key)
        ]
        if differ:
            raise UsageError(
                f"{out} holds results of {saved.get('estimator', 'another estimator')} with other "
                f"settings ({', '.join(differ)}); {advice}"
            )
        return
    if any(_json_path(out, t).is_file() for t in tracks):
        raise UsageError(
            f"{out} holds results without {RUN_FILE}, so they cannot be told apart from another "
            f"model's; {advice}"
        )
    _write_json(path, record)


def _complement_needs(track: Track, stems: Sequence[str]) -> list[str]:
    """References needed to score a single stem against its complement."""
    if len(stems) != 1:
        return []
    if stems[0] == "vocals" and "accompaniment" in track.stems:
        return ["accompaniment"]
    return [n for n in _mixing_sources(track) if n not in stems]


def _medians(stems: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, float]]:
    from sepcli.evaluation.metrics import track_medians

    return {
        stem: {m: v[0] for m, v in track_medians(metrics).items()}
        for stem, metrics in stems.items()
    }


def summary_from_dir(out_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of an evaluation folder, or one rebuilt from its track JSONs.

    Raises:
        DatasetError: no summary and no track JSON in ``out_dir``.
    """
    out = Path(out_dir)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        try:
            return json.loads(summary_path.read_text())
        except ValueError as exc:
            raise DatasetError(f"unreadable summary: {summary_path} ({exc})") from exc
    per_track = {p.stem: read_track_json(p) for p in sorted(out.glob("*/*.json"))}
    if not per_track:
        raise DatasetError(
            f"no evaluation results in {out} (expected summary.json or <subset>/<track>.json)"
        )
    return {"estimator": str(out), "tracks": {n: _medians(s) for n, s in per_track.items()},
            "aggregate": aggregate(per_track), "skipped": {}}  # fmt: skip
