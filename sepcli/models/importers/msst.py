"""Importing Music-Source-Separation-Training checkpoints (``MODEL.yaml`` + ``MODEL.ckpt``).

ZFTurbo's Music-Source-Separation-Training (MSST) stores a model as a YAML config
(sections ``audio``, ``model``, ``training``, ``inference``) and a PyTorch
checkpoint; UVR and ``audio-separator`` use the same pair. This module turns
such a pair into a sepcli model of family ``bs-roformer``, ``mel-roformer``,
``mdx23c`` or ``scnet`` (MSST's ``--model_type`` ``bs_roformer``,
``mel_band_roformer``, ``mdx23c``, ``scnet``).

* The YAML is read with :class:`MSSTLoader`, a ``yaml.SafeLoader`` that also
  accepts the ``!!python/tuple`` tag the published configs use (as a tuple);
  nothing else beyond safe YAML is constructed.
* The checkpoint is read with ``torch.load(weights_only=True)``: a bare state
  dict, or one wrapped under ``state_dict`` / ``model``, optionally with the
  ``module.`` prefix of ``DataParallel``.
* The family comes from ``model_type`` or, when absent, from the YAML's model
  keys (``freqs_per_bands``: BS-RoFormer; ``num_bands``: Mel-Band RoFormer;
  ``num_subbands`` / ``num_scales``: MDX23C; ``band_SR`` / ``num_dplayer``: SCNet).
* Every key of the YAML's ``model`` section is either used, checked, or known to
  matter only for training or speed (dropout, flash/sage attention, gradient
  checkpointing, the multi-resolution STFT loss); an unknown key is an error.
* The main sizes read from the weights (width, depth, heads, bands, stems) are
  compared with the config, then every weight's name and shape; any mismatch is
  a one-line :class:`ArchiveError` naming the file. Nothing is written on error.

Stem names are ``training.target_instrument`` (one stem) or
``training.instruments`` as safe names (:func:`safe_stem_name`: ``No Reverb`` ->
``no_reverb``); the published names are kept in the archive's
``extra.stem_names`` for display. Chunking follows the published inference
settings: ``inference.dim_t`` frames per chunk and ``inference.num_overlap``
(audio-separator's fallback 8 when absent); SCNet: MSST's ``audio.chunk_size``
(or ``inference.chunk_size``), ``inference.num_overlap`` and
``inference.batch_size`` for the ``msst`` recipe. ``inference.normalize: true``
(MSST normalises the whole track by its mean and standard deviation before
``demix`` and undoes it on every stem) becomes the archive's
``input_normalization = "track"`` (:func:`input_normalization`), which the
separator applies (:mod:`sepcli.inference.normalize`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from sepcli.errors import ArchiveError, ConfigError, UsageError, load_failure_reason
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "MODEL_TYPES",
    "MSSTLoader",
    "read_msst_yaml",
    "detect_model_type",
    "config_from_msst",
    "input_normalization",
    "load_msst_checkpoint",
    "import_msst",
    "import_msst_archive",
    "published_stems",
    "safe_stem_name",
]

log = logging.getLogger(__name__)

#: MSST ``--model_type`` -> sepcli family.
MODEL_TYPES: dict[str, str] = {
    "bs_roformer": "bs-roformer",
    "mel_band_roformer": "mel-roformer",
    "mdx23c": "mdx23c",
    "scnet": "scnet",
}

#: Keys of the YAML ``model`` section that only matter for training or speed.
_ROFORMER_IGNORED = {
    "attn_dropout",  # dropout is off at inference
    "ff_dropout",
    "flash_attn",  # same arithmetic; sepcli always uses scaled_dot_product_attention
    "sage_attention",
    "use_torch_checkpoint",  # gradient checkpointing
    "multi_stft_resolution_loss_weight",  # the training loss
    "multi_stft_resolutions_window_sizes",
    "multi_stft_hop_size",
    "multi_stft_normalized",
    "multi_stft_window_fn",
    "zero_dc",  # stored but unused by the reference implementation
    "match_input_audio_length",  # sepcli's output always has the input's length
}
_ROFORMER_USED = {
    "dim", "depth", "stereo", "num_stems", "time_transformer_depth",
    "freq_transformer_depth", "dim_head", "heads", "dim_freqs_in", "stft_n_fft",
    "stft_hop_length", "stft_win_length", "stft_normalized", "mask_estimator_depth",
    "mlp_expansion_factor", "skip_connection", "norm_output", "rms_norm_eps",
    "use_shared_bias", "mask_estimator",
}  # fmt: skip
#: Keys of a ``mask_estimator:`` mapping (splifft's form), -> sepcli config field.
_HEAD_KEYS = {
    "axial_refiner_large_v2": {"axial_refiner_depth": "axial_refiner_depth"},
    "hyperace_residual_v1": {"num_hyperedges": "num_hyperedges", "num_heads": "hyperace_heads"},
    "hyperace_residual_v2": {"num_hyperedges": "num_hyperedges", "num_heads": "hyperace_heads"},
    "baseline": {},
}
_BS_USED = _ROFORMER_USED | {"freqs_per_bands", "linear_transformer_depth"}
# linear_transformer_depth: 0 appears in some Mel-Band YAMLs (ZFTurbo's); it must be 0
_MEL_USED = _ROFORMER_USED | {"num_bands", "sample_rate", "linear_transformer_depth"}
_MDX23C_USED = {
    "act", "bottleneck_factor", "growth", "norm", "num_blocks_per_scale", "num_channels",
    "num_scales", "num_subbands", "scale",
}  # fmt: skip
_MDX23C_IGNORED = {"name"}
_SCNET_USED = {
    "sources", "audio_channels", "dims", "nfft", "hop_size", "win_size", "normalized",
    "band_SR", "band_stride", "band_kernel", "conv_depths", "compress", "conv_kernel",
    "num_dplayer", "expand",
}  # fmt: skip


class MSSTLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``!!python/tuple`` (constructed as a tuple)."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!!python/tuple must tag a sequence", node.start_mark
        )
    return tuple(loader.construct_sequence(node, deep=True))


MSSTLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


def read_msst_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML config at ``path`` as a dict (safe loading plus ``!!python/tuple``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=MSSTLoader)  # noqa: S506
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"{path}: not a readable YAML config ({first})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ArchiveError(f"{path}: not an MSST config (no 'model:' section)")
    return data


def detect_model_type(cfg: Mapping[str, Any], where: str = "config") -> str:
    """MSST model type of a config from its ``model`` keys (see module docstring)."""
    keys = set(cfg.get("model") or {})
    if "freqs_per_bands" in keys:
        return "bs_roformer"
    if "num_bands" in keys:
        return "mel_band_roformer"
    if "num_subbands" in keys or "num_scales" in keys:
        return "mdx23c"
    if "band_SR" in keys or "num_dplayer" in keys:
        return "scnet"
    raise ArchiveError(
        f"{where}: cannot tell the architecture from its model keys "
        f"({', '.join(sorted(keys)) or 'none'}); sepcli imports "
        f"{', '.join(MODEL_TYPES)} (give --model-type)"
    )


def _section(cfg: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = cfg.get(name) or {}
    if not isinstance(value, Mapping):
        raise ArchiveError(f"{where}: '{name}:' is not a mapping")
    return value


def safe_stem_name(name: str) -> str:
    """A published stem name as a sepcli stem name: lower case, runs of other
    characters as one ``_`` (``No Reverb`` -> ``no_reverb``, ``No Drum-Bass`` ->
    ``no_drum_bass``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def published_stems(cfg: Mapping[str, Any], where: str = "config") -> tuple[str, ...]:
    """The stem names as the config publishes them (``training.target_instrument``
    or ``training.instruments``)."""
    training = _section(cfg, "training", where)
    target = training.get("target_instrument")
    names = [target] if target else list(training.get("instruments") or [])
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ArchiveError(f"{where}: training.instruments / target_instrument name no stems")
    return tuple(n.strip() for n in names)


def _sources(cfg: Mapping[str, Any], where: str) -> tuple[str, ...]:
    names = published_stems(cfg, where)
    out = tuple(safe_stem_name(n) for n in names)
    if len(set(out)) != len(out) or not all(out):
        raise ArchiveError(f"{where}: stem names {list(names)} are not distinct as {list(out)}")
    return out


@dataclass(frozen=True)
class _Parts:
    """What a family's config builder reads of an MSST config: its sections, the
    stems (safe names), the sample rate and the name used in errors."""

    model: Mapping[str, Any]
    audio: Mapping[str, Any]
    inference: Mapping[str, Any]
    sources: tuple[str, ...]
    rate: int
    where: str


def _chunking(p: _Parts, hop: int, any_chunk: bool = False) -> tuple[int, int]:
    """(dim_t, num_overlap) as audio-separator 0.47.1 reads them. ``any_chunk``
    (the RoFormers): without ``inference.dim_t``, an ``audio.chunk_size`` that is
    not a whole number of hops is allowed (the caller keeps it as ``chunk_size``)."""
    inference, audio, where = p.inference, p.audio, p.where
    dim_t = inference.get("dim_t")
    if dim_t is None:
        chunk = audio.get("chunk_size")
        if chunk is None or (int(chunk) % hop and not any_chunk):
            raise ArchiveError(
                f"{where}: no inference.dim_t, and audio.chunk_size is not a multiple of hop {hop}"
            )
        dim_t = int(chunk) // hop + 1
    overlap = inference.get("num_overlap")
    return int(dim_t), int(overlap) if overlap is not None else 8


def _check_keys(model: Mapping[str, Any], used: set[str], ignored: set[str], where: str) -> None:
    unknown = sorted(set(model) - used - ignored)
    if unknown:
        raise ArchiveError(
            f"{where}: unknown model settings {unknown} (sepcli cannot tell whether they "
            "change the arithmetic)"
        )


def config_from_msst(
    cfg: Mapping[str, Any], model_type: str | None = None, where: str = "config"
) -> Any:
    """The sepcli family config of an MSST YAML dict.

    Returns:
        a :class:`~sepcli.models.nets.bs_roformer.BSRoformerConfig`,
        :class:`~sepcli.models.nets.mel_roformer.MelRoformerConfig`,
        :class:`~sepcli.models.nets.mdx23c.MDX23CConfig` or
        :class:`~sepcli.models.nets.scnet.SCNetConfig`.
    """
    if model_type is None:
        model_type = detect_model_type(cfg, where)
    if model_type not in MODEL_TYPES:
        raise UsageError(
            f"unknown model type {model_type!r}; sepcli imports {', '.join(MODEL_TYPES)}"
        )
    audio = _section(cfg, "audio", where)
    parts = _Parts(
        model=_section(cfg, "model", where),
        audio=audio,
        inference=_section(cfg, "inference", where),
        sources=_sources(cfg, where),
        rate=int(audio.get("sample_rate", 44100)),
        where=where,
    )
    build, used, ignored = _BUILDERS[model_type]
    _check_keys(parts.model, used, ignored, where)
    input_normalization(cfg, where)  # a bad value is named here too
    try:
        return build(parts)
    except (UsageError, ConfigError) as exc:
        raise ArchiveError(f"{where}: {exc}") from None
    except KeyError as exc:
        raise ArchiveError(f"{where}: the model section lacks {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ArchiveError(f"{where}: bad value in the model settings ({exc})") from None


def _roformer_config(p: _Parts, mel: bool) -> Any:
    model, audio, sources, rate, where = p.model, p.audio, p.sources, p.rate, p.where
    if mel and model.get("linear_transformer_depth", 0):
        raise ArchiveError(
            f"{where}: linear_transformer_depth > 0 is a BS-RoFormer setting; the Mel-Band "
            "RoFormer reference has no linear attention"
        )
    if not mel and model.get("stft_normalized"):
        raise ArchiveError(
            f"{where}: stft_normalized: true is not supported for BS-RoFormer (audio-separator "
            "0.47.1 does not pass it to the model while MSST does; the two disagree)"
        )
    channels = 2 if model.get("stereo", False) else 1
    if "num_channels" in audio and int(audio["num_channels"]) != channels:
        raise ArchiveError(
            f"{where}: audio.num_channels={audio['num_channels']} but model.stereo="
            f"{bool(model.get('stereo', False))}"
        )
    num_stems = int(model.get("num_stems", len(sources)))
    if num_stems != len(sources):
        raise ArchiveError(
            f"{where}: model.num_stems={num_stems} but training names {len(sources)} "
            f"stem(s) {list(sources)}"
        )
    n_fft = int(model.get("stft_n_fft", 2048))
    hop = int(model.get("stft_hop_length", 512))
    if "dim_freqs_in" in model and int(model["dim_freqs_in"]) != n_fft // 2 + 1:
        raise ArchiveError(
            f"{where}: dim_freqs_in={model['dim_freqs_in']} does not fit stft_n_fft={n_fft}"
        )
    if mel and "sample_rate" in model and int(model["sample_rate"]) != rate:
        raise ArchiveError(
            f"{where}: model.sample_rate={model['sample_rate']} != audio.sample_rate={rate}"
        )
    dim_t, overlap = _chunking(p, hop, any_chunk=True)
    chunk = audio.get("chunk_size")
    own_chunk = 0
    if "dim_t" not in p.inference and int(chunk) % hop:
        own_chunk = int(chunk)  # MSST's chunk, not a whole number of hops
    values: dict[str, Any] = {
        "sources": sources,
        "sample_rate": rate,
        "audio_channels": channels,
        "dim": int(model["dim"]),
        "depth": int(model["depth"]),
        "time_transformer_depth": int(model.get("time_transformer_depth", 2)),
        "freq_transformer_depth": int(model.get("freq_transformer_depth", 2)),
        "dim_head": int(model.get("dim_head", 64)),
        "heads": int(model.get("heads", 8)),
        "stft_n_fft": n_fft,
        "stft_hop_length": hop,
        "stft_win_length": int(model.get("stft_win_length", 2048)),
        "stft_normalized": bool(model.get("stft_normalized", False)),
        "mask_estimator_depth": int(model.get("mask_estimator_depth", 1 if mel else 2)),
        "mlp_expansion_factor": int(model.get("mlp_expansion_factor", 4)),
        "dim_t": dim_t,
        "num_overlap": overlap,
        "chunk_size": own_chunk,
        "norm_output": bool(model.get("norm_output", mel)),
        "rms_norm_eps": float(model.get("rms_norm_eps") or 0.0),
        "use_shared_bias": bool(model.get("use_shared_bias", False)),
        # MSST sums earlier blocks' outputs; audio-separator 0.47.1 ignores the key
        "skip_connection": bool(model.get("skip_connection", False)),
        **_head(model.get("mask_estimator"), where),
    }
    if mel:
        from sepcli.models.nets.mel_roformer import MelRoformerConfig

        return MelRoformerConfig(num_bands=int(model.get("num_bands", 60)), **values)
    from sepcli.models.nets.bs_roformer import VIPERX_FREQS_PER_BANDS, BSRoformerConfig

    bands = model.get("freqs_per_bands", VIPERX_FREQS_PER_BANDS)
    return BSRoformerConfig(
        freqs_per_bands=tuple(int(b) for b in bands),
        linear_transformer_depth=int(model.get("linear_transformer_depth", 0)),
        **values,
    )


def _head(value: Any, where: str) -> dict[str, Any]:
    """Config fields of a ``mask_estimator:`` mapping (``{kind: ..., ...}``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or value.get("kind") not in _HEAD_KEYS:
        raise ArchiveError(
            f"{where}: mask_estimator {value!r} is not one of the heads sepcli runs "
            f"({', '.join(_HEAD_KEYS)})"
        )
    kind = str(value["kind"])
    unknown = sorted(set(value) - {"kind"} - set(_HEAD_KEYS[kind]))
    if unknown:
        raise ArchiveError(f"{where}: unknown mask_estimator settings {unknown} for {kind}")
    out: dict[str, Any] = {"mask_estimator": kind}
    for key, field in _HEAD_KEYS[kind].items():
        if value.get(key) is not None:
            out[field] = int(value[key])
    return out


def _mdx23c_config(p: _Parts) -> Any:
    from sepcli.models.nets.mdx23c import MDX23CConfig

    model, audio, where = p.model, p.audio, p.where
    missing = sorted(k for k in ("n_fft", "hop_length", "dim_f") if k not in audio)
    if missing:
        raise ArchiveError(f"{where}: audio section lacks {missing}")
    hop = int(audio["hop_length"])
    dim_t, overlap = _chunking(p, hop)
    norm = model.get("norm")
    return MDX23CConfig(
        sources=p.sources,
        sample_rate=p.rate,
        audio_channels=int(audio.get("num_channels", 2)),
        n_fft=int(audio["n_fft"]),
        hop_length=hop,
        dim_f=int(audio["dim_f"]),
        dim_t=dim_t,
        num_overlap=overlap,
        num_subbands=int(model["num_subbands"]),
        num_scales=int(model["num_scales"]),
        scale=tuple(int(s) for s in model["scale"]),
        num_blocks_per_scale=int(model["num_blocks_per_scale"]),
        num_channels=int(model["num_channels"]),
        growth=int(model["growth"]),
        bottleneck_factor=int(model["bottleneck_factor"]),
        norm="" if norm is None else str(norm),
        act=str(model.get("act", "gelu")),
    )


def _load_error(path: Path, exc: BaseException) -> ArchiveError:
    """One line for a checkpoint ``torch.load(weights_only=True)`` would not read."""
    refused, reason = load_failure_reason(exc)
    return ArchiveError(
        f"{path}: {reason}" if refused else f"{path}: not a PyTorch checkpoint ({reason})"
    )


def _scnet_config(p: _Parts) -> Any:
    from sepcli.models.nets.scnet import SCNetConfig

    model, audio, inference, sources, where = p.model, p.audio, p.inference, p.sources, p.where
    count = len(model.get("sources") or sources)
    if count != len(sources):
        raise ArchiveError(
            f"{where}: model.sources names {count} stem(s) but training names "
            f"{len(sources)} {list(sources)}"
        )
    channels = int(model.get("audio_channels", 2))
    if "num_channels" in audio and int(audio["num_channels"]) != channels:
        raise ArchiveError(
            f"{where}: audio.num_channels={audio['num_channels']} but model.audio_channels="
            f"{channels}"
        )
    chunk = inference.get("chunk_size", audio.get("chunk_size"))
    if chunk is None or "num_overlap" not in inference:
        raise ArchiveError(f"{where}: SCNet needs audio.chunk_size and inference.num_overlap")
    values = {k: model[k] for k in _SCNET_USED - {"sources"} if k in model}
    return SCNetConfig(
        sources=sources,
        sample_rate=p.rate,
        chunk_size=int(chunk),
        num_overlap=int(inference["num_overlap"]),
        batch_size=int(inference.get("batch_size", 1)),
        **values,
    )


#: MSST model type -> (config builder, model keys it uses, model keys that only
#: matter for training or speed).
_BUILDERS: dict[str, tuple[Callable[[_Parts], Any], set[str], set[str]]] = {
    "bs_roformer": (functools.partial(_roformer_config, mel=False), _BS_USED, _ROFORMER_IGNORED),
    "mel_band_roformer": (
        functools.partial(_roformer_config, mel=True),
        _MEL_USED,
        _ROFORMER_IGNORED,
    ),
    "mdx23c": (_mdx23c_config, _MDX23C_USED, _MDX23C_IGNORED),
    "scnet": (_scnet_config, _SCNET_USED, set()),
}


def input_normalization(cfg: Mapping[str, Any], where: str = "config") -> str | None:
    """The archive's ``input_normalization`` for an MSST config: ``"track"`` when
    ``inference.normalize`` is true (MSST's whole-track mean/std normalisation,
    :mod:`sepcli.inference.normalize`), else ``None``. A value that is not a
    boolean is an :class:`ArchiveError` (MSST tests ``is True``)."""
    value = _section(cfg, "inference", where).get("normalize", False)
    if not isinstance(value, bool):
        raise ArchiveError(f"{where}: inference.normalize must be true or false, got {value!r}")
    return "track" if value else None  # one of sepcli.dsp.INPUT_NORMALIZATIONS


def load_msst_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in an MSST checkpoint (``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (legacy format): no mmap
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise _load_error(path, exc) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, Tensor) for v in obj.values())
    ):
        raise ArchiveError(f"{path}: not a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _weight_sizes(family: str, state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Main sizes of a checkpoint, by family (missing keys give no entry)."""
    out: dict[str, Any] = {}
    if family in ("bs-roformer", "mel-roformer"):
        w = state.get("band_split.to_features.0.1.weight")
        if w is not None:
            out["dim"] = int(w.shape[0])
        out["depth"] = _count(state, r"layers\.(\d+)\.")
        out["stems"] = _count(state, r"mask_estimators\.(\d+)\.")
        out["bands"] = _count(state, r"band_split\.to_features\.(\d+)\.")
        gates = [k for k in state if k.endswith(".to_gates.weight")]
        if gates:
            out["heads"] = int(state[gates[0]].shape[0])
    elif family == "scnet":
        out["blocks"] = _count(state, r"encoder\.(\d+)\.")
        out["num_dplayer"] = _count(state, r"separation_net\.dp_modules\.(\d+)\.")
        w = state.get(f"decoder.{out['blocks'] - 1}.1.convtrs.0.weight")
        first = state.get("encoder.0.SDlayer.convs.0.weight")
        if w is not None and first is not None:
            out["stems"] = int(w.shape[1]) // int(first.shape[1])
    else:
        w = state.get("first_conv.weight")
        if w is not None:
            out["num_channels"] = int(w.shape[0])
        out["num_scales"] = _count(state, r"encoder_blocks\.(\d+)\.")
        w = state.get("final_conv.2.weight")
        if w is not None and "first_conv.weight" in state:
            out["outputs"] = int(w.shape[0]) // int(state["first_conv.weight"].shape[1])
    return out


def _config_sizes(family: str, config: Any) -> dict[str, Any]:
    if family == "bs-roformer":
        bands = len(config.freqs_per_bands)
    elif family == "mel-roformer":
        bands = config.num_bands
    elif family == "scnet":
        return {
            "blocks": len(config.dims) - 1,
            "num_dplayer": config.num_dplayer,
            "stems": config.num_sources,
        }
    else:
        return {
            "num_channels": config.num_channels,
            "num_scales": config.num_scales,
            "outputs": config.num_sources,
        }
    return {
        "dim": config.dim,
        "depth": config.depth,
        "stems": config.num_sources,
        "bands": bands,
        "heads": config.heads,
    }


def _mismatches(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> list[str]:
    """Every weight that does not fit, first in the model's own order, each with
    both shapes: the config's (``own``) and the checkpoint's (``state``)."""
    ignored = re.compile(r"num_batches_tracked$")
    out = []
    for key, value in own.items():
        if ignored.search(key) or (key.endswith("rotary_embed.freqs") and key not in state):
            continue  # rotary frequencies are fixed: a checkpoint may leave them out
        if key not in state:
            out.append(
                f"{key}: the config gives shape {tuple(value.shape)}, the checkpoint lacks it"
            )
        elif tuple(state[key].shape) != tuple(value.shape):
            out.append(
                f"{key}: the checkpoint has shape {tuple(state[key].shape)}, the config gives "
                f"{tuple(value.shape)}"
            )
    for key, value in state.items():
        if key not in own and not ignored.search(key):
            out.append(
                f"{key}: the checkpoint has shape {tuple(value.shape)}, the config has no such weight"
            )
    return out


def _load_into(model: nn.Module, state: Mapping[str, Tensor], family: str, where: str) -> None:
    config = model.config  # type: ignore[attr-defined]
    own = model.state_dict()
    bad = _mismatches(own, state)
    if bad:
        found = _weight_sizes(family, state)
        expected = _config_sizes(family, config)
        sizes = [f"{k}={v} in the weights, {expected[k]} in the config"
                 for k, v in found.items() if k in expected and v != expected[k]]  # fmt: skip
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        hint = f"; {', '.join(sizes)}" if sizes else ""
        raise ArchiveError(f"{where}: does not fit its config: {bad[0]}{more}{hint}")
    ignored = re.compile(r"num_batches_tracked$")
    given = {k: v for k, v in state.items() if k in own}
    strict = not any(ignored.search(k) for k in own) and len(given) == len(own)
    with torch.no_grad():
        model.load_state_dict(given, strict=strict)


def import_msst(
    config_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    model_type: str | None = None,
    name: str | None = None,
    licence: str = "unknown (not stated by the publisher)",
    training_data: str = "unknown",
    description: str | None = None,
    scores: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, ArchiveMetadata]:
    """Build the sepcli model of an MSST ``MODEL.yaml`` + ``MODEL.ckpt`` pair.

    Args:
        config_path: the YAML config.
        checkpoint_path: the checkpoint.
        model_type: MSST's ``--model_type`` (``bs_roformer``,
            ``mel_band_roformer``, ``mdx23c``, ``scnet``); ``None`` infers it from the YAML.
        name: archive name (default: the checkpoint's file stem, cleaned).
        licence, training_data, description, scores: metadata the caller knows.

    Returns:
        the model (eval mode, frozen) and its archive metadata (recipe ``mdxc``;
        ``msst`` for SCNet; ``input_normalization`` from ``inference.normalize``).
    """
    from sepcli.hashing import sha256_file
    from sepcli.models.build import build_model, make_metadata

    config_path, checkpoint_path = Path(config_path), Path(checkpoint_path)
    if model_type is not None and model_type not in MODEL_TYPES:
        raise UsageError(
            f"unknown model type {model_type!r}; sepcli imports {', '.join(MODEL_TYPES)}"
        )
    cfg = read_msst_yaml(config_path)
    config = config_from_msst(cfg, model_type, str(config_path))
    family = config.family
    state = load_msst_checkpoint(checkpoint_path)
    if family == "mel-roformer":
        config = _mel_expansion_from_weights(config, state, str(checkpoint_path))
    model = build_model(family, config)
    _load_into(model, state, family, str(checkpoint_path))
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    if name is None:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", checkpoint_path.stem).strip("-") or family
    files = {
        "config": {"file": config_path.name, "sha256": sha256_file(config_path)},
        "checkpoint": {"file": checkpoint_path.name, "sha256": sha256_file(checkpoint_path)},
    }
    extra: dict[str, Any] = {
        "imported_from": "msst",
        "model_type": _type_of(family),
        "files": files,
    }
    published = published_stems(cfg, str(config_path))
    names = {s: p for s, p in zip(config.sources, published, strict=True) if s != p}
    if names:  # sepcli stem -> the publisher's name, for display (as registry entries)
        extra["stem_names"] = names
    meta = make_metadata(
        model,
        name=name,
        input_normalization=input_normalization(cfg, str(config_path)),
        licence=licence,
        training_data=training_data,
        description=description or f"{family} imported from {checkpoint_path.name}",
        scores=dict(scores or {}),
        extra=extra,
    )
    return model, meta


def _mel_expansion_from_weights(config: Any, state: Mapping[str, Tensor], where: str) -> Any:
    """Mel-Band RoFormer's mask-MLP width, read from the weights.

    audio-separator 0.47.1 builds every Mel-Band RoFormer mask MLP ``4 * dim`` wide
    whatever the YAML's ``mlp_expansion_factor`` says (MSST honours it), so a
    published YAML may state a factor its weights do not have: the weights decide.
    """
    w = state.get("mask_estimators.0.to_freqs.0.0.0.weight")
    if w is None or w.dim() != 2 or int(w.shape[0]) % config.dim:
        return config  # the shape check names the problem
    factor = int(w.shape[0]) // config.dim
    if factor != config.mlp_expansion_factor:
        log.info(
            "%s: mask MLP is %d x dim wide (the YAML says mlp_expansion_factor=%d); using %d",
            where, factor, config.mlp_expansion_factor, factor,
        )  # fmt: skip
        config = dataclasses.replace(config, mlp_expansion_factor=factor)
    return config


def _type_of(family: str) -> str:
    return next(t for t, f in MODEL_TYPES.items() if f == family)


def import_msst_archive(
    config_path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model_type: str | None = None,
    name: str | None = None,
    **fields: Any,
) -> Path:
    """:func:`import_msst` and write the archive to ``output`` (atomically)."""
    from sepcli.models.build import export_archive

    model, meta = import_msst(config_path, checkpoint_path, model_type, name, **fields)
    keep = ("licence", "training_data", "description", "scores", "extra", "input_normalization")
    return export_archive(model, output, name=meta.name, **{k: getattr(meta, k) for k in keep})
