"""MDX23C (TFC-TDF v3) against audio-separator 0.47.1's vendored ``tfc_tdf_v3.py``.

Reference (test-only), installed as tests/audio_separator_reference.py says::

    pip install --no-deps audio-separator==0.47.1
    pip install ml_collections

Random weights are drawn in the reference network (built from an ``ml_collections``
ConfigDict, as audio-separator builds it), loaded into ours with
``strict=True``, and both run on the same chunk: SNR >= 60 dB.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from audio_separator_reference import reference_module
from snr import snr_db

from sepcli.errors import ConfigError
from sepcli.models import build_model, config_from_dict, reference_config
from sepcli.models.importers.msst import config_from_msst, read_msst_yaml
from sepcli.models.nets.mdx23c import MDX23C, MDX23CConfig

YAML_8K = Path(__file__).parent / "data" / "msst" / "model_2_stem_full_band_8k.yaml"


def _noise(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, 2, length, generator=g)


def _reference(cfg: dict):
    ml_collections = pytest.importorskip("ml_collections")
    module = reference_module("uvr_lib_v5.tfc_tdf_v3")
    return module.TFC_TDF_net(ml_collections.ConfigDict(cfg), device="cpu").eval()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if name.endswith(("0.weight", "3.weight")) and p.dim() == 1 else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def _yaml_dict(cfg: MDX23CConfig, instruments: list[str], target: str | None) -> dict:
    return {
        "audio": {
            "n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "dim_f": cfg.dim_f,
            "dim_t": cfg.dim_t, "num_channels": 2, "sample_rate": cfg.sample_rate,
        },
        "model": {
            "act": cfg.act, "norm": cfg.norm or None, "bottleneck_factor": cfg.bottleneck_factor,
            "growth": cfg.growth, "num_blocks_per_scale": cfg.num_blocks_per_scale,
            "num_channels": cfg.num_channels, "num_scales": cfg.num_scales,
            "num_subbands": cfg.num_subbands, "scale": list(cfg.scale),
        },
        "training": {"instruments": instruments, "target_instrument": target},
        "inference": {"dim_t": cfg.dim_t, "num_overlap": cfg.num_overlap},
    }  # fmt: skip


def _tiny(norm: str, act: str, sources: tuple[str, ...]) -> MDX23CConfig:
    return MDX23CConfig(
        sources=sources, n_fft=256, hop_length=64, dim_f=128, dim_t=16, num_overlap=2,
        num_subbands=2, num_scales=2, num_blocks_per_scale=2, num_channels=8, growth=4,
        bottleneck_factor=2, norm=norm, act=act,
    )  # fmt: skip


CASES = {
    "instancenorm-gelu-2stems": (("InstanceNorm", "gelu"), ["vocals", "instrumental"], None),
    "batchnorm-relu-3stems": (("BatchNorm", "relu"), ["drums", "bass", "other"], None),
    "groupnorm-elu-target": (("GroupNorm2", "elu1.0"), ["vocals", "other"], "vocals"),
    "no-norm": (("", "gelu"), ["vocals", "instrumental"], None),
}


@pytest.mark.parametrize("key", list(CASES))
def test_mdx23c_equals_reference(key):
    (norm, act), instruments, target = CASES[key]
    cfg = _tiny(norm, act, tuple([target] if target else instruments))
    ref = _reference(_yaml_dict(cfg, instruments, target))
    _randomise(ref, 2)
    ours = MDX23C(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    mix = _noise(3, cfg.chunk_samples)
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    if expected.dim() == 3:  # one target: the reference has no stem axis
        expected = expected.unsqueeze(1)
    assert got.shape == expected.shape == (3, cfg.num_sources, 2, cfg.chunk_samples)
    assert snr_db(expected, got) >= 60


def test_scripted_equals_eager_and_other_lengths_run():
    cfg = _tiny("InstanceNorm", "gelu", ("vocals", "instrumental"))
    torch.manual_seed(0)
    ours = build_model("mdx23c", cfg).eval()
    scripted = torch.jit.script(ours)
    with torch.no_grad():
        for length in (cfg.chunk_samples, 1000, 4097):
            mix = _noise(1, length, seed=length)
            eager = ours(mix)
            assert eager.shape == (1, 2, 2, length)
            assert snr_db(eager, scripted(mix), f"scripted {length}") >= 100


def test_config_round_trip_and_validation():
    cfg = reference_config("mdx23c")
    assert config_from_dict("mdx23c", json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="stereo only"):
        MDX23CConfig(audio_channels=1)
    with pytest.raises(ConfigError, match="dim_f"):
        MDX23CConfig(dim_f=4000)
    with pytest.raises(ConfigError, match="norm must be"):
        MDX23CConfig(norm="LayerNorm")
    with pytest.raises(ConfigError, match="act must be"):
        MDX23CConfig(act="swish")


def test_published_config_reads_as_expected():
    cfg = config_from_msst(read_msst_yaml(YAML_8K))
    assert cfg == reference_config("mdx23c")
    assert cfg.sources == ("vocals", "instrumental")
    assert cfg.chunk_samples == 261120 and cfg.num_overlap == 8


def test_published_config_with_shrunk_widths():
    # the published YAML's keys and band layout (n_fft 8192, 4 subbands, 5
    # scales), with 8 channels instead of 128 and a 32-frame chunk
    data = copy.deepcopy(read_msst_yaml(YAML_8K))
    data["model"].update(num_channels=8, growth=4)
    data["inference"]["dim_t"] = 32
    cfg = config_from_msst(data)
    ref = _reference(data)
    _randomise(ref, 4)
    ours = build_model("mdx23c", cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    mix = _noise(1, cfg.chunk_samples)
    with torch.no_grad():
        assert snr_db(ref(mix), ours(mix)) >= 60


@pytest.mark.slow
def test_published_size_equals_reference():
    # full published size on one 32-frame chunk (the 256-frame chunk takes minutes on 2 CPUs)
    data = copy.deepcopy(read_msst_yaml(YAML_8K))
    data["inference"]["dim_t"] = 32
    cfg = config_from_msst(data)
    torch.manual_seed(0)
    ref = _reference(data)
    _randomise(ref, 5)
    ours = build_model("mdx23c", cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    scripted = torch.jit.script(ours)
    mix = _noise(1, cfg.chunk_samples)
    with torch.no_grad():
        got = ours(mix)
        assert snr_db(ref(mix), got, "reference") >= 60
        assert snr_db(got, scripted(mix), "scripted") >= 100
