"""BS-RoFormer and Mel-Band RoFormer against audio-separator 0.47.1's vendored code.

Reference (test-only), installed as tests/audio_separator_reference.py says::

    pip install --no-deps audio-separator==0.47.1
    pip install "einops>=0.7" "rotary-embedding-torch>=0.6.1,<0.7.0" \
        "beartype>=0.18.5,<0.19.0" "librosa>=0.10" ml_collections

Random weights are drawn in the reference model, its ``state_dict()`` is loaded
into ours with ``strict=True``, and both run on the same noise: SNR >= 60 dB.
Tiny configs run in the default suite; the published sizes (the UVR YAMLs in
tests/data/msst) run in the slow suite on one short input.
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
from sepcli.models.nets.bs_roformer import VIPERX_FREQS_PER_BANDS, BSRoformer, BSRoformerConfig
from sepcli.models.nets.mel_roformer import MelRoformer, MelRoformerConfig
from sepcli.models.nets.roformer import mel_band_layout

DATA = Path(__file__).parent / "data" / "msst"
BS_YAML = DATA / "model_bs_roformer_ep_317_sdr_12.9755.yaml"
MEL_YAMLS = (
    DATA / "model_mel_band_roformer_ep_3005_sdr_11.4360.yaml",
    DATA / "config_vocals_mel_band_roformer_kim.yaml",
)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("rotary_embed.freqs"):
                continue  # a fixed buffer-like parameter in the reference
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if "gamma" in name else 0.0))


def _noise(batch: int, channels: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(batch, channels, length, generator=g)


def _ref_kwargs(cfg: BSRoformerConfig | MelRoformerConfig) -> dict:
    kw = dict(
        dim=cfg.dim,
        depth=cfg.depth,
        stereo=cfg.audio_channels == 2,
        num_stems=cfg.num_sources,
        time_transformer_depth=cfg.time_transformer_depth,
        freq_transformer_depth=cfg.freq_transformer_depth,
        dim_head=cfg.dim_head,
        heads=cfg.heads,
        attn_dropout=0.0,
        ff_dropout=0.0,
        stft_n_fft=cfg.stft_n_fft,
        stft_hop_length=cfg.stft_hop_length,
        stft_win_length=cfg.stft_win_length,
        stft_normalized=cfg.stft_normalized,
        mask_estimator_depth=cfg.mask_estimator_depth,
        mlp_expansion_factor=cfg.mlp_expansion_factor,
    )
    if isinstance(cfg, BSRoformerConfig):
        kw.update(
            freqs_per_bands=cfg.freqs_per_bands,
            linear_transformer_depth=cfg.linear_transformer_depth,
        )
    else:
        kw.update(num_bands=cfg.num_bands, sample_rate=cfg.sample_rate)
    return kw


def _pair(cfg, seed: int = 0, flash: bool = True):
    """(reference, ours) with the same random weights."""
    if isinstance(cfg, BSRoformerConfig):
        ref_cls = reference_module("uvr_lib_v5.roformer.bs_roformer").BSRoformer
        ours = BSRoformer(cfg)
    else:
        ref_cls = reference_module("uvr_lib_v5.roformer.mel_band_roformer").MelBandRoformer
        ours = MelRoformer(cfg)
    torch.manual_seed(seed)
    ref = ref_cls(flash_attn=flash, **_ref_kwargs(cfg)).eval()
    _randomise(ref, seed)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def _ref_out(ref, mix: torch.Tensor, sources: int) -> torch.Tensor:
    with torch.no_grad():
        out = ref(mix)
    if out.dim() == 3:  # one stem: the reference drops the stem axis
        out = out.unsqueeze(1)
    assert out.shape[1] == sources
    return out


N_FFT = 128
TINY_BANDS = (2,) * 8 + (4,) * 4 + (8,) * 2 + (N_FFT // 2 + 1 - 48,)

TINY_BS = {
    "stereo-2stems": BSRoformerConfig(
        sources=("vocals", "other"), dim=32, depth=2, freq_transformer_depth=2,
        freqs_per_bands=TINY_BANDS, dim_head=16, heads=2, stft_n_fft=N_FFT,
        stft_hop_length=32, stft_win_length=N_FFT, dim_t=17, num_overlap=2,
    ),
    "mono-linear": BSRoformerConfig(
        sources=("vocals",), audio_channels=1, dim=24, depth=1, linear_transformer_depth=1,
        freqs_per_bands=TINY_BANDS, dim_head=8, heads=3, stft_n_fft=N_FFT,
        stft_hop_length=32, stft_win_length=96, mask_estimator_depth=1,
        mlp_expansion_factor=2, dim_t=17, num_overlap=2,
    ),
    "normalized-deep-mask": BSRoformerConfig(
        sources=("vocals",), dim=16, depth=1, time_transformer_depth=2,
        freqs_per_bands=TINY_BANDS, dim_head=8, heads=2, stft_n_fft=N_FFT,
        stft_hop_length=32, stft_win_length=N_FFT, stft_normalized=True,
        mask_estimator_depth=3, dim_t=17, num_overlap=2,
    ),
}  # fmt: skip

TINY_MEL = {
    "stereo-2stems": MelRoformerConfig(
        sources=("vocals", "other"), dim=32, depth=2, num_bands=12, dim_head=16, heads=2,
        stft_n_fft=256, stft_hop_length=64, stft_win_length=256, mask_estimator_depth=2,
        dim_t=17, num_overlap=2,
    ),
    "mono-1stem": MelRoformerConfig(
        sources=("vocals",), audio_channels=1, sample_rate=22050, dim=16, depth=1,
        num_bands=8, dim_head=8, heads=2, stft_n_fft=256, stft_hop_length=64,
        stft_win_length=200, mask_estimator_depth=1, dim_t=17, num_overlap=2,
    ),
}  # fmt: skip


@pytest.mark.parametrize("key", list(TINY_BS))
def test_bs_roformer_equals_reference(key):
    cfg = TINY_BS[key]
    ref, ours = _pair(cfg)
    for batch, length in ((1, 32 * 40), (2, 32 * 40 + 7), (1, 5000)):
        mix = _noise(batch, cfg.audio_channels, length, seed=length)
        expected = _ref_out(ref, mix, cfg.num_sources)
        with torch.no_grad():
            got = ours(mix)
        assert got.shape == (batch, cfg.num_sources, cfg.audio_channels, length)
        # the reference's inverse STFT stops at the last whole hop
        n = expected.shape[-1]
        assert snr_db(expected, got[..., :n]) >= 60


@pytest.mark.parametrize("key", list(TINY_MEL))
def test_mel_roformer_equals_reference(key):
    cfg = TINY_MEL[key]
    ref, ours = _pair(cfg, seed=3)
    for batch, length in ((1, 64 * 30), (2, 64 * 30 + 5)):
        mix = _noise(batch, cfg.audio_channels, length, seed=length)
        expected = _ref_out(ref, mix, cfg.num_sources)
        with torch.no_grad():
            got = ours(mix)
        assert got.shape == (batch, cfg.num_sources, cfg.audio_channels, length)
        n = expected.shape[-1]
        assert snr_db(expected, got[..., :n]) >= 60


@pytest.mark.parametrize("flash", [False, True])
def test_flash_attention_flag_does_not_change_the_reference(flash):
    # our attention is always scaled_dot_product_attention; the reference's
    # flash and einsum paths must both match it
    cfg = TINY_BS["stereo-2stems"]
    ref, ours = _pair(cfg, seed=5, flash=flash)
    mix = _noise(1, 2, 32 * 30)
    with torch.no_grad():
        assert snr_db(_ref_out(ref, mix, 2), ours(mix)) >= 60


@pytest.mark.parametrize("model", ["bs", "mel"])
def test_scripted_equals_eager(model):
    cfg = TINY_BS["stereo-2stems"] if model == "bs" else TINY_MEL["stereo-2stems"]
    torch.manual_seed(0)
    ours = build_model(cfg.family, cfg).eval()
    scripted = torch.jit.script(ours)
    with torch.no_grad():
        for length in (1000, 4097, cfg.chunk_samples):
            mix = _noise(1, 2, length, seed=length)
            assert snr_db(ours(mix), scripted(mix), f"scripted {length}") >= 100


@pytest.mark.parametrize("model", ["bs", "mel"])
@pytest.mark.parametrize("budget", [1, 8 << 20])  # one sequence per block; one block
def test_inference_blocks_equal_the_autograd_path(model, budget, monkeypatch):
    # without autograd, attention and feed-forward run in blocks of sequences with
    # the norm folded into the projections and the rotary turned in place: the
    # same numbers as the plain path (which training and autograd take)
    import sepcli.models.nets.blocks as blocks

    monkeypatch.setattr(blocks.row_blocks, "__defaults__", (budget,))
    cfg = TINY_BS["stereo-2stems"] if model == "bs" else TINY_MEL["stereo-2stems"]
    ref, ours = _pair(cfg, seed=7)
    mix = _noise(2, 2, cfg.chunk_samples, seed=11)
    with torch.no_grad():
        fast = ours(mix)
    plain = ours(mix).detach()
    assert snr_db(plain, fast, "blocked/plain") >= 100
    assert snr_db(_ref_out(ref, mix, cfg.num_sources), fast, "reference/blocked") >= 60
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast16 = ours(mix)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain16 = ours(mix).detach()
    assert fast16.dtype == torch.float32
    # bf16 rounding, as far from fp32 as the plain path under autocast
    assert snr_db(plain, fast16, "bf16 blocked") >= snr_db(plain, plain16, "bf16 plain") - 3


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "bands"),
    [(44100, 2048, 60), (44100, 2048, 64), (22050, 1024, 40), (44100, 256, 12), (16000, 512, 32)],
)
def test_mel_band_layout_is_librosa_support(sample_rate, n_fft, bands):
    librosa = pytest.importorskip("librosa")
    mel = torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=bands))
    mel[0][0] = 1.0
    mel[-1, -1] = 1.0
    assert torch.equal(mel_band_layout(sample_rate, n_fft, bands), mel > 0)


def test_config_round_trip_and_validation():
    for family in ("bs-roformer", "mel-roformer"):
        cfg = reference_config(family)
        again = config_from_dict(family, json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        with pytest.raises(ConfigError, match="unknown keys"):
            config_from_dict(family, {"dimm": 3})
    with pytest.raises(ConfigError, match="freqs_per_bands sums to"):
        BSRoformerConfig(freqs_per_bands=(2, 2))
    with pytest.raises(ConfigError, match="dim_head must be even"):
        BSRoformerConfig(dim_head=7)
    with pytest.raises(ConfigError, match="num_bands must be >= 2"):
        MelRoformerConfig(num_bands=1)
    with pytest.raises(ConfigError, match="num_overlap"):
        MelRoformerConfig(num_overlap=0)


def _shrunk(yaml_path: Path) -> tuple[dict, object]:
    """The YAML's model section with small widths (same keys), and its sepcli config."""
    cfg = copy.deepcopy(read_msst_yaml(yaml_path))
    cfg["model"].update(dim=16, depth=1, heads=2, dim_head=8)
    cfg["inference"]["dim_t"] = 21
    return cfg, config_from_msst(cfg, where=str(yaml_path))


def _reference_from_yaml(model_section: dict, mel: bool):
    """The reference built as audio-separator's RoformerLoader builds it (the YAML's keys)."""
    module = reference_module(
        "uvr_lib_v5.roformer." + ("mel_band_roformer" if mel else "bs_roformer")
    )
    cls = module.MelBandRoformer if mel else module.BSRoformer
    return cls(**model_section).eval()


@pytest.mark.parametrize("yaml_path", [BS_YAML, *MEL_YAMLS], ids=lambda p: p.stem)
def test_published_configs_with_shrunk_widths(yaml_path):
    # every key of the published YAML goes through our importer and through the
    # reference constructor; only the widths are small
    cfg, ours_cfg = _shrunk(yaml_path)
    mel = "num_bands" in cfg["model"]
    ref = _reference_from_yaml(cfg["model"], mel)
    _randomise(ref, 7)
    ours = build_model(ours_cfg.family, ours_cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    mix = _noise(1, 2, ours_cfg.chunk_samples // 4)
    expected = _ref_out(ref, mix, ours_cfg.num_sources)
    with torch.no_grad():
        got = ours(mix)
    assert snr_db(expected, got[..., : expected.shape[-1]]) >= 60


def test_published_configs_read_as_expected():
    bs = config_from_msst(read_msst_yaml(BS_YAML))
    assert bs == reference_config("bs-roformer")
    assert bs.freqs_per_bands == VIPERX_FREQS_PER_BANDS and bs.chunk_samples == 352800
    kim = config_from_msst(read_msst_yaml(MEL_YAMLS[1]))
    assert kim == reference_config("mel-roformer")
    assert kim.chunk_samples == 485100 and kim.num_overlap == 1
    viperx_mel = config_from_msst(read_msst_yaml(MEL_YAMLS[0]))
    assert (viperx_mel.depth, viperx_mel.dim, viperx_mel.num_overlap) == (12, 384, 4)


@pytest.mark.slow
@pytest.mark.parametrize("yaml_path", [BS_YAML, MEL_YAMLS[1]], ids=lambda p: p.stem)
def test_published_size_equals_reference(yaml_path):
    # full published widths and depths; one 0.25-s input keeps this short
    cfg = read_msst_yaml(yaml_path)
    ours_cfg = config_from_msst(cfg, where=str(yaml_path))
    mel = "num_bands" in cfg["model"]
    torch.manual_seed(0)  # the reference's own random initialisation: at these
    ref = _reference_from_yaml(cfg["model"], mel)  # widths, larger weights make the net chaotic
    ours = build_model(ours_cfg.family, ours_cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    mix = _noise(1, 2, 441 * 25)
    expected = _ref_out(ref, mix, ours_cfg.num_sources)
    scripted = torch.jit.script(ours)
    with torch.no_grad():
        got = ours(mix)
        script = scripted(mix)
    assert snr_db(expected, got, "reference") >= 60
    assert snr_db(got, script, "scripted") >= 100
