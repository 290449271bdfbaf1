"""Importing splifft's JSON model configs (``splifft/data/config/*.json``, splifft 0.0.9).

splifft (MIT, on PyPI) describes each model with a JSON config whose ``model``
section is its ``BSRoformerParams`` (BS- and Mel-Band RoFormers, told apart by
``band_config.kind``) or ``MDX23CParams``, beside ``transform`` (the STFT),
``audio_io``, ``waveform_chunking`` and ``normalization``. This module writes
such a config in MSST's keys (:func:`msst_from_splifft`), which
:func:`sepcli.models.importers.msst.config_from_msst` turns into a sepcli config
(:func:`config_from_splifft`); ``scripts/gen_registry.py`` inlines the MSST form
in the generated registry.

The conversion:

* ``band_config.kind: mel`` -> ``model_type: mel_band_roformer`` with
  ``num_bands``/``sample_rate``; ``fixed`` -> ``bs_roformer`` with
  ``freqs_per_bands`` (splifft's default is viperx's 62 bands).
* splifft counts Mel-Band ``mask_estimator_depth`` one higher than MSST (its
  documented off-by-one, ``BSRoformerParams.mask_estimator_depth``): MSST's
  value is splifft's minus one for a Mel-Band model.
* ``norm_output`` is implied by the MSST type (Mel-Band: on, BS: off); a config
  that differs keeps ``norm_output`` as a model key. So do ``mask_estimator``
  (HyperACE, axial refiner heads), ``use_shared_bias``, ``rms_norm_eps`` and
  ``skip_connection``.
* splifft's defaults are written out (``time_transformer_depth: 1``...), so the
  converted config does not depend on whose defaults apply.
* ``waveform_chunking.overlap_ratio`` r -> ``inference.num_overlap`` 1/(1-r)
  (splifft's default r = 0.5); ``normalization.enabled`` -> ``inference.normalize``.
* splifft's runtime precision hints (``rotary_embed_dtype``,
  ``transformer_residual_dtype``, ``use_autocast_dtype``, ``masking`` dtypes,
  ``conv_dtype``, ``batch_size``) are not model arithmetic at float32; they are
  not part of the converted config (:func:`precision_hints` lists them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sepcli.errors import ArchiveError
from sepcli.models.importers.msst import config_from_msst, safe_stem_name
from sepcli.models.nets.bs_roformer import VIPERX_FREQS_PER_BANDS

__all__ = ["msst_from_splifft", "config_from_splifft", "precision_hints"]


def _overlap(chunking: Mapping[str, Any] | None, where: str) -> int:
    ratio = float((chunking or {}).get("overlap_ratio", 0.5))
    value = 1.0 / (1.0 - ratio)
    if not math.isclose(value, round(value), rel_tol=1e-6):
        raise ArchiveError(f"{where}: overlap_ratio {ratio} is not 1 - 1/n")
    return round(value)


def precision_hints(cfg: Mapping[str, Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    model = cfg.get("model") or {}
    for key in ("rotary_embed_dtype", "transformer_residual_dtype"):
        if key in model:
            hints[key] = model[key]
    for key in ("use_autocast_dtype", "force_weights_dtype"):
        if key in (cfg.get("inference") or {}):
            hints[key] = cfg["inference"][key]
    if "conv_dtype" in (cfg.get("transform") or {}):
        hints["conv_dtype"] = cfg["transform"]["conv_dtype"]
    if cfg.get("masking"):
        hints["masking"] = dict(cfg["masking"])
    return hints


def _training(stems: list[str]) -> dict[str, Any]:
    if len(stems) == 1:
        return {"target_instrument": stems[0], "instruments": stems}
    return {"instruments": stems}


def msst_from_splifft(
    cfg: Mapping[str, Any], stems: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """(MSST model type, MSST config dict) of a splifft config; ``stems`` are the
    sepcli stem names of ``output_stem_names``, in order (default: their
    :func:`~sepcli.models.importers.msst.safe_stem_name`)."""
    if stems is None:
        stems = [safe_stem_name(s) for s in cfg["model"]["output_stem_names"]]
    where = str(cfg.get("identifier"))
    model = dict(cfg["model"])
    transform = dict(cfg.get("transform") or {})
    if transform.get("kind", "stft") != "stft":
        raise ArchiveError(f"{where}: transform {transform.get('kind')!r}")
    io = cfg.get("audio_io") or {}
    rate = int(io.get("target_sample_rate", 44100))
    n_fft = int(transform.get("n_fft", 2048))
    hop = int(transform.get("hop_length", 512))
    win = int(transform.get("win_length", 2048))
    inference: dict[str, Any] = {"num_overlap": _overlap(cfg.get("waveform_chunking"), where)}
    if (cfg.get("normalization") or {}).get("enabled"):
        inference["normalize"] = True
    if cfg["model_type"] == "mdx23c":
        stereo = bool(model.get("stereo", True))
        if win != n_fft:
            raise ArchiveError(f"{where}: win_length {win} != n_fft {n_fft}")
        out = {
            "audio": {"chunk_size": int(model["chunk_size"]), "dim_f": int(model["dim_f"]),
                      "hop_length": hop, "n_fft": n_fft, "num_channels": 2 if stereo else 1,
                      "sample_rate": rate},
            "model": {"act": model.get("act_type", "gelu"),
                      "bottleneck_factor": int(model["bottleneck_factor"]),
                      "growth": int(model["growth"]),
                      "norm": model.get("norm_type", "InstanceNorm"),
                      "num_blocks_per_scale": int(model["num_blocks_per_scale"]),
                      "num_channels": int(model["hidden_channels"]),
                      "num_scales": int(model["num_scales"]),
                      "num_subbands": int(model["num_subbands"]),
                      "scale": [int(s) for s in model["scale"]]},
            "training": _training(stems),
            "inference": inference,
        }  # fmt: skip
        return "mdx23c", out
    if cfg["model_type"] != "bs_roformer":
        raise ArchiveError(f"{where}: model_type {cfg['model_type']!r}")
    bands = dict(model.get("band_config") or {})
    mel = bands.get("kind") == "mel"
    stereo = bool(model.get("stereo", True))
    if "stft_hop_length" in model and int(model["stft_hop_length"]) != hop:
        raise ArchiveError(f"{where}: model hop {model['stft_hop_length']} != STFT hop {hop}")
    out_model: dict[str, Any] = {
        "dim": int(model["dim"]),
        "depth": int(model["depth"]),
        "stereo": stereo,
        "num_stems": len(stems),
        "time_transformer_depth": int(model.get("time_transformer_depth", 1)),
        "freq_transformer_depth": int(model.get("freq_transformer_depth", 1)),
        "linear_transformer_depth": int(model.get("linear_transformer_depth", 0)),
        "dim_head": int(model.get("dim_head", 64)),
        "heads": int(model.get("heads", 8)),
        "attn_dropout": model.get("attn_dropout", 0.0),
        "ff_dropout": model.get("ff_dropout", 0.0),
        "dim_freqs_in": n_fft // 2 + 1,
        "stft_n_fft": n_fft,
        "stft_hop_length": hop,
        "stft_win_length": win,
        "stft_normalized": bool(transform.get("normalized", False)),
        "mlp_expansion_factor": int(model.get("mlp_expansion_factor", 4)),
    }
    depth = int(model.get("mask_estimator_depth", 2))
    norm_output = bool(model.get("norm_output", False))
    if mel:
        if int(bands.get("stft_n_fft", 2048)) != n_fft:
            raise ArchiveError(f"{where}: mel bands n_fft != STFT n_fft")
        model_type = "mel_band_roformer"
        out_model["num_bands"] = int(bands.get("num_bands", 60))
        out_model["sample_rate"] = int(bands.get("sample_rate", 44100))
        if depth < 2:
            raise ArchiveError(f"{where}: Mel-Band mask_estimator_depth {depth} < 2")
        out_model["mask_estimator_depth"] = depth - 1  # splifft's documented off-by-one
        if not norm_output:
            out_model["norm_output"] = False  # not MSST's Mel-Band default
    else:
        model_type = "bs_roformer"
        out_model["freqs_per_bands"] = [
            int(b) for b in bands.get("freqs_per_bands", list(VIPERX_FREQS_PER_BANDS))
        ]
        out_model["mask_estimator_depth"] = depth
        if norm_output:
            out_model["norm_output"] = True  # not MSST's BS-RoFormer default
    head = dict(model.get("mask_estimator") or {"kind": "baseline"})
    if head.get("kind") != "baseline":
        out_model["mask_estimator"] = head
    if model.get("use_shared_bias"):
        out_model["use_shared_bias"] = True
    if model.get("skip_connection"):
        out_model["skip_connection"] = True
    if model.get("rms_norm_eps") is not None:
        out_model["rms_norm_eps"] = model["rms_norm_eps"]
    if model.get("use_torch_checkpoint"):
        out_model["use_torch_checkpoint"] = True
    chunk = int(model["chunk_size"])
    audio = {"chunk_size": chunk, "hop_length": hop, "n_fft": n_fft,
             "num_channels": 2 if stereo else 1, "sample_rate": rate}  # fmt: skip
    if chunk % hop == 0:
        inference["dim_t"] = chunk // hop + 1
    return model_type, {"audio": audio, "model": out_model, "training": _training(stems),
                        "inference": inference}  # fmt: skip


def config_from_splifft(cfg: Mapping[str, Any], where: str | None = None) -> Any:
    """The sepcli family config of a splifft JSON config (a dict)."""
    model_type, msst = msst_from_splifft(cfg)
    return config_from_msst(msst, model_type, where or str(cfg.get("identifier", "config")))
