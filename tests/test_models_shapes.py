"""Every published config shape of the RoFormers and MDX23C against its reference.

The configs and references are :mod:`shape_cases`' (splifft 0.0.9's JSON
configs, the MSST YAMLs of TRvlvr/application_data and ZFTurbo's MSST; splifft
0.0.9's modules for the RoFormers, audio-separator 0.47.1's for MDX23C). Each
distinct config runs at reduced width (every key kept); each shape class runs
once at its published size (``slow``). ``bench/shape_coverage.py`` writes the
per-file table of docs/models.md.
"""

from __future__ import annotations

import copy

import pytest
import torch
from snr import snr_db

pytest.importorskip("splifft", reason="splifft 0.0.9 is a test-only reference")
pytest.importorskip("einops")

from shape_cases import (  # noqa: E402
    all_configs,
    dedupe_key,
    parity,
    shape_class,
    shrink,
)

from sepcli.errors import ArchiveError, ConfigError  # noqa: E402
from sepcli.models import build_model  # noqa: E402
from sepcli.models.importers.msst import (  # noqa: E402
    config_from_msst,
    input_normalization,
    published_stems,
)
from sepcli.models.importers.splifft import config_from_splifft, msst_from_splifft  # noqa: E402
from sepcli.models.nets.bs_roformer import BSRoformerConfig  # noqa: E402

CONFIGS = all_configs()
#: Published configs sepcli does not import, each with the reason (none today).
LEFT_OUT: dict[str, str] = {}


def _distinct() -> dict[str, tuple[str, dict, str]]:
    out: dict[str, tuple[str, dict, str]] = {}
    for name, (model_type, data) in CONFIGS.items():
        if name in LEFT_OUT:
            continue
        small = shrink(model_type, data)
        key = dedupe_key(model_type, small)
        if key not in out:
            cls = shape_class(model_type, config_from_msst(data, model_type, name))
            out[key] = (model_type, small, f"{cls}:{name.rsplit('/', 1)[-1]}")
    return out


DISTINCT = list(_distinct().values())


def _mark(item: tuple[str, dict, str]):
    slow = "hyperace" in item[2]  # the HyperACE CNN is full width at any dim
    return pytest.param(item[0], item[1], id=item[2], marks=[pytest.mark.slow] if slow else [])


def test_the_catalogue_is_all_there_and_imports():
    splifft = [n for n in CONFIGS if n.startswith("splifft/")]
    msst = [n for n in CONFIGS if not n.startswith("splifft/")]
    assert len(splifft) == 72 and len(msst) >= 40
    normalised = []
    for name, (model_type, data) in CONFIGS.items():
        if name in LEFT_OUT:
            with pytest.raises(ArchiveError):
                config_from_msst(data, model_type, name)
            continue
        config_from_msst(data, model_type, name)
        if input_normalization(data, name):  # MSST's whole-track input normalisation
            normalised.append(name.rsplit("/", 1)[-1])
    assert sorted(normalised) == [
        "bs_roformer-aufr33-male_female.json",
        "bs_roformer-fruit-sw.json",
    ]


@pytest.mark.parametrize(("model_type", "data"), [_mark(d) for d in DISTINCT])
def test_reduced_width_equals_reference(model_type, data):
    db, blocked, _ = parity(model_type, data)
    assert db >= 60
    # the blocked inference path (norm folded, rows in cache) covers every new part
    assert blocked >= 100


def _published(cls: str) -> tuple[str, dict]:
    for name, (model_type, published) in CONFIGS.items():
        data = published
        if (
            name not in LEFT_OUT
            and shape_class(model_type, config_from_msst(data, model_type)) == cls
        ):
            return model_type, data
    raise AssertionError(cls)


CLASSES = sorted({d[2].split(":")[0] for d in DISTINCT})


@pytest.mark.slow
@pytest.mark.parametrize("cls", CLASSES)
def test_published_size_equals_reference(cls):
    # full widths and depths; a short chunk (RoFormers: 8 frames; MDX23C: its
    # smallest whole chunk) keeps this to seconds or minutes on 2 CPUs
    model_type, data = _published(cls)
    data = copy.deepcopy(data)
    data.setdefault("inference", {})
    if model_type == "mdx23c":
        dim_t = int(data["model"]["scale"][0]) ** int(data["model"]["num_scales"])
        data["inference"]["dim_t"] = data["audio"]["dim_t"] = dim_t
    else:
        data["inference"]["dim_t"] = 8
        data["audio"].pop("chunk_size", None)
    db, blocked, _ = parity(model_type, data, published=True)
    # float rounding grows through a full-width net (the HyperACE heads' instance
    # norms most): >= 100 dB blocked vs plain is checked at reduced width above
    assert db >= 60 and blocked >= 60


def test_scripted_equals_eager_with_the_new_parts():
    cfg = BSRoformerConfig(
        sources=("a", "b"), dim=32, depth=3, heads=2, dim_head=16, stft_n_fft=128,
        stft_hop_length=32, stft_win_length=128, freqs_per_bands=(2,) * 8 + (4,) * 4 + (8,) * 2 + (17,),
        dim_t=17, rms_norm_eps=1e-3, use_shared_bias=True, skip_connection=True,
        norm_output=True, mask_estimator="axial_refiner_large_v2", axial_refiner_depth=1,
    )  # fmt: skip
    torch.manual_seed(0)
    ours = build_model(cfg.family, cfg).eval()
    scripted = torch.jit.script(ours)
    mix = 0.5 * torch.randn(1, 2, 32 * 20)
    with torch.no_grad():
        assert snr_db(ours(mix), scripted(mix)) >= 100


def test_stem_names_with_spaces_are_safe_and_the_published_ones_kept():
    name = "TRvlvr/application_data/mdx_model_data/mdx_c_configs/model_bs_roformer_ep_937_sdr_10.5309.yaml"
    model_type, data = CONFIGS[name]
    assert config_from_msst(data, model_type).sources == ("no_drum_bass",)
    assert published_stems(data) == ("No Drum-Bass",)
    name = "TRvlvr/application_data/mdx_model_data/mdx_c_configs/config_dereverb_mdx23c.yaml"
    model_type, data = CONFIGS[name]
    assert config_from_msst(data, model_type).sources == ("no_reverb", "reverb")
    clash = copy.deepcopy(data)
    clash["training"]["instruments"] = ["No Reverb", "no-reverb"]
    with pytest.raises(ArchiveError, match="not distinct"):
        config_from_msst(clash, model_type)


def test_splifft_configs_convert_with_its_off_by_one_and_heads():
    import json
    from pathlib import Path

    import splifft

    folder = Path(splifft.__file__).parent / "data" / "config"
    kim = config_from_splifft(json.loads((folder / "mel_roformer-kim-vocals.json").read_text()))
    # splifft says 3 (its count), MSST and Kim's YAML 2
    assert (kim.family, kim.mask_estimator_depth, kim.norm_output) == ("mel-roformer", 2, True)
    amane = json.loads((folder / "mel_roformer-amane-4_stems_large.json").read_text())
    assert config_from_splifft(amane).skip_connection
    ace = json.loads((folder / "bs_roformer-unwa-hyperace_v2_vocals.json").read_text())
    assert config_from_splifft(ace).mask_estimator == "hyperace_residual_v2"
    fruit = json.loads((folder / "bs_roformer-fruit-sw.json").read_text())
    assert config_from_splifft(fruit).rms_norm_eps == pytest.approx(5.960464477539063e-08)
    # splifft's normalization.enabled -> MSST's inference.normalize -> the archive's
    assert input_normalization(msst_from_splifft(fruit)[1]) == "track"
    fruit["normalization"] = {"enabled": False}
    assert input_normalization(msst_from_splifft(fruit)[1]) is None


def test_new_keys_are_checked():
    with pytest.raises(ConfigError, match="mask_estimator must be one of"):
        BSRoformerConfig(mask_estimator="fno")
    with pytest.raises(ConfigError, match="stereo only"):
        BSRoformerConfig(audio_channels=1, mask_estimator="hyperace_residual_v1")
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        BSRoformerConfig(rms_norm_eps=-1.0)
    with pytest.raises(ConfigError, match="skip_connection with linear"):
        BSRoformerConfig(skip_connection=True, linear_transformer_depth=1)
    assert BSRoformerConfig(chunk_size=749259, stft_hop_length=441).chunk_samples == 749259
