"""Building models from configs, and exporting them as archives.

``build_model(family, config)`` is the one way to make a model of any family;
``export_archive(model, path, name=...)`` writes it with complete metadata
(family, config, STFT, output kind, parameter count, segment and context).
``verify_archive`` checks a loaded archive's module against its metadata
beyond the attributes :func:`sepcli.models.archive.load_archive` checks.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepcli.errors import ArchiveError, ConfigError
from sepcli.models.archive import (
    Archive,
    ArchiveMetadata,
    StftParams,
    check_module,
    count_parameters,
    load_archive,
    save_archive,
)
from sepcli.models.families import FAMILIES, config_from_dict
from sepcli.models.families import family as family_row

__all__ = [
    "FAMILIES",
    "build_model",
    "model_family",
    "model_config",
    "make_metadata",
    "export_archive",
    "verify_archive",
    "load_verified",
]


def build_model(family: str, config: Mapping[str, Any] | Any) -> nn.Module:
    """A randomly initialised model of ``family`` from ``config`` (dict or dataclass).

    Raises :class:`ConfigError` for an unknown family or an invalid config.
    """
    return family_row(family).build(config_from_dict(family, config))


def model_family(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    if family not in FAMILIES:
        raise ConfigError(
            f"{type(model).__name__} is not a sepcli model family (family={family!r})"
        )
    return str(family)


def model_config(model: nn.Module) -> dict[str, Any]:
    """The config dict a model was built from (from its ``config_json`` attribute)."""
    text = getattr(model, "config_json", None)
    if not isinstance(text, str):
        raise ConfigError(f"{type(model).__name__} carries no config_json")
    return json.loads(text)


def make_metadata(
    model: nn.Module,
    name: str,
    sources: tuple[str, ...] | list[str] | None = None,
    **fields: Any,
) -> ArchiveMetadata:
    """Complete :class:`ArchiveMetadata` for a family model.

    Fills ``family``, ``config``, ``output``, ``stft``, ``sample_rate``,
    ``audio_channels``, ``num_parameters``, ``segment_seconds``,
    ``context_seconds`` and ``phase``; ``fields`` (``licence``,
    ``training_data``, ``description``, ``scores``, ``extra``... or overrides of
    the defaults) are passed on. ``sources`` defaults to the config's sources
    and may only rename them (same count).
    """
    family = model_family(model)
    row = family_row(family)
    config = model_config(model)
    if sources is None:
        sources = tuple(config["sources"])
    sources = tuple(sources)
    if len(sources) != int(model.num_sources):
        raise ConfigError(
            f"{len(sources)} source names given for a model with {model.num_sources} sources"
        )
    values: dict[str, Any] = {
        "name": name,
        "sources": sources,
        "sample_rate": int(model.sample_rate),
        "audio_channels": int(model.audio_channels),
        "output": row.output,
        "family": family,
        "config": config,
        "num_parameters": count_parameters(model),
        "phase": row.phase,
        "recipe": row.recipe,
    }
    if row.output != "waveform":
        values["stft"] = StftParams(int(model.n_fft), int(model.hop_length))
    segment, context = model.archive_timing()
    values["segment_seconds"] = float(segment)
    values["context_seconds"] = float(context)
    if hasattr(model, "archive_overlap"):
        values["overlap"] = float(model.archive_overlap())
    values.update(fields)
    return ArchiveMetadata(**values)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` whose parameters do not require grad.

    The copy is made under ``torch.no_grad()``: deep-copying a loaded TorchScript
    module whose parameters require grad otherwise gives non-leaf clones whose
    flag cannot be cleared (ensembles of archives written before export froze).
    """
    with torch.no_grad():
        frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def export_archive(
    model: nn.Module, path: str | os.PathLike[str], name: str, **fields: Any
) -> Path:
    """Write ``model`` as a data archive at ``path`` with :func:`make_metadata`'s metadata.

    A frozen copy (``requires_grad=False``, eval mode) is exported: TorchScript
    graphs whose parameters require grad fail under ``torch.inference_mode``
    once the same class has run with autograd in the process. ``model`` itself
    is left untouched.
    """
    frozen = frozen_copy(model)
    meta = make_metadata(frozen, name=name, **fields)
    return save_archive(frozen, meta, path)


def verify_archive(archive: Archive) -> Archive:
    """Check a family archive's module against its metadata; return it unchanged.

    Beyond the attributes ``load_archive`` checks, compares ``family``, the
    config and the STFT parameters the module was built with. Modules that do
    not carry ``family``/``config_json`` (foreign archives) pass.
    """
    module, meta = archive.module, archive.metadata
    where = str(archive.path) if archive.path else meta.name
    check_module(module, meta, where)  # attributes, family, config, STFT
    family = getattr(module, "family", None)
    if family is not None:
        expected = family_row(str(family)).output if str(family) in FAMILIES else None
        if expected != meta.output:
            raise ArchiveError(
                f"{where}: family {family!r} outputs {expected!r}, metadata says {meta.output!r}"
            )
    return archive


def load_verified(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Archive:
    """:func:`load_archive` followed by :func:`verify_archive`."""
    return verify_archive(load_archive(path, device))
