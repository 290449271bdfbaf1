"""Every published config of the RoFormers and MDX23C, and its parity with the
reference module (shared by ``tests/test_models_shapes.py`` and
``bench/shape_coverage.py``).

The configs: splifft 0.0.9's ``data/config/*.json`` (installed; converted with
:mod:`sepcli.models.importers.splifft`) and the MSST YAMLs UVR/audio-separator
download (TRvlvr/application_data ``mdx_model_data/mdx_c_configs``) and
ZFTurbo's Music-Source-Separation-Training ``configs/``, stored as data in
``tests/data/shapes/msst_configs.json`` by ``scripts/gen_shape_fixtures.py``.

The references, with the same random weights: splifft 0.0.9's ``BSRoformer``
for the RoFormers (it implements MSST's arithmetic, ``skip_connection``
included, plus its own mask heads, ``rms_norm_eps``, ``norm_output`` and
``use_shared_bias``; :mod:`splifft_reference`), audio-separator 0.47.1's
``TFC_TDF_net`` for MDX23C.

:func:`shrink` keeps every key of a config and its band layout, STFT and stems
and makes the widths small (RoFormer: ``dim`` 32, ``depth`` <= 2, 2 heads of
16; MDX23C: 8 channels growing by 4), so the whole catalogue runs in minutes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from snr import snr_db

from sepcli.models import build_model
from sepcli.models.importers.msst import config_from_msst

FIXTURES = Path(__file__).parent / "data" / "shapes" / "msst_configs.json"


def all_configs() -> dict[str, tuple[str, dict[str, Any]]]:
    """``{config file: (MSST model type, MSST config dict)}`` of every published config."""
    import splifft

    from sepcli.models.importers.splifft import msst_from_splifft

    out: dict[str, tuple[str, dict[str, Any]]] = {}
    folder = Path(splifft.__file__).parent / "data" / "config"
    for path in sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")):
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if cfg.get("model_type") not in ("bs_roformer", "mdx23c"):
            continue
        if path.stem == "mdx23c-aufr33-dereverb":  # splifft gives no n_fft (see gen_registry)
            cfg = {**cfg, "transform": {"kind": "stft", "n_fft": 8192, "hop_length": 1024,
                                        "win_length": 8192}}  # fmt: skip
        out[f"splifft/data/config/{path.name}"] = msst_from_splifft(cfg)
    for key, item in json.loads(FIXTURES.read_text(encoding="utf-8"))["configs"].items():
        out[key] = (item["model_type"], item["config"])
    return out


def shape_class(model_type: str, cfg: Any) -> str:
    """The arithmetic a config exercises beyond its family's baseline."""
    if model_type == "mdx23c":
        return "mdx23c"
    parts = ["bs" if model_type == "bs_roformer" else "mel"]
    if cfg.mask_estimator != "baseline":
        parts.append(cfg.mask_estimator)
    if cfg.skip_connection:
        parts.append("skip")
    if cfg.rms_norm_eps:
        parts.append("eps")
    if cfg.use_shared_bias:
        parts.append("shared-bias")
    if cfg.norm_output != (model_type == "mel_band_roformer"):
        parts.append("norm_output")
    if cfg.audio_channels == 1:
        parts.append("mono")
    if getattr(cfg, "linear_transformer_depth", 0):
        parts.append("linear")
    return "+".join(parts)


def shrink(model_type: str, msst: dict[str, Any], frames: int | None = 8) -> dict[str, Any]:
    """The config with small widths (every key kept) and a ``frames``-frame chunk
    (``None``: the published chunking kept)."""
    data = copy.deepcopy(msst)
    model = data["model"]
    data.setdefault("inference", {})
    if model_type == "mdx23c":
        model.update(num_channels=8, growth=4)
        scales = int(model["num_scales"])
        data["inference"]["dim_t"] = max(int(model["scale"][0]) ** scales, 8)
        data["audio"]["dim_t"] = data["inference"]["dim_t"]
        return data
    model.update(dim=32, depth=min(int(model["depth"]), 2), heads=2, dim_head=16)
    head = model.get("mask_estimator")
    if isinstance(head, dict) and "axial_refiner_depth" in head:
        head["axial_refiner_depth"] = 1
    if frames is not None:
        data["inference"]["dim_t"] = frames
        data["audio"].pop("chunk_size", None)
    return data


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            one = (
                "gamma" in name and p.dim() == 1 or (p.dim() == 1 and name.endswith("norm.weight"))
            )
            p.copy_((1.0 if one else 0.0) + 0.3 * torch.randn(p.shape, generator=g))


def _mdx23c_reference(data: dict[str, Any]) -> torch.nn.Module:
    import pytest
    from audio_separator_reference import reference_module

    ml_collections = pytest.importorskip("ml_collections")
    module = reference_module("uvr_lib_v5.tfc_tdf_v3")
    data = copy.deepcopy(data)
    data["training"].setdefault("target_instrument", None)  # the reference reads it
    ref = module.TFC_TDF_net(ml_collections.ConfigDict(data), device="cpu").eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            base = 1.0 if p.dim() == 1 and name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return ref


def _perturb_zeros(module: torch.nn.Module, seed: int) -> None:
    """Give parameters initialised to zero (HyperACE's gates) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def splifft_random(
    cfg: Any, frames: int, seed: int = 0, published: bool = False
) -> torch.nn.Module:
    """splifft 0.0.9's module for the RoFormer config ``cfg`` (rotary tables for
    ``frames`` STFT frames) with seeded random weights: ``published``, the
    reference's own initialisation with zero-initialised gates perturbed; else
    :func:`_randomise`'s larger weights (reduced width)."""
    from splifft_reference import splifft_roformer

    torch.manual_seed(seed)
    ref = splifft_roformer(cfg, frames)
    if published:
        _perturb_zeros(ref, seed)
    else:
        _randomise(ref, seed)
    return ref


def parity(
    model_type: str, data: dict[str, Any], seed: int = 0, published: bool = False
) -> tuple[float, float, Any]:
    """(dB ours vs the reference, dB blocked inference vs the plain autograd path,
    sepcli config) with random weights, on one chunk of noise. ``published``
    (RoFormers at published width): the reference's own initialisation (larger
    random weights make a deep, wide net chaotic), zero-initialised gates perturbed."""
    cfg = config_from_msst(data, model_type)
    g = torch.Generator().manual_seed(seed + 1)
    if model_type == "mdx23c":
        ref = _mdx23c_reference(data)
        ours = build_model(cfg.family, cfg).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        mix = 0.5 * torch.randn(1, 2, cfg.chunk_samples, generator=g)
        with torch.no_grad():
            expected = ref(mix)
            got = ours(mix)
        if expected.dim() == 3:
            expected = expected.unsqueeze(1)
        return snr_db(expected, got, "reference"), float("inf"), cfg
    from splifft_reference import load_reference_into, splifft_output

    frames = cfg.dim_t
    ref = splifft_random(cfg, frames, seed, published)
    ours = build_model(cfg.family, cfg).eval()
    load_reference_into(ours, ref)
    mix = 0.5 * torch.randn(1, cfg.audio_channels, cfg.stft_hop_length * (frames - 1), generator=g)
    expected = splifft_output(ref, ours, mix)
    with torch.no_grad():
        got = ours(mix)
    plain = ours(mix).detach()
    return snr_db(expected, got, "reference"), snr_db(plain, got, "plain"), cfg


def dedupe_key(model_type: str, data: dict[str, Any]) -> str:
    """Configs with one key give the same arithmetic when shrunk (stem names and
    chunking aside)."""
    cfg = config_from_msst(data, model_type).to_dict()
    for k in ("sources", "dim_t", "num_overlap", "chunk_size"):
        cfg.pop(k, None)
    cfg["stems"] = len(config_from_msst(data, model_type).sources)
    return json.dumps([model_type, cfg], sort_keys=True)
