"""Test-only access to the model code vendored in ``audio-separator`` 0.47.1.

Installed without dependencies, plus only what the vendored modules import::

    pip install --no-deps audio-separator==0.47.1
    pip install "einops>=0.7" "rotary-embedding-torch>=0.6.1,<0.7.0" \
        "beartype>=0.18.5,<0.19.0" "librosa>=0.10" ml_collections
    pip install --no-deps pydub==0.25.1   # imported by common_separator (MDXC demix)

The package's ``__init__`` imports its whole ``Separator`` (onnxruntime and
more), so it is never run: :func:`reference_module` puts empty stand-ins for
the parent packages in ``sys.modules`` whose ``__path__`` points at the real
folders, then imports only the submodule asked for. Nothing here is copied
into sepcli.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

_PARENTS = (
    "audio_separator",
    "audio_separator.separator",
    "audio_separator.separator.uvr_lib_v5",
    "audio_separator.separator.uvr_lib_v5.roformer",
    "audio_separator.separator.architectures",
)


def _stub_parents() -> None:
    if all(name in sys.modules for name in _PARENTS):
        return
    spec = importlib.util.find_spec("audio_separator")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("audio-separator 0.47.1 is not installed (test-only reference)")
    root = list(spec.submodule_search_locations)[0]
    for name in _PARENTS:
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [root + name[len("audio_separator") :].replace(".", "/")]
        sys.modules[name] = module


def reference_module(name: str) -> ModuleType:
    """Import ``audio_separator.separator.<name>`` without its packages' ``__init__``.

    Skips the calling test when the reference or one of its imports is missing.
    """
    for dep in ("einops", "rotary_embedding_torch", "beartype"):
        pytest.importorskip(dep)
    _stub_parents()
    try:
        return importlib.import_module("audio_separator.separator." + name)
    except ImportError as exc:
        pytest.skip(f"audio-separator reference module {name} cannot be imported: {exc}")


MSST_DATA = Path(__file__).parent / "data" / "msst"
#: The published UVR configs (tests/data/msst/SOURCES.md), by MSST model type.
PUBLISHED_YAMLS = {
    "bs_roformer": MSST_DATA / "model_bs_roformer_ep_317_sdr_12.9755.yaml",
    "mel_band_roformer": MSST_DATA / "config_vocals_mel_band_roformer_kim.yaml",
    "mdx23c": MSST_DATA / "model_2_stem_full_band_8k.yaml",
}


def tiny_msst_yaml(
    model_type: str, dim_t: int | None = None, num_overlap: int | None = None
) -> dict:
    """The published YAML of ``model_type`` with small widths (every key kept).

    ``dim_t`` (frames per inference chunk) defaults to a small chunk too;
    ``num_overlap`` to the published one.
    """
    from sepcli.models.importers.msst import read_msst_yaml

    cfg = copy.deepcopy(read_msst_yaml(PUBLISHED_YAMLS[model_type]))
    if model_type == "mdx23c":
        cfg["model"].update(num_channels=4, growth=2)
        cfg["inference"]["dim_t"] = dim_t or 32
    else:
        cfg["model"].update(dim=16, depth=1, heads=2, dim_head=8)
        cfg["inference"]["dim_t"] = dim_t or 21
    if model_type == "bs_roformer":
        cfg["model"]["mlp_expansion_factor"] = 1
    if num_overlap is not None:
        cfg["inference"]["num_overlap"] = num_overlap
    return cfg


def reference_model(model_type: str, cfg: dict, seed: int = 0) -> torch.nn.Module:
    """The vendored model built from an MSST YAML dict as audio-separator builds it."""
    torch.manual_seed(seed)
    if model_type == "mdx23c":
        ml_collections = pytest.importorskip("ml_collections")
        net = reference_module("uvr_lib_v5.tfc_tdf_v3").TFC_TDF_net
        return net(ml_collections.ConfigDict(cfg), device="cpu").eval()
    module = reference_module("uvr_lib_v5.roformer." + model_type)
    cls = module.BSRoformer if model_type == "bs_roformer" else module.MelBandRoformer
    return cls(**cfg["model"]).eval()


def write_msst_yaml(path: Path, cfg: dict) -> Path:
    """Write ``cfg`` as YAML, tagging tuples ``!!python/tuple`` as the published files do."""
    text = yaml.dump(cfg, sort_keys=False)
    for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
        text = text.replace(f"{key}:\n", f"{key}: !!python/tuple\n")
    path.write_text(text)
    return path
