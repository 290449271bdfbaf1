"""Training hyper-parameters: one frozen :class:`TrainConfig`, from defaults, TOML and ``--set``.

Precedence (later wins): dataclass defaults < ``--config FILE.toml`` < command-line
options < ``--set key=value``. The resolved config is written into the run folder
as ``config.toml`` so that a run can be reproduced or resumed from it alone.

Keys of the model family's own config go under a ``[model_config]`` TOML table
or ``--set model_config.<key>=<value>`` (``model.<key>`` also works there); they are passed to
``sepcli.models.build_model`` untouched apart from type coercion.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from sepcli import atomic
from sepcli.errors import TrainingError
from sepcli.models.families import TRAINABLE_FAMILIES

__all__ = [
    "FAMILIES",
    "LOSSES",
    "LR_SCHEDULES",
    "TrainConfig",
    "load_toml",
    "parse_set",
    "apply_overrides",
    "dump_toml",
    "save_config",
    "load_config",
]

FAMILIES = TRAINABLE_FAMILIES
LR_SCHEDULES = ("plateau", "cosine")
LOSSES = ("auto", "mse", "mse-complex", "sdr", "l1-complex", "l1-time", "mrstft", "l1-time+mrstft")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Times are in seconds unless the name ends in ``_samples``. ``0`` means "off"
    or "automatic" where documented.
    """

    #: dataset roots (``--data`` repeatable; a single string is one root)
    data: tuple[str, ...] = ()
    model: str = "umx"
    targets: tuple[str, ...] = ("vocals",)
    out: str = ""
    subset: str = "train"
    layout: str = "auto"
    cache_dir: str = ""
    # validation split: names (comma separated or @file), a fraction, grouping by id prefix
    valid: str = ""
    valid_fraction: float = 0.1
    valid_group_sep: str = ""
    valid_max_tracks: int = 0
    valid_segment: float = 0.0
    #: 0-based indices of the ``data`` roots validated on (empty: every root)
    valid_roots: tuple[int, ...] = ()
    #: sampling weight of each ``data`` root (empty: proportional to its training tracks)
    data_weights: tuple[float, ...] = ()
    # data shape
    sample_rate: int = 44100
    audio_channels: int = 2
    segment: float = 6.0
    samples_per_track: int = 64
    steps_per_epoch: int = 0
    # augmentation (Uhlich et al. 2017; Open-Unmix)
    aug_gain: bool = True
    gain_min: float = 0.25
    gain_max: float = 1.25
    aug_channel_swap: bool = True
    aug_mix: bool = True
    #: cache the non-target stems one by one (MUSDB: drums, bass, other), so that
    #: source mixing draws each from its own random track as Open-Unmix does,
    #: instead of their sum (``rest``) from one track
    mix_stems: bool = False
    #: 0-based ``data`` root whose tracks lend every draw its non-target sources
    #: when mixing (e.g. MIR-1K's voices over MUSDB's instruments; -1: each draw's
    #: own root)
    mix_from: int = -1
    silence_threshold: float = 0.0
    aug_speed: float = 0.0
    speed_semitones: float = 2.0
    # optimisation
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: ``plateau``: multiply by ``lr_decay_gamma`` when the score stalls for
    #: ``lr_decay_patience`` scored epochs (Open-Unmix); ``cosine``: half a cosine
    #: from ``lr`` to 0 over ``epochs`` epochs, stepped every optimiser step
    lr_schedule: str = "plateau"
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    clip_grad: float = 5.0
    ema: float = 0.0
    loss: str = "auto"
    amp: bool = True
    patience: int = 140
    time_limit: float = 0.0
    valid_every: int = 1
    seed: int = 42
    device: str = "cpu"
    workers: int = 0
    max_params: int = 0
    # export
    name: str = ""
    licence: str = ""
    model_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = self.data
        if isinstance(data, (str, os.PathLike)):
            data = (os.fspath(data),) if os.fspath(data) else ()
        object.__setattr__(self, "data", tuple(os.fspath(d) for d in data))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "valid_roots", tuple(self.valid_roots))
        object.__setattr__(self, "data_weights", tuple(self.data_weights))
        object.__setattr__(self, "model_config", dict(self.model_config))
        problems = self.problems()
        if problems:
            raise TrainingError("invalid training config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.model not in FAMILIES:
            out.append(f"model must be one of {', '.join(FAMILIES)}, got {self.model!r}")
        if not self.targets or any(not t for t in self.targets):
            out.append("targets must name at least one stem")
        if len(set(self.targets)) != len(self.targets):
            out.append(f"targets has duplicates: {list(self.targets)}")
        if self.loss not in LOSSES:
            out.append(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            out.append(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.audio_channels not in (1, 2):
            out.append(f"audio_channels must be 1 or 2, got {self.audio_channels}")
        positive = ("sample_rate", "segment", "samples_per_track", "epochs", "batch_size", "lr")
        for name in positive:
            if not getattr(self, name) > 0:
                out.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "workers", "max_params", "patience", "valid_max_tracks"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.time_limit >= 0):
            out.append("time_limit must be >= 0 minutes (0 = none)")
        if self.valid_every < 0:
            out.append("valid_every must be >= 0 (0 = never)")
        if not 0.0 <= self.valid_fraction < 1.0:
            out.append(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not 0.0 <= self.gain_min <= self.gain_max:
            out.append(f"need 0 <= gain_min <= gain_max, got {self.gain_min}, {self.gain_max}")
        if not 0.0 < self.lr_decay_gamma <= 1.0:
            out.append("lr_decay_gamma must be in (0, 1]")
        if not 0.0 <= self.aug_speed <= 1.0 or not 0.0 <= self.speed_semitones <= 12.0:
            out.append("aug_speed must be in [0, 1] and speed_semitones in [0, 12]")
        if not 0.0 <= self.ema < 1.0:
            out.append(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.clip_grad < 0 or self.valid_segment < 0 or self.silence_threshold < 0:
            out.append("clip_grad, valid_segment and silence_threshold must be >= 0")
        out += self._data_problems()
        return out

    def _data_problems(self) -> list[str]:
        out: list[str] = []
        roots = len(self.data)
        if any(not d.strip() for d in self.data):
            out.append("data has an empty folder name")
        if len(set(self.data)) != roots:
            out.append(f"data names a folder twice: {list(self.data)}")
        if self.data_weights:
            if len(self.data_weights) != roots:
                out.append(
                    f"data_weights has {len(self.data_weights)} value(s) for {roots} data root(s)"
                )
            if any(not (math.isfinite(w) and w >= 0) for w in self.data_weights):
                out.append(f"data_weights must be finite and >= 0, got {list(self.data_weights)}")
            elif not sum(self.data_weights) > 0:
                out.append("data_weights must not all be 0")
        bad = [i for i in self.valid_roots if not 0 <= i < roots]
        if bad:
            out.append(
                f"valid_roots {bad} out of range: there are {roots} data root(s), numbered from 0"
            )
        if len(set(self.valid_roots)) != len(self.valid_roots):
            out.append(f"valid_roots has duplicates: {list(self.valid_roots)}")
        if not -1 <= self.mix_from < max(roots, 1):
            out.append(
                f"mix_from {self.mix_from} out of range: there are {roots} data root(s), "
                "numbered from 0 (-1 = each draw's own)"
            )
        return out

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("data", "targets", "valid_roots", "data_weights"):
            data[key] = list(getattr(self, key))
        data["model_config"] = dict(self.model_config)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> TrainConfig:
        return apply_overrides(cls(), data, where=where, validate=True)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """Coerce ``value`` (a TOML value or a ``--set`` string) to the field type ``hint``."""
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(f"not an integer: {value!r}")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            if isinstance(value, str):
                try:
                    return int(value.strip().replace("_", ""))
                except ValueError:
                    raise ValueError(f"not an integer: {value!r}") from None
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"not a finite number: {value!r}")
            return number
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"not a string: {value!r}")
            return str(value)
        if origin is tuple:
            return _coerce_tuple(key, value, typing.get_args(hint)[0], where)
        if origin is Mapping or hint is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError(f"not a table: {value!r}")
            return dict(value)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"{where}: bad value for {key!r}: {exc}") from None
    raise TrainingError(f"{where}: cannot set {key!r} of type {hint}")


def _coerce_tuple(key: str, value: Any, item: Any, where: str) -> tuple[Any, ...]:
    """A list setting from a TOML array, a single value or a ``--set`` string
    (``a,b`` or ``[a, b]``); ``data`` strings are one path (paths may hold commas)."""
    if isinstance(value, str):
        text = value.strip()
        if key == "data":
            items: list[Any] = [text] if text else []
        else:
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items = [v.strip().strip("\"'") for v in text.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    items = [v for v in items if not (isinstance(v, str) and not v.strip())]
    if item is str:
        if any(not isinstance(v, str) for v in items):
            raise ValueError(f"not a list of strings: {value!r}")
        return tuple(v.strip() for v in items)
    return tuple(_coerce(key, v, item, where) for v in items)


def _literal(text: str) -> Any:
    """A ``--set model_config.x=...`` value: JSON/TOML-like literal, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(
    base: TrainConfig, values: Mapping[str, Any], where: str = "overrides", validate: bool = True
) -> TrainConfig:
    """Return ``base`` with ``values`` applied, coercing each to its field type.

    Keys are field names (``-`` and ``_`` are interchangeable); ``model_config``
    may be a table (merged key by key) and ``model_config.<key>`` sets one key.
    Unknown keys raise :class:`TrainingError` naming ``where``.
    """
    changes: dict[str, Any] = {}
    model_config = dict(base.model_config)
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key.startswith("model_config.") or key.startswith("model."):
            sub = key.split(".", 1)[1]
            if not sub:
                raise TrainingError(f"{where}: empty model_config key in {raw_key!r}")
            model_config[sub] = _literal(value) if isinstance(value, str) else value
            continue
        if key not in _FIELDS:
            raise TrainingError(f"{where}: unknown setting {raw_key!r}")
        coerced = _coerce(key, value, _HINTS[key], where)
        if key == "model_config":
            model_config.update(coerced)
        else:
            changes[key] = coerced
    changes["model_config"] = model_config
    if not validate:
        return dataclasses.replace(base, **changes)
    try:
        return dataclasses.replace(base, **changes)
    except TrainingError as exc:
        raise TrainingError(f"{where}: {exc}") from None


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """Parse ``--set key=value`` strings into a dict (values stay strings)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainingError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of settings (``[model_config]`` kept as a table)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise TrainingError(f"{path}: config file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TrainingError(f"{path}: not a valid TOML config ({exc})") from None
    for key, value in data.items():
        if isinstance(value, dict) and key.replace("-", "_") != "model_config":
            raise TrainingError(
                f"{path}: unknown table [{key}] (the family's settings go in [model_config])"
            )
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise TrainingError(f"cannot write {value!r} to TOML")


def dump_toml(config: TrainConfig) -> str:
    """TOML text of ``config`` that :func:`load_toml` reads back to an equal config."""
    data = config.to_dict()
    model_config = data.pop("model_config")
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items()]
    lines.append("")
    lines.append("[model_config]")
    lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in model_config.items()]
    return "\n".join(lines) + "\n"


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as TOML (atomically)."""
    return atomic.write_text(path, dump_toml(config))


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a config written by :func:`save_config` (or any TOML of settings)."""
    return apply_overrides(TrainConfig(), load_toml(path), where=str(path))
