"""Importing published Open-Unmix weights into one sepcli archive.

A source is either

* an Open-Unmix model folder, as its ``scripts/train.py`` writes it:
  ``<target>.json`` (with the training ``args``: ``nfft``, ``nhop``,
  ``hidden_size``, ``nb_channels``, ``bandwidth``...), ``<target>.pth`` or
  ``<target>-<hash>.pth`` (the state dict) and optionally ``separator.json``
  (``sample_rate``, ``nfft``, ``nhop``, ``nb_channels``); or
* ``TARGET=FILE.pth``, a bare per-target state dict, together with a preset
  (``umxhq``, ``umx``, ``umxl``, ``umxse``: the public hyper-parameters of
  those releases).

All targets become one multi-target :class:`~sepcli.models.nets.umx.UMX` (output
``"magnitude"``, default phase ``"wiener"`` like Open-Unmix's separator). Layer
sizes are read from the state dicts and cross-checked against the JSON / preset;
a missing or misshaped weight is an error (no ``strict=False``). The only keys
ignored are those of the STFT modules that Open-Unmix 1.0 kept inside the model
(``stft.*``, ``transform.*``, ``sample_rate``) and BatchNorm's
``num_batches_tracked`` counters.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sepcli.errors import ArchiveError, UsageError, load_failure_reason
from sepcli.hashing import sha256_file
from sepcli.models.archive import ArchiveMetadata
from sepcli.models.build import export_archive, make_metadata
from sepcli.models.configs import UMXConfig, bandwidth_to_max_bin
from sepcli.models.nets.umx import UMX

__all__ = [
    "PRESETS",
    "OpenUnmixPreset",
    "import_openunmix",
    "import_openunmix_archive",
    "convert",
    "convert_files",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenUnmixPreset:
    """Hyper-parameters of a published Open-Unmix release."""

    sample_rate: int
    audio_channels: int
    n_fft: int
    hop_length: int
    hidden_size: int
    bandwidth: float
    targets: tuple[str, ...]
    training_data: str
    record: str


PRESETS: dict[str, OpenUnmixPreset] = {
    "umxhq": OpenUnmixPreset(
        44100,
        2,
        4096,
        1024,
        512,
        16000.0,
        ("vocals", "drums", "bass", "other"),
        "MUSDB18-HQ",
        "https://doi.org/10.5281/zenodo.3370489",
    ),
    "umx": OpenUnmixPreset(
        44100,
        2,
        4096,
        1024,
        512,
        16000.0,
        ("vocals", "drums", "bass", "other"),
        "MUSDB18",
        "https://doi.org/10.5281/zenodo.3370486",
    ),
    "umxl": OpenUnmixPreset(
        44100,
        2,
        4096,
        1024,
        1024,
        16000.0,
        ("vocals", "drums", "bass", "other"),
        "MUSDB18-HQ and extra data",
        "https://doi.org/10.5281/zenodo.5069601",
    ),
    "umxse": OpenUnmixPreset(
        16000,
        1,
        1024,
        512,
        256,
        16000.0,
        ("speech", "noise"),
        "Voicebank+DEMAND (28 speakers)",
        "https://doi.org/10.5281/zenodo.3786908",
    ),
}

_IGNORED_KEY = re.compile(r"^(stft\.|transform\.|spec\.|sample_rate$)|num_batches_tracked$")
_STEM_ORDER = ("vocals", "drums", "bass", "other")


@dataclass(frozen=True)
class _Target:
    name: str
    path: Path  # for messages; may be a label like "<vocals state dict>"
    state: dict[str, Tensor]
    args: Mapping[str, Any]  # training args from <target>.json ({} for bare files)
    separator: Mapping[str, Any]  # separator.json ({} when absent)


def _load_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        refused, reason = load_failure_reason(exc)
        what = reason if refused else f"not a PyTorch state dict ({reason})"
        raise ArchiveError(f"{path}: {what}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint (<target>.chkpnt)
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ArchiveError(f"{path}: not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArchiveError(f"{path}: expected a JSON object")
    return data


def _folder_targets(folder: Path) -> list[_Target]:
    separator = (
        _read_json(folder / "separator.json") if (folder / "separator.json").is_file() else {}
    )
    out = []
    for js in sorted(folder.glob("*.json")):
        if js.name == "separator.json" or js.stem.endswith("_lambda"):
            continue
        name = js.stem
        weights = sorted(
            p
            for p in folder.glob(f"{name}*.pth")
            if re.fullmatch(re.escape(name) + r"(-[0-9a-fA-F]+)?\.pth", p.name)
        )
        if not weights:
            continue
        if len(weights) > 1:
            raise UsageError(
                f"{folder}: several weight files for {name!r}: {[p.name for p in weights]}"
            )
        info = _read_json(js)
        args = info.get("args", {})
        if not isinstance(args, dict):
            raise ArchiveError(f"{js}: 'args' is not a JSON object")
        out.append(_Target(name, weights[0], _load_state(weights[0]), args, separator))
    if not out:
        raise UsageError(f"{folder}: no Open-Unmix targets (<target>.json with <target>.pth) found")
    return out


def _parse_source(source: str) -> list[_Target]:
    if "=" in source and not Path(source).exists():
        name, _, file = source.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise UsageError(f"{source}: target name {name!r} must use letters, digits, '_', '-'")
        path = Path(file).expanduser()
        return [_Target(name, path, _load_state(path), {}, {})]
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_targets(path)
    if path.exists():
        raise UsageError(f"{source}: a bare weights file needs a target name: TARGET={source}")
    raise UsageError(f"{source}: no such Open-Unmix model folder")


def _shapes(target: _Target) -> dict[str, Any]:
    """Layer sizes read from a state dict."""
    s = target.state
    where = str(target.path)
    for key in ("fc1.weight", "input_mean", "output_mean", "lstm.weight_ih_l0"):
        if key not in s:
            raise ArchiveError(f"{where}: not an Open-Unmix state dict (no {key!r})")
    max_bin = int(s["input_mean"].shape[0])
    hidden = int(s["fc1.weight"].shape[0])
    fc1_in = int(s["fc1.weight"].shape[1])
    if max_bin == 0 or fc1_in % max_bin:
        raise ArchiveError(f"{where}: fc1 input {fc1_in} is not a multiple of {max_bin} bins")
    nb_bins = int(s["output_mean"].shape[0])
    layers = 0
    while f"lstm.weight_ih_l{layers}" in s:
        layers += 1
    return {
        "max_bin": max_bin,
        "hidden_size": hidden,
        "audio_channels": fc1_in // max_bin,
        "n_fft": (nb_bins - 1) * 2,
        "num_layers": layers,
        "unidirectional": "lstm.weight_ih_l0_reverse" not in s,
    }


def _setting(name: str, values: list[tuple[str, Any]], where: str) -> Any:
    """The one value of a setting given by several places; an error if they disagree."""
    given = [(src, v) for src, v in values if v is not None]
    if not given:
        return None
    first = given[0][1]
    for _, v in given[1:]:
        if v != first:
            desc = ", ".join(f"{s} says {v!r}" for s, v in given)
            raise UsageError(f"{where}: conflicting {name}: {desc}")
    return first


def _preset_values(preset: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """Preset settings under UMXConfig names, and a label for messages."""
    if preset is None:
        return {}, "preset"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise UsageError(
                f"unknown Open-Unmix preset {preset!r}; expected one of {sorted(PRESETS)}"
            )
        p = PRESETS[preset]
        return {
            "sample_rate": p.sample_rate, "audio_channels": p.audio_channels, "n_fft": p.n_fft,
            "hop_length": p.hop_length, "hidden_size": p.hidden_size, "bandwidth": p.bandwidth,
        }, f"preset {preset}"  # fmt: skip
    renames = {
        "nb_layers": "num_layers",
        "nb_channels": "audio_channels",
        "nfft": "n_fft",
        "nhop": "hop_length",
    }
    values = {renames.get(k, k): v for k, v in preset.items()}
    if "nb_bins" in values:
        nb_bins = int(values.pop("nb_bins"))
        if "n_fft" in values and int(values["n_fft"]) // 2 + 1 != nb_bins:
            raise UsageError(
                f"Open-Unmix preset: nb_bins {nb_bins} does not fit n_fft {values['n_fft']}"
            )
        values.setdefault("n_fft", (nb_bins - 1) * 2)
    known = {"sample_rate", "audio_channels", "n_fft", "hop_length", "hidden_size", "bandwidth",
             "num_layers", "unidirectional", "max_bin"}  # fmt: skip
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"Open-Unmix preset has unknown keys {unknown}")
    return values, "preset"


def _config_for(targets: list[_Target], preset: Mapping[str, Any], label: str) -> UMXConfig:
    shapes = [_shapes(t) for t in targets]
    for t, sh in zip(targets[1:], shapes[1:], strict=True):
        if sh != shapes[0]:
            raise UsageError(
                f"{t.path}: layer sizes {sh} differ from {targets[0].path} ({shapes[0]}); "
                "one archive needs targets of the same size"
            )
    sh = shapes[0]
    where = ", ".join(str(t.path) for t in targets)

    def arg(key: str) -> Any:
        return _setting(key, [(str(t.path), t.args.get(key)) for t in targets], where)

    def sep(key: str) -> Any:
        return _setting(key, [(str(t.path), t.separator.get(key)) for t in targets], where)

    def pick(name: str, *places: tuple[str, Any]) -> Any:
        return _setting(name, [*places, (label, preset.get(name))], where)

    hidden = pick("hidden_size", ("state dict", sh["hidden_size"]), ("json", arg("hidden_size")))
    channels = pick(
        "audio_channels", ("state dict", sh["audio_channels"]), ("json", arg("nb_channels")),
        ("separator.json", sep("nb_channels")),
    )  # fmt: skip
    n_fft = pick(
        "n_fft", ("state dict", sh["n_fft"]), ("json", arg("nfft")), ("separator.json", sep("nfft"))
    )
    hop = pick("hop_length", ("json", arg("nhop")), ("separator.json", sep("nhop")))
    rate = pick("sample_rate", ("separator.json", sep("sample_rate")))
    pick("num_layers", ("state dict", sh["num_layers"]))
    pick("unidirectional", ("state dict", sh["unidirectional"]))
    pick("max_bin", ("state dict", sh["max_bin"]))
    if hop is None:
        raise UsageError(
            f"{targets[0].path}: the hop length is unknown; give --preset or a model folder"
        )
    if rate is None:
        rate = 44100
        log.warning("%s: no separator.json and no preset; assuming 44100 Hz", where)
    bandwidth = arg("bandwidth")
    if bandwidth is None:
        bandwidth = preset.get("bandwidth") or 0.0
    if (
        bandwidth
        and bandwidth_to_max_bin(float(rate), int(n_fft), float(bandwidth)) != sh["max_bin"]
    ):
        log.info(
            "%s: bandwidth %s Hz does not match %d input bins; using the bins",
            where,
            bandwidth,
            sh["max_bin"],
        )
    return UMXConfig(
        sources=tuple(t.name for t in targets),
        sample_rate=int(rate),
        audio_channels=int(channels),
        n_fft=int(n_fft),
        hop_length=int(hop),
        hidden_size=int(hidden),
        num_layers=sh["num_layers"],
        unidirectional=sh["unidirectional"],
        bandwidth=float(bandwidth),
        max_bin=sh["max_bin"],
    )


def _build(targets: list[_Target], preset: str | Mapping[str, Any] | None) -> UMX:
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise UsageError(f"target given twice: {sorted({n for n in names if names.count(n) > 1})}")
    values, label = _preset_values(preset)
    model = UMX(_config_for(targets, values, label))
    _load_into(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _load_into(model: UMX, targets: list[_Target]) -> None:
    for net, target in zip(model.targets, targets, strict=True):
        expected = net.state_dict()
        given = {k: v for k, v in target.state.items() if not _IGNORED_KEY.search(k)}
        missing = sorted(
            k for k in expected if k not in given and not k.endswith("num_batches_tracked")
        )
        unexpected = sorted(k for k in given if k not in expected)
        if missing or unexpected:
            raise ArchiveError(
                f"{target.path}: state dict does not fit Open-Unmix"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {unexpected}" if unexpected else "")
            )
        for key, value in given.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ArchiveError(
                    f"{target.path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
                )
        net.load_state_dict(given, strict=False)  # strictness checked above


def import_openunmix(
    sources: Sequence[str], preset: str | None = None, name: str | None = None
) -> tuple[UMX, ArchiveMetadata]:
    """Build a :class:`UMX` holding Open-Unmix weights, and its archive metadata.

    Args:
        sources: model folders and/or ``TARGET=FILE.pth`` items (see module docstring).
        preset: ``umxhq``, ``umx``, ``umxl`` or ``umxse``; required for bare files
            unless a folder gives the STFT settings; cross-checked otherwise.
        name: archive name (default: the preset, else ``openunmix``).

    Returns:
        the model (eval mode, parameters frozen) and its metadata.
    """
    if not sources:
        raise UsageError("no Open-Unmix source given")
    _preset_values(preset)  # unknown presets fail before any file is read
    targets: list[_Target] = []
    for source in sources:
        targets.extend(_parse_source(source))
    if all("=" not in s or Path(s).exists() for s in sources):
        names = [t.name for t in targets]
        known = [n for n in _STEM_ORDER if n in names]
        targets.sort(key=lambda t: (known.index(t.name) if t.name in known else len(known), t.name))
    model = _build(targets, preset)
    p = PRESETS.get(preset) if preset else None
    files = {t.name: {"file": t.path.name, "sha256": sha256_file(t.path)} for t in targets}
    meta = make_metadata(
        model,
        name=name or preset or "openunmix",
        licence=f"see {p.record}" if p else "unknown (Open-Unmix weights: see their release)",
        training_data=p.training_data if p else "unknown",
        description=f"Open-Unmix {preset or 'model'} imported from its published weights",
        extra={"imported_from": "openunmix", "preset": preset, "files": files},
    )
    return model, meta


def convert(
    state_dicts: Mapping[str, Mapping[str, Tensor]],
    preset: str | Mapping[str, Any],
    name: str = "openunmix",
    **fields: Any,
) -> tuple[UMX, ArchiveMetadata]:
    """Build a :class:`UMX` from in-memory per-target state dicts (used by the hub).

    Args:
        state_dicts: ``{target: state_dict}`` in output order.
        preset: a preset name or a mapping with the keys ``sample_rate``,
            ``audio_channels``, ``n_fft`` (or ``nb_bins``), ``hop_length``,
            ``hidden_size``, ``bandwidth`` and optionally ``nb_layers``,
            ``unidirectional``, ``max_bin`` (all cross-checked with the weights).
        name: archive name; ``fields``: more :class:`ArchiveMetadata` fields.
    """
    if not state_dicts:
        raise UsageError("no Open-Unmix state dict given")
    targets = []
    for target, state in state_dicts.items():
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ArchiveError(f"<{target} state dict>: not a state dict of tensors")
        targets.append(_Target(str(target), Path(f"<{target} state dict>"), dict(state), {}, {}))
    model = _build(targets, preset)
    if isinstance(preset, str) and preset in PRESETS:
        fields.setdefault("licence", f"see {PRESETS[preset].record}")
        fields.setdefault("training_data", PRESETS[preset].training_data)
    fields.setdefault("description", "Open-Unmix model converted from its published weights")
    return model, make_metadata(model, name=name, **fields)


def convert_files(
    files: Mapping[str, str | os.PathLike[str]],
    preset: str | Mapping[str, Any],
    name: str = "openunmix",
    **fields: Any,
) -> tuple[UMX, ArchiveMetadata]:
    """:func:`convert` for per-target state-dict files ``{target: path}`` in output order.

    This is how the hub converts a registry entry of format ``openunmix`` after
    downloading and verifying its files.

    Raises:
        ArchiveError: a file is not a state dict of tensors, or its weights do not
            fit ``preset``.
    """
    states = {str(t): _load_state(Path(p)) for t, p in files.items()}
    return convert(states, preset, name=name, **fields)


def import_openunmix_archive(
    sources: Sequence[str],
    output: str | os.PathLike[str],
    preset: str | None = None,
    name: str | None = None,
) -> Path:
    """:func:`import_openunmix` and write the archive to ``output`` (atomically)."""
    model, meta = import_openunmix(sources, preset, name)
    fields = {k: getattr(meta, k) for k in ("licence", "training_data", "description", "extra")}
    return export_archive(model, output, name=meta.name, **fields)
