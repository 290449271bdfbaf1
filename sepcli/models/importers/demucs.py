"""Importing published Demucs v4 (HT-Demucs) checkpoints, without running their code.

A Demucs checkpoint (``<sig>-<sha256[:8]>.th``, written by
``demucs.states.serialize_model``) is a pickled dict::

    {"klass": <class demucs.htdemucs.HTDemucs>, "args": [...], "kwargs": {...},
     "state": {name: tensor (fp16)}, "training_args": {...}}

``klass`` is a pickled *class reference* and ``kwargs["segment"]`` a
``fractions.Fraction``, so the file cannot be read with a plain
``weights_only=True`` load, and Demucs itself reads it with
``weights_only=False``, which runs whatever the pickle asks for. Here it is
read with ``torch.load(weights_only=True)`` and an allow-list of exactly what
such files hold: ``fractions.Fraction``, and stand-ins registered under the
names of the Demucs model classes. A stand-in is an inert marker: it records
which class the file names and cannot be instantiated, so the ``demucs``
package is never imported and no code from the file runs. Any other global
(``os.system``, ``builtins.eval``, a diffq quantizer...) makes the load fail,
and the file is refused with a one-line :class:`~sepcli.errors.ArchiveError`.

A *bag* is a YAML file as in Demucs' ``remote/*.yaml``::

    models: ['f7e0c4bc', 'd12395a8', '92cfc3b6', '04573f0d']
    weights: [[1., 0., 0., 0.], [0., 1., 0., 0.], ...]   # optional, (model, source)
    segment: 7.8                                           # optional, seconds

with each member's ``<sig>.th`` or ``<sig>-<hash>.th`` beside it (the hash
prefix is checked, as Demucs' ``LocalRepo`` does); it becomes an ensemble
archive whose members each keep Demucs' chunking (recipe ``demucs``). Only ``HTDemucs``
checkpoints are supported; Hybrid Demucs (v3) and Demucs v2 files are refused
with a message that says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sepcli.errors import ArchiveError, ConfigError, UsageError
from sepcli.hashing import sha256_file
from sepcli.models.archive import ArchiveMetadata, save_archive
from sepcli.models.nets.htdemucs import HTDemucs, HTDemucsConfig

__all__ = [
    "DEMUCS_DEFAULTS",
    "DemucsCheckpoint",
    "DemucsBag",
    "read_checkpoint",
    "config_from_kwargs",
    "load_htdemucs",
    "read_bag",
    "load_bag",
    "single_metadata",
    "bag_model",
    "import_demucs",
    "import_demucs_archive",
]

log = logging.getLogger(__name__)

SUPPORTED_CLASS = "demucs.htdemucs.HTDemucs"

#: Demucs model classes a checkpoint may name, with what to call them in messages.
KNOWN_CLASSES: dict[str, str] = {
    SUPPORTED_CLASS: "HT-Demucs (Demucs v4)",
    "demucs.hdemucs.HDemucs": "Hybrid Demucs (Demucs v3)",
    "demucs.demucs.Demucs": "Demucs (v2)",
    "demucs.tasnet.ConvTasNet": "Conv-TasNet (Demucs v2 repository)",
    "demucs.tasnet_v2.ConvTasNet": "Conv-TasNet (Demucs v2 repository)",
    "demucs.train.TorchHDemucsWrapper": "torchaudio Hybrid Demucs wrapper",
}

#: ``demucs.htdemucs.HTDemucs.__init__`` parameters in order, with their defaults
#: (demucs 4.1.0); a checkpoint's ``args`` / ``kwargs`` are read against them.
DEMUCS_DEFAULTS: dict[str, Any] = {
    "sources": None, "audio_channels": 2, "channels": 48, "channels_time": None,
    "growth": 2, "nfft": 4096, "wiener_iters": 0, "end_iters": 0, "wiener_residual": False,
    "cac": True, "depth": 4, "rewrite": True, "multi_freqs": None, "multi_freqs_depth": 3,
    "freq_emb": 0.2, "emb_scale": 10, "emb_smooth": True, "kernel_size": 8, "time_stride": 2,
    "stride": 4, "context": 1, "context_enc": 0, "norm_starts": 4, "norm_groups": 4,
    "dconv_mode": 1, "dconv_depth": 2, "dconv_comp": 8, "dconv_init": 1e-3,
    "bottom_channels": 0, "t_layers": 5, "t_emb": "sin", "t_hidden_scale": 4.0, "t_heads": 8,
    "t_dropout": 0.0, "t_max_positions": 10000, "t_norm_in": True, "t_norm_in_group": False,
    "t_group_norm": False, "t_norm_first": True, "t_norm_out": True, "t_max_period": 10000.0,
    "t_weight_decay": 0.0, "t_lr": None, "t_layer_scale": True, "t_gelu": True,
    "t_weight_pos_embed": 1.0, "t_sin_random_shift": 0, "t_cape_mean_normalize": True,
    "t_cape_augment": True, "t_cape_glob_loc_scale": [5000.0, 1.0, 1.4],
    "t_sparse_self_attn": False, "t_sparse_cross_attn": False, "t_mask_type": "diag",
    "t_mask_random_seed": 42, "t_sparse_attn_window": 500, "t_global_window": 100,
    "t_sparsity": 0.95, "t_auto_sparsity": False, "t_cross_first": False, "rescale": 0.1,
    "samplerate": 44100, "segment": 10, "use_train_segment": True,
}  # fmt: skip

# Demucs name -> HTDemucsConfig field (same meaning, same value).
_RENAMES = {
    "sources": "sources", "audio_channels": "audio_channels", "channels": "channels",
    "growth": "growth", "nfft": "n_fft", "depth": "depth", "rewrite": "rewrite",
    "freq_emb": "freq_emb", "emb_scale": "emb_scale", "emb_smooth": "emb_smooth",
    "kernel_size": "kernel_size", "stride": "stride", "context": "context",
    "context_enc": "context_enc", "norm_starts": "norm_starts", "norm_groups": "norm_groups",
    "dconv_mode": "dconv_mode", "dconv_depth": "dconv_depth", "dconv_comp": "dconv_comp",
    "dconv_init": "dconv_init", "bottom_channels": "bottom_channels", "t_layers": "t_layers",
    "t_hidden_scale": "t_hidden_scale", "t_heads": "t_heads", "t_dropout": "t_dropout",
    "t_norm_in": "t_norm_in", "t_norm_in_group": "t_norm_in_group",
    "t_group_norm": "t_group_norm", "t_norm_first": "t_norm_first",
    "t_norm_out": "t_norm_out", "t_max_period": "t_max_period",
    "t_layer_scale": "t_layer_scale", "t_gelu": "t_gelu",
    "t_weight_pos_embed": "t_weight_pos_embed", "t_cross_first": "t_cross_first",
    "samplerate": "sample_rate",
}  # fmt: skip

# Options that change nothing at inference for the supported configurations
# (training-only, or used only by features refused below).
_INERT = {
    "time_stride", "t_weight_decay", "t_lr", "rescale", "t_max_positions",
    "t_cape_mean_normalize", "t_cape_augment", "t_cape_glob_loc_scale", "t_mask_type",
    "t_mask_random_seed", "t_sparse_attn_window", "t_global_window", "t_sparsity",
    "t_auto_sparsity", "multi_freqs_depth", "wiener_iters", "end_iters", "wiener_residual",
}  # fmt: skip

# Options that must keep one value; what each other value would need.
_REQUIRED = {
    "cac": (True, "complex-as-channels output (cac=True); masks with Wiener filtering"),
    "multi_freqs": (None, "no multi-band layers (multi_freqs)"),
    "t_emb": ("sin", "sinusoidal positional embeddings (t_emb='sin')"),
    "t_sparse_self_attn": (False, "dense attention (t_sparse_self_attn=False)"),
    "t_sparse_cross_attn": (False, "dense attention (t_sparse_cross_attn=False)"),
    "t_sin_random_shift": (0, "no random positional shift (t_sin_random_shift=0)"),
    "use_train_segment": (True, "the fixed training segment (use_train_segment=True)"),
}


class _ClassRef:
    """Stand-in for a Demucs model class named in a checkpoint; never instantiated."""

    qualified_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _ClassRef:
        raise pickle.UnpicklingError(f"the file tries to instantiate {cls.qualified_name}")


_STAND_INS: dict[str, type[_ClassRef]] = {
    name: type(name.rsplit(".", 1)[1] + "Ref", (_ClassRef,), {"qualified_name": name})
    for name in KNOWN_CLASSES
}
_ALLOWED_GLOBALS: list[Any] = [Fraction] + [(ref, name) for name, ref in _STAND_INS.items()]


@dataclass(frozen=True)
class DemucsCheckpoint:
    """What a Demucs ``.th`` file holds, read safely.

    Attributes:
        path: the file. klass: the class it names (``"demucs.htdemucs.HTDemucs"``).
        kwargs: the constructor arguments, positional ``args`` folded in by name.
        state: parameter name -> tensor (as stored; fp16 for published files).
        sha256: hex digest of the file.
    """

    path: Path
    klass: str
    kwargs: Mapping[str, Any]
    state: Mapping[str, Tensor]
    sha256: str


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(path: Path, exc: BaseException) -> ArchiveError:
    """A one-line error for a file the restricted unpickler would not read."""
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global '?([\w.]+)", text)
    name = match.group(1) if match else None
    if name and name.startswith("diffq"):
        return ArchiveError(
            f"{path}: a diffq-quantized Demucs checkpoint, which is not supported; "
            "use the non-quantized release of the model"
        )
    if name and name.startswith("demucs."):
        return ArchiveError(
            f"{path}: names the class {name}; only {SUPPORTED_CLASS} checkpoints are supported"
        )
    if name:
        return ArchiveError(
            f"{path}: refused: the file asks to load {name!r}, which no Demucs checkpoint "
            "contains (loading it could run code)"
        )
    if "instantiate" in text:
        return ArchiveError(f"{path}: refused: {_first_line(exc)} (loading it could run code)")
    return ArchiveError(f"{path}: refused by the restricted unpickler ({_first_line(exc)})")


def read_checkpoint(path: str | os.PathLike[str]) -> DemucsCheckpoint:
    """Read a single-model Demucs checkpoint without running code from it.

    Raises:
        UsageError: the file does not exist.
        ArchiveError: the file is truncated or not a PyTorch file, tries to load
            anything outside the allow-list, is diffq-quantized, names a Demucs
            class other than HTDemucs, or lacks ``klass`` / ``kwargs`` / ``state``.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such Demucs checkpoint")
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArchiveError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise ArchiveError(f"{path}: unreadable checkpoint ({_first_line(exc)})") from None
    if not isinstance(package, Mapping) or not {"klass", "state"} <= set(package):
        raise ArchiveError(
            f"{path}: not a Demucs model package (expected a dict with 'klass', 'args', "
            "'kwargs' and 'state'; a bare state dict needs its kwargs)"
        )
    klass = package["klass"]
    if not (isinstance(klass, type) and issubclass(klass, _ClassRef)):
        raise ArchiveError(f"{path}: 'klass' is {klass!r}, not a Demucs model class")
    name = klass.qualified_name
    if name != SUPPORTED_CLASS:
        raise ArchiveError(
            f"{path}: a {KNOWN_CLASSES[name]} checkpoint ({name}); only HT-Demucs "
            f"({SUPPORTED_CLASS}) is supported"
        )
    state = package["state"]
    if not isinstance(state, Mapping):
        raise ArchiveError(f"{path}: 'state' is not a dict")
    if state.get("__quantized"):
        raise ArchiveError(
            f"{path}: a diffq-quantized Demucs checkpoint, which is not supported; "
            "use the non-quantized release of the model"
        )
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        raise ArchiveError(f"{path}: 'state' holds non-tensors at {bad[:3]}")
    args = package.get("args") or ()
    kwargs = package.get("kwargs") or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise ArchiveError(f"{path}: 'args' must be a list and 'kwargs' a dict")
    names = list(DEMUCS_DEFAULTS)
    if len(args) > len(names):
        raise ArchiveError(f"{path}: {len(args)} positional args, HTDemucs takes {len(names)}")
    merged: dict[str, Any] = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in merged:
            raise ArchiveError(f"{path}: {key!r} given both in 'args' and in 'kwargs'")
        merged[str(key)] = value
    return DemucsCheckpoint(
        path, name, merged, {str(k): v for k, v in state.items()}, sha256_file(path)
    )


def config_from_kwargs(
    kwargs: Mapping[str, Any], where: str = "checkpoint", segment: float | None = None
) -> HTDemucsConfig:
    """The :class:`HTDemucsConfig` of ``HTDemucs(**kwargs)`` (Demucs' defaults for missing keys).

    Args:
        kwargs: the constructor arguments (``sources`` required).
        where: file name for messages.
        segment: a bag's ``segment`` override in seconds; as in Demucs'
            ``BagOfModels`` it applies when not longer than the model's own.

    Raises:
        ArchiveError: a value the port does not support, or an invalid config.
    """
    unknown = sorted(set(kwargs) - set(DEMUCS_DEFAULTS))
    if unknown:  # demucs.states.load_model drops these with a warning, as we do
        log.warning("%s: ignoring unknown HTDemucs arguments %s", where, unknown)
    values = {**DEMUCS_DEFAULTS, **{k: v for k, v in kwargs.items() if k in DEMUCS_DEFAULTS}}
    if values["sources"] is None:
        raise ArchiveError(f"{where}: the checkpoint does not give 'sources'")
    for key, (expected, meaning) in _REQUIRED.items():
        value = values[key]
        if key == "multi_freqs" and not value:
            continue
        if value != expected:
            raise ArchiveError(
                f"{where}: {key}={value!r} is not supported (the port implements {meaning})"
            )
    rate = values["samplerate"]
    model_segment = values["segment"]
    try:
        seg = Fraction(model_segment) if not isinstance(model_segment, float) else model_segment
        if segment is not None and segment <= seg:
            seg = segment
        segment_samples = int(seg * rate)  # as Demucs: int(segment * samplerate)
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"{where}: bad segment {model_segment!r} ({exc})") from None
    fields: dict[str, Any] = {ours: values[theirs] for theirs, ours in _RENAMES.items()}
    fields["sources"] = tuple(str(s) for s in fields["sources"])
    fields["channels_time"] = int(values["channels_time"] or 0)
    fields["segment_samples"] = segment_samples
    for key in ("growth", "dconv_comp", "emb_scale", "freq_emb", "t_max_period"):
        fields[key] = float(fields[key])
    try:
        return HTDemucsConfig(**fields)
    except (UsageError, ConfigError) as exc:
        raise ArchiveError(f"{where}: {exc}") from None


def _build(ckpt: DemucsCheckpoint, segment: float | None = None) -> HTDemucs:
    where = str(ckpt.path)
    model = HTDemucs(config_from_kwargs(ckpt.kwargs, where, segment))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.state))
    unexpected = sorted(set(ckpt.state) - set(expected))
    if missing or unexpected:
        raise ArchiveError(
            f"{where}: state does not fit its kwargs"
            + (f"; missing {missing[:5]}" + ("..." if len(missing) > 5 else "") if missing else "")
            + (
                f"; unexpected {unexpected[:5]}" + ("..." if len(unexpected) > 5 else "")
                if unexpected
                else ""
            )
        )
    for key, value in ckpt.state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ArchiveError(
                f"{where}: {key} has shape {tuple(value.shape)}, but the kwargs give "
                f"{tuple(expected[key].shape)}"
            )
        if not value.is_floating_point():
            raise ArchiveError(f"{where}: {key} is {value.dtype}, expected floating point")
        if not bool(torch.isfinite(value).all()):
            raise ArchiveError(f"{where}: {key} holds NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in ckpt.state.items()}, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_htdemucs(
    path: str | os.PathLike[str], segment: float | None = None
) -> tuple[HTDemucs, DemucsCheckpoint]:
    """Build an :class:`HTDemucs` holding the weights of a Demucs ``.th`` file.

    Returns:
        the model (eval mode, parameters frozen, float32) and the checkpoint read.
    """
    ckpt = read_checkpoint(path)
    return _build(ckpt, segment), ckpt


@dataclass(frozen=True)
class DemucsBag:
    """A Demucs bag YAML, resolved against the files beside it.

    Attributes:
        path: the YAML file. signatures: member names as listed.
        members: the member checkpoint paths, in order.
        weights: ``(model, source)`` blend weights, or ``None`` (all ones).
        segment: the bag's segment override in seconds, or ``None``.
    """

    path: Path
    signatures: tuple[str, ...]
    members: tuple[Path, ...]
    weights: tuple[tuple[float, ...], ...] | None
    segment: float | None


def _member_file(folder: Path, sig: str, where: Path) -> Path:
    found = []
    for file in sorted(folder.glob(f"{sig}*.th")):
        stem = file.stem
        if stem == sig:
            found.append((file, None))
        elif stem.startswith(sig + "-") and "-" not in stem[len(sig) + 1 :]:
            found.append((file, stem[len(sig) + 1 :]))
    if not found:
        raise UsageError(f"{where}: member {sig!r} not found (expected {folder / sig}[-HASH].th)")
    if len(found) > 1:
        raise UsageError(f"{where}: several files for member {sig!r}: {[f.name for f, _ in found]}")
    file, checksum = found[0]
    if checksum is not None and not sha256_file(file).startswith(checksum.lower()):
        raise ArchiveError(f"{file}: SHA-256 does not start with {checksum} (corrupt download?)")
    return file


def read_bag(path: str | os.PathLike[str]) -> DemucsBag:
    """Read and check a Demucs bag YAML (``models``, optional ``weights`` and ``segment``).

    Raises:
        UsageError: the YAML or a member file is missing.
        ArchiveError: the YAML is malformed or its weights do not fit.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such bag file")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ArchiveError(f"{path}: unreadable YAML ({_first_line(exc)})") from None
    if not isinstance(data, Mapping) or "models" not in data:
        raise ArchiveError(f"{path}: not a Demucs bag (no 'models' list)")
    unknown = sorted(set(map(str, data)) - {"models", "weights", "segment"})
    if unknown:
        raise ArchiveError(f"{path}: unknown keys {unknown} (expected models, weights, segment)")
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise ArchiveError(f"{path}: 'models' must be a non-empty list")
    signatures = []
    for sig in models:
        if not isinstance(sig, str) or not re.fullmatch(r"[A-Za-z0-9_]+", sig):
            raise ArchiveError(f"{path}: member name {sig!r} must be a quoted signature string")
        signatures.append(sig)
    weights = data.get("weights")
    parsed: tuple[tuple[float, ...], ...] | None = None
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != len(signatures):
            raise ArchiveError(f"{path}: 'weights' needs one row per model ({len(signatures)})")
        rows = []
        for row in weights:
            if not isinstance(row, list) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                for w in row
            ):
                raise ArchiveError(f"{path}: weight row {row!r} must be a list of numbers")
            rows.append(tuple(float(w) for w in row))
        if len({len(r) for r in rows}) != 1:
            raise ArchiveError(f"{path}: weight rows have different lengths")
        parsed = tuple(rows)
    segment = data.get("segment")
    if segment is not None and (
        not isinstance(segment, (int, float)) or isinstance(segment, bool) or segment <= 0
    ):
        raise ArchiveError(f"{path}: 'segment' must be a positive number of seconds")
    members = tuple(_member_file(path.parent, sig, path) for sig in signatures)
    return DemucsBag(
        path, tuple(signatures), members, parsed, None if segment is None else float(segment)
    )


def load_bag(
    path: str | os.PathLike[str],
) -> tuple[list[HTDemucs], Tensor, DemucsBag, list[DemucsCheckpoint]]:
    """Load every member of a bag and its weight matrix.

    Returns:
        the member models (in order), the weights ``(model, source)`` float32
        (all ones when the YAML has none), the bag, and the checkpoints read.

    Raises:
        ArchiveError: members disagree on sources, sample rate or channels, or
            the weight matrix does not have one column per source; a source
            whose weights sum to 0 cannot be blended.
    """
    bag = read_bag(path)
    models, ckpts = [], []
    for file in bag.members:
        model, ckpt = load_htdemucs(file, bag.segment)
        models.append(model)
        ckpts.append(ckpt)
    first = models[0].config
    for model, ckpt in zip(models[1:], ckpts[1:], strict=True):
        c = model.config
        if (c.sources, c.sample_rate, c.audio_channels) != (
            first.sources,
            first.sample_rate,
            first.audio_channels,
        ):
            raise ArchiveError(
                f"{bag.path}: member {ckpt.path.name} has sources {list(c.sources)} at "
                f"{c.sample_rate} Hz x {c.audio_channels}, the first has {list(first.sources)} "
                f"at {first.sample_rate} Hz x {first.audio_channels}"
            )
    if bag.weights is None:
        weights = torch.ones(len(models), first.num_sources)
    else:
        weights = torch.tensor(bag.weights, dtype=torch.float32)
        if weights.shape[1] != first.num_sources:
            raise ArchiveError(
                f"{bag.path}: weight rows have {weights.shape[1]} values, the models have "
                f"{first.num_sources} sources {list(first.sources)}"
            )
    totals = weights.sum(0)
    if bool((totals == 0).any()):
        zero = [s for s, t in zip(first.sources, totals.tolist(), strict=True) if t == 0]
        raise ArchiveError(f"{bag.path}: the weights of {zero} sum to 0")
    return models, weights, bag, ckpts


LICENCE = "MIT (Demucs code and weights by Meta Platforms; github.com/facebookresearch/demucs)"
TRAINING_DATA = "MUSDB18-HQ train set and 800 extra songs (Rouard et al., ICASSP 2023)"


def _recipe_extra(model: HTDemucs) -> dict[str, Any]:
    """What the ``demucs`` chunking recipe reads from ``metadata.extra``."""
    return {"segment_samples": model.segment_samples, "transition_power": 1.0}


def _files(ckpts: Sequence[DemucsCheckpoint]) -> dict[str, Any]:
    return {c.path.name: {"sha256": c.sha256} for c in ckpts}


def single_metadata(model: HTDemucs, ckpt: DemucsCheckpoint, name: str) -> ArchiveMetadata:
    """Archive metadata of one imported HT-Demucs (family ``htdemucs``, recipe ``demucs``)."""
    from sepcli.models.build import make_metadata

    return make_metadata(
        model,
        name=name,
        licence=LICENCE,
        training_data=TRAINING_DATA,
        description=f"HT-Demucs imported from {ckpt.path.name}",
        extra={
            "imported_from": "demucs",
            "files": _files([ckpt]),
            "klass": ckpt.klass,
            "chunking": _recipe_extra(model),
        },
    )


def bag_model(models: Sequence[HTDemucs], weights: Tensor) -> nn.Module:
    """An :class:`~sepcli.models.bags.ensemble.Ensemble` of HT-Demucs members blended as
    Demucs' ``BagOfModels``: stem ``s`` is ``sum_m w[m, s] est_m[s] / sum_m w[m, s]``,
    each member chunked with its own ``demucs`` recipe.

    Args:
        weights: ``(model, source)`` as in the bag YAML.
    """
    from sepcli.models.bags.ensemble import Ensemble, MemberModule
    from sepcli.models.configs import EnsembleConfig, EnsembleMember

    sources = models[0].config.sources
    specs = tuple(EnsembleMember("htdemucs", m.config.to_dict()) for m in models)
    rows = tuple(tuple(float(w) for w in row) for row in weights.t().tolist())
    try:
        config = EnsembleConfig(sources, specs, rows)
    except (UsageError, ConfigError) as exc:
        raise ArchiveError(f"bag weights: {exc}") from None
    members = []
    for model, blend in zip(models, Ensemble.blend_matrices(config), strict=True):
        segment, context = model.archive_timing()
        extra = json.dumps({"chunking": _recipe_extra(model)}, sort_keys=True)
        members.append(
            MemberModule(
                model,
                "waveform",
                0,
                0,
                0,
                blend,
                segment,
                context,
                model.archive_overlap(),
                "demucs",
                extra,
            )  # fmt: skip
        )
    return Ensemble(members, config)


def import_demucs(
    source: str | os.PathLike[str], name: str | None = None
) -> tuple[nn.Module, ArchiveMetadata]:
    """Build the model of a Demucs ``.th`` file or bag YAML, and its archive metadata.

    A ``.th`` (or a one-member bag) gives an :class:`HTDemucs`; a bag of several
    members an ensemble of them (see :func:`bag_model`).
    """
    from sepcli.models.build import make_metadata

    path = Path(source)
    if path.suffix.lower() not in (".yaml", ".yml"):
        model, ckpt = load_htdemucs(path)
        return model, single_metadata(model, ckpt, name or path.stem)
    models, weights, bag, ckpts = load_bag(path)
    if len(models) == 1:
        return models[0], single_metadata(models[0], ckpts[0], name or path.stem)
    ensemble = bag_model(models, weights)
    for p in ensemble.parameters():
        p.requires_grad_(False)
    meta = make_metadata(
        ensemble.eval(),
        name=name or path.stem,
        licence=LICENCE,
        training_data=TRAINING_DATA,
        description=f"Demucs bag {path.name} of {len(models)} HT-Demucs models",
        extra={
            "imported_from": "demucs",
            "bag": {"models": list(bag.signatures), "weights": weights.tolist(),
                    "segment": bag.segment},
            "files": _files(ckpts),
        },
    )  # fmt: skip
    return ensemble, meta


def import_demucs_archive(
    source: str | os.PathLike[str], output: str | os.PathLike[str], name: str | None = None
) -> Path:
    """:func:`import_demucs` and write the archive to ``output`` (atomically)."""
    model, meta = import_demucs(source, name)
    return save_archive(model, meta, output)
