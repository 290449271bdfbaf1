"""The best checkpoint of a run as a model archive, with honest metadata.

The archive's metadata says what the weights were trained on (dataset, layout,
tracks), for how long (epochs, best epoch), how they scored on validation
(median SDR per target, and with which metric) and under which terms: weights
trained on MUSDB18 inherit its research/non-commercial terms, and the archive
says so in ``licence``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from sepcli import __version__
from sepcli.models.archive import ArchiveMetadata, save_archive
from sepcli.models.build import frozen_copy
from sepcli.training.checkpoint import load_checkpoint
from sepcli.training.config import TrainConfig
from sepcli.training.loop import BEST, CHECKPOINT

__all__ = ["MUSDB_LICENCE", "MIR1K_LICENCE", "data_licence", "export_best"]

MUSDB_LICENCE = (
    "MUSDB18 terms: research/non-commercial use only (most tracks CC BY-NC-SA); "
    "these weights inherit those terms"
)
MIR1K_LICENCE = "MIR-1K: research release without an explicit licence; research use only"


def data_licence(root: str | os.PathLike[str], layout: str, override: str = "") -> str:
    """The terms the weights inherit from the training data at ``root``."""
    if override:
        return override
    name = Path(root).resolve().name.lower()  # the folder's own name, not its parents'
    if layout in ("musdb", "musdb-hq"):
        return MUSDB_LICENCE
    if "mir1k" in name.replace("-", ""):
        return MIR1K_LICENCE
    if "musdb" in name:
        return MUSDB_LICENCE
    return f"unknown: same terms as the training data in {Path(root).name!r} (set with --set licence=...)"


def export_best(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    metadata: ArchiveMetadata,
    config: TrainConfig,
    *,
    layout: str,
    train_tracks: Sequence[str],
    valid_tracks: Sequence[str],
    metric: str,
    history: Sequence[Mapping[str, Any]] = (),
    path: str | os.PathLike[str] | None = None,
    datasets: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the best weights of ``run_dir`` (``best.pt``, else the last checkpoint) as an archive.

    Args:
        run_dir: the run folder.
        model: a module of the trained architecture (not modified: a copy is exported).
        metadata: the archive metadata template of the run.
        config: the run's config.
        layout: dataset layout (``musdb``, ``musdb-hq``, ``folder``).
        train_tracks, valid_tracks: names of the tracks used.
        metric: name of the validation metric.
        history: the log records (for the number of epochs run).
        path: output file (default ``RUN_DIR/<name>.sepcli``).
        datasets: per ``--data`` root ``{"root", "layout", "train_tracks", "share",
            "validated"}`` (several roots: recorded, and each root's licence is kept).

    Returns:
        the archive path.
    """
    run_dir = Path(run_dir)
    best_path = run_dir / BEST if (run_dir / BEST).is_file() else run_dir / CHECKPOINT
    state = load_checkpoint(best_path)
    net = copy.deepcopy(model).cpu()
    # the last checkpoint holds the live weights and, with ``ema``, their average
    net.load_state_dict(state.get("ema") or state["model"])
    valid = state.get("valid") or {}
    roots = [Path(d) for d in config.data]
    names = [r.name or str(r) for r in roots]
    dataset = "+".join(names)
    if len(roots) > 1:
        layouts = (
            layout.split("+") if layout.count("+") == len(roots) - 1 else [layout] * len(roots)
        )
        terms = [data_licence(r, lay) for r, lay in zip(roots, layouts, strict=True)]
        licence = config.licence or "; ".join(dict.fromkeys(terms))
        validated = config.valid_roots or tuple(range(len(roots)))
        scored = "+".join(names[i] for i in validated)
        parts = [
            f"{d['root']} ({d['layout']}, {d['train_tracks']} training tracks, "
            f"{100 * float(d['share']):.0f} % of the draws)"
            for d in datasets
        ] or [f"{n} ({lay})" for n, lay in zip(names, layouts, strict=True)]
        training_data = (
            f"{'; '.join(parts)}; subset {config.subset!r}: {len(train_tracks)} training tracks, "
            f"{len(valid_tracks)} validation tracks from {scored}, "
            f"targets {', '.join(config.targets)}"
        )
    else:
        licence = data_licence(roots[0] if roots else "", layout, config.licence)
        scored = dataset
        training_data = (
            f"{dataset} ({layout}, subset {config.subset!r}): {len(train_tracks)} training tracks, "
            f"{len(valid_tracks)} validation tracks, targets {', '.join(config.targets)}"
        )
    scores = {f"{scored}-valid": {t: {"SDR": float(v)} for t, v in valid.items()}} if valid else {}
    epochs_run = int(history[-1]["epoch"]) if history else int(state.get("epoch", 0))
    meta = metadata.replace(
        name=config.name or metadata.name,
        licence=licence,
        training_data=training_data,
        description=metadata.description
        or f"{metadata.family} trained by sepcli train on {dataset}",
        scores=scores,
        extra={
            **dict(metadata.extra),
            "training": {
                "sepcli_version": __version__,
                "epochs_run": epochs_run,
                "best_epoch": int(state.get("epoch", 0)),
                "validation_metric": metric,
                "validation": valid,
                "train_loss": state.get("train_loss"),
                "valid_tracks": list(valid_tracks),
                "train_tracks": len(train_tracks),
                "datasets": [dict(d) for d in datasets],
                "config": portable_config(config),
            },
        },
    )
    out = Path(path) if path else run_dir / f"{meta.name}.sepcli"
    return save_archive(frozen_copy(net), meta, out)


def portable_config(config: TrainConfig) -> dict[str, Any]:
    """The run's settings as an archive records them: everything that shapes the
    weights, without this machine's paths (the run and cache folders are dropped,
    each data root is reduced to its folder name, as in ``datasets``)."""
    data = config.to_dict()
    data.pop("out", None)
    data.pop("cache_dir", None)
    data["data"] = [Path(d).name or str(d) for d in config.data]
    return data
