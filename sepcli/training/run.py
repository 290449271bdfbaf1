"""``train(config)``: data folder -> cache -> model -> training loop -> archive.

This is what ``sepcli train`` calls; Python users call it the same way::

    from sepcli.training import TrainConfig, train
    result = train(TrainConfig(data="musdb18", model="umx", targets=("vocals",), out="runs/umx"))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sepcli.errors import DatasetError, SepcliError, TrainingError
from sepcli.models.archive import ArchiveMetadata, count_parameters
from sepcli.progress import ProgressFn
from sepcli.training import distributed
from sepcli.training.cache import (
    CachedTrack,
    cache_tracks,
    prune_stale,
    source_names,
    with_silent_rest,
)
from sepcli.training.config import TrainConfig, save_config
from sepcli.training.export import export_best
from sepcli.training.loop import CHECKPOINT, Trainer
from sepcli.training.sampling import Augmentation, ChunkDataset
from sepcli.training.validate import sdr_metric

__all__ = [
    "TrainResult",
    "build_run_model",
    "init_umx_statistics",
    "RootSplit",
    "open_roots",
    "open_splits",
    "prepare_data",
    "train",
]

logger = logging.getLogger(__name__)

ModelFactory = Callable[[TrainConfig], tuple[nn.Module, ArchiveMetadata]]


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    archive: Path | None
    epochs_run: int
    best_epoch: int
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def _parse_valid(config: TrainConfig) -> list[str] | float | None:
    text = config.valid.strip()
    if not text:
        return None
    if text.lower() == "none":
        return []
    try:
        return float(text)
    except ValueError:
        pass
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TrainingError(
                f"{path}: cannot read the validation list ({exc.strerror})"
            ) from None
        return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return [n.strip() for n in text.split(",") if n.strip()]


@dataclass
class RootSplit:
    """One ``--data`` root: its layout, training and validation tracks."""

    index: int
    root: Path
    layout: str
    train: list[Any]
    valid: list[Any]
    validated: bool

    @property
    def label(self) -> str:
        return self.root.name or str(self.root)


def _split_root(config: TrainConfig, index: int) -> RootSplit:
    """Tracks of root ``index`` of ``config.data`` (see :func:`open_roots`)."""
    from sepcli.datasets.layouts import detect_layout, open_dataset
    from sepcli.datasets.splits import prefix_group

    root = Path(config.data[index])
    layout = detect_layout(root) if config.layout == "auto" else config.layout
    validated = not config.valid_roots or index in config.valid_roots
    several = len(config.data) > 1
    if not validated:
        valid: list[str] | float | None = []
    elif several and layout != "folder":
        valid = None  # MUSDB layouts keep musdb's split when datasets are combined
    else:
        valid = _parse_valid(config)
    if valid is None and layout == "folder":
        valid = config.valid_fraction if config.valid_fraction > 0 else []
    sep = config.valid_group_sep if layout == "folder" or not several else ""
    group = (lambda name: prefix_group(name, sep)) if sep else None  # noqa: E731
    if valid == []:
        train_tracks = open_dataset(root, subset=config.subset, layout=layout)
        return RootSplit(index, root, layout, train_tracks, [], validated)
    train_tracks = open_dataset(
        root, subset=config.subset, layout=layout, valid=valid, group=group, seed=config.seed
    )
    try:
        valid_tracks = open_dataset(
            root, subset="valid", layout=layout, valid=valid, group=group, seed=config.seed
        )
    except DatasetError as exc:
        logger.warning(
            "no validation tracks in %s (%s); the best checkpoint follows the training loss",
            root,
            exc,
        )
        valid_tracks = []
    if config.valid_max_tracks:
        valid_tracks = valid_tracks[: config.valid_max_tracks]
    return RootSplit(index, root, layout, train_tracks, valid_tracks, validated)


def open_roots(config: TrainConfig) -> list[RootSplit]:
    """The split of every root of ``config.data``, each with its own layout detection.

    A root's validation split: MUSDB layouts use musdb's 14 validation tracks
    (or ``ROOT/valid``); plain folders use ``valid`` (names, ``@file``, a
    fraction) or ``valid_fraction``, grouped by the id prefix before
    ``valid_group_sep``. With a single root ``valid`` applies whatever its
    layout (as it always did); with several, ``valid`` and ``valid_group_sep``
    apply to the plain folders only. A root outside ``valid_roots`` (when set)
    is not validated on and is opened as with ``valid = "none"``.
    """
    if not config.data:
        raise TrainingError("no data folder given (--data)")
    return [_split_root(config, i) for i in range(len(config.data))]


def open_splits(config: TrainConfig) -> tuple[str, list[Any], list[Any]]:
    """``(layout, train_tracks, valid_tracks)`` of ``config.data``, all roots together.

    ``layout`` is the roots' layouts joined by ``+`` (``"musdb+folder"``); see
    :func:`open_roots` for the split of each root.
    """
    splits = open_roots(config)
    layout = "+".join(s.layout for s in splits)
    return (
        layout,
        [t for s in splits for t in s.train],
        [t for s in splits for t in s.valid],
    )


def _cache_root(
    split: RootSplit,
    config: TrainConfig,
    cache_dir: Path,
    with_mixture: bool,
    progress: ProgressFn | None,
) -> tuple[list[CachedTrack], tuple[str, ...]]:
    tracks = split.valid if with_mixture else split.train
    try:
        return cache_tracks(
            tracks,
            config.targets,
            config.sample_rate,
            config.audio_channels,
            cache_dir,
            with_mixture=with_mixture,
            progress=progress,
            split_rest=config.mix_stems and not with_mixture,
        )
    except DatasetError as exc:
        if len(config.data) == 1 or str(split.root) in str(exc):
            raise
        raise DatasetError(f"{split.root}: {exc}") from None


def prepare_data(
    config: TrainConfig,
    dist_info: distributed.DistInfo | None = None,
    progress: ProgressFn | None = None,
) -> tuple[str, ChunkDataset, list[CachedTrack], list[str], list[str]]:
    """Open the datasets, fill the cache (rank 0 first) and build the chunk dataset.

    Every root is decoded at the model ``sample_rate`` and ``audio_channels``
    (e.g. MIR-1K's 16 kHz mono becomes 44.1 kHz stereo) and must provide every
    target; its tracks form one block of the chunk dataset
    (``dataset.dataset_sizes``, ``dataset.dataset_names``).

    Returns:
        ``(layout, train_set, valid_cached, train_names, valid_names)``; the
        validation tracks are those of the validated roots (``valid_roots``).
    """
    info = dist_info or distributed.DistInfo()
    splits = open_roots(config)
    layout = "+".join(s.layout for s in splits)
    cache_dir = (
        Path(config.cache_dir) if config.cache_dir else Path(config.out).resolve().parent / "cache"
    )
    result = None
    for turn in ("main", "others"):
        if (turn == "main") == info.is_main:
            per_root = []
            for split in splits:
                train_cached, sources = _cache_root(split, config, cache_dir, False, progress)
                valid_cached: list[CachedTrack] = []
                if split.valid:
                    valid_cached, _ = _cache_root(split, config, cache_dir, True, progress)
                per_root.append((train_cached, sources, valid_cached))
            result = per_root
            if info.is_main:
                removed, freed = prune_stale(cache_dir)
                if removed:
                    logger.info(
                        "removed %d stale cache entr%s (%.1f MB) from %s",
                        removed,
                        "y" if removed == 1 else "ies",
                        freed / 1e6,
                        cache_dir,
                    )
        distributed.barrier(info)
    assert result is not None
    sources = source_names([c for tracks, _, _ in result for c in tracks], config.targets)
    train_cached = [c for tracks, _, _ in result for c in with_silent_rest(tracks, sources)]
    valid_cached = [c for _, _, tracks in result for c in tracks]
    aug = Augmentation(
        gain=config.aug_gain,
        gain_min=config.gain_min,
        gain_max=config.gain_max,
        channel_swap=config.aug_channel_swap,
        mix=config.aug_mix,
        silence_threshold=config.silence_threshold,
        speed=config.aug_speed,
        speed_semitones=config.speed_semitones,
    )
    dataset = ChunkDataset(
        train_cached,
        sources,
        len(config.targets),
        config.segment_samples,
        samples_per_track=config.samples_per_track,
        augmentation=aug,
        seed=config.seed,
        dataset_sizes=[len(tracks) for tracks, _, _ in result],
        mix_from=None if config.mix_from < 0 else config.mix_from,
    )
    dataset.dataset_names = tuple(s.label for s in splits)
    dataset.dataset_layouts = tuple(s.layout for s in splits)
    return (
        layout,
        dataset,
        valid_cached,
        [t.name for t in train_cached],
        [t.name for t in valid_cached],
    )


def build_run_model(config: TrainConfig) -> tuple[nn.Module, ArchiveMetadata]:
    """A fresh model of ``config.model`` for ``config.targets`` and its archive metadata.

    The family's reference config is the base; ``config.model_config`` overrides
    its keys; sources, sample rate and channels come from the training config.
    """
    from sepcli.models import build_model, make_metadata, reference_config

    family_config = dict(reference_config(config.model).to_dict())
    unknown = sorted(set(config.model_config) - set(family_config))
    if unknown:
        raise TrainingError(f"unknown {config.model} model setting(s): {', '.join(unknown)}")
    family_config.update(config.model_config)
    family_config.update(
        sources=list(config.targets),
        sample_rate=config.sample_rate,
        audio_channels=config.audio_channels,
    )
    try:
        model = build_model(config.model, family_config)
    except SepcliError as exc:
        raise TrainingError(f"cannot build the {config.model} model: {exc}") from None
    except ImportError as exc:
        raise TrainingError(
            f"the {config.model} family is not available in this sepcli ({exc})"
        ) from None
    name = config.name or f"{config.model}-{'-'.join(config.targets)}"
    metadata = make_metadata(model, name=name)
    if metadata.output == "magnitude" and metadata.num_sources == 1 and metadata.phase == "wiener":
        # A Wiener filter over a single source (without a residual) returns the
        # mixture whatever the model says; the mixture phase keeps the estimate.
        metadata = metadata.replace(phase="mixture")
    return model, metadata


@torch.no_grad()
def init_umx_statistics(model: nn.Module, tracks: list[CachedTrack], max_tracks: int = 32) -> bool:
    """Open-Unmix's input standardisation from the training data.

    As ``openunmix.train.get_statistics``: mean and standard deviation per
    frequency bin of the mixture magnitude over the training tracks (here the
    sum of their sources, at most ``max_tracks``), set as ``input_mean = -mean``
    and ``input_scale = 1 / std`` of every target network. Returns ``False``
    (and changes nothing) for a model without those parameters.
    """
    targets = getattr(model, "targets", None)
    n_fft, hop = getattr(model, "n_fft", None), getattr(model, "hop_length", None)
    if targets is None or n_fft is None or not all(hasattr(t, "input_mean") for t in targets):
        return False
    from sepcli.dsp.stft import stft

    total = None
    total_sq = None
    count = 0
    for track in tracks[:max_tracks]:
        mix = torch.from_numpy(np.sum([np.asarray(a) for a in track.sources.values()], axis=0))
        mag = stft(mix.float(), int(n_fft), int(hop)).abs().double()  # (C, F, N)
        flat = mag.permute(1, 0, 2).reshape(mag.shape[1], -1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        count += flat.shape[1]
    if not count:
        return False
    mean = total / count
    std = torch.sqrt(torch.clamp(total_sq / count - mean**2, min=0.0))
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    for target in targets:
        bins = target.input_mean.shape[0]
        target.input_mean.copy_(-mean[:bins].float())
        target.input_scale.copy_(1.0 / std[:bins].float())
    return True


def _dataset_summary(config: TrainConfig, train_set: ChunkDataset) -> list[dict[str, Any]]:
    """Per root: name, layout, training tracks and share of the training draws."""
    sizes = train_set.dataset_sizes
    weights = list(config.data_weights) or [float(n) for n in sizes]
    total = sum(weights)
    names = train_set.dataset_names or tuple(Path(d).name for d in config.data)
    layouts = train_set.dataset_layouts or ("",) * len(sizes)
    validated = config.valid_roots or tuple(range(len(sizes)))
    return [
        {
            "root": name,
            "layout": layout,
            "train_tracks": int(n),
            "share": round(w / total, 6),
            "validated": i in validated,
        }
        for i, (name, layout, n, w) in enumerate(zip(names, layouts, sizes, weights, strict=True))
    ]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: ProgressFn | None = None,
    model_factory: ModelFactory | None = None,
    export: bool = True,
) -> TrainResult:
    """Run (or resume) a training run described by ``config``.

    Args:
        config: the run (``data``, ``model``, ``targets``, ``out``...).
        resume: continue from ``OUT/checkpoint.pt`` bit for bit.
        progress: gets ``decode`` events while the cache is filled (see
            :func:`~sepcli.training.cache.cache_tracks`), then the training loop's
            (see :class:`~sepcli.training.loop.Trainer`).
        model_factory: ``config -> (model, metadata)`` (default: :func:`build_run_model`).
        export: write the best weights as ``OUT/<name>.sepcli`` at the end.

    Raises:
        DatasetError: bad data folder, no usable track, a target no track has.
        TrainingError: a bad setting, an existing run without ``resume``, a
            model over ``max_params``, a checkpoint that cannot be written.
    """
    if not config.out:
        raise TrainingError("no run folder given (--out)")
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: exists and is not a folder")
    has_checkpoint = (run_dir / CHECKPOINT).is_file()
    if has_checkpoint and not resume:
        raise TrainingError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume and not has_checkpoint:
        raise TrainingError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")

    info, device = distributed.init(config.device)
    try:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda asked for but CUDA is not available")
        layout, train_set, valid_cached, train_names, valid_names = prepare_data(
            config, info, progress
        )
        torch.manual_seed(config.seed)
        model, metadata = (model_factory or build_run_model)(config)
        if metadata.family == "umx" and not resume:
            init_umx_statistics(model, train_set.spread(32))
        if tuple(metadata.sources) != tuple(config.targets):
            raise TrainingError(
                f"the model outputs {list(metadata.sources)}, not the targets {list(config.targets)}"
            )
        params = count_parameters(model)
        if config.max_params and params > config.max_params:
            raise TrainingError(
                f"the {config.model} model has {params:,} parameters, over --max-params {config.max_params:,}"
            )
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / "config.toml")
        metric_label, metric_fn = sdr_metric()
        trainer = Trainer(
            model,
            metadata,
            train_set,
            valid_cached,
            config,
            run_dir,
            dist_info=info,
            device=device,
            metric=metric_fn,
            progress=progress,
        )
        if resume:
            trainer.resume()
        trainer.fit()
        archive = None
        if export and info.is_main:
            archive = export_best(
                run_dir,
                trainer.model,
                metadata,
                config,
                layout=layout,
                train_tracks=train_names,
                valid_tracks=valid_names,
                metric=metric_label,
                history=trainer.history,
                datasets=_dataset_summary(config, train_set),
            )
        distributed.barrier(info)
        best = trainer.best_score
        return TrainResult(
            run_dir,
            archive,
            trainer.epoch,
            trainer.best_epoch,
            None if best is None or not math.isfinite(best) else float(best),
            trainer.history,
        )
    finally:
        distributed.shutdown(info)
