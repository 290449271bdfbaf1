"""Model families: configs, build_model, scripting, archives, training hooks."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from sepcli.dsp.stft import stft
from sepcli.errors import ArchiveError, ConfigError
from sepcli.models import (
    FAMILIES,
    TFCTDFConfig,
    UMXConfig,
    WaveformConfig,
    build_model,
    config_from_dict,
    export_archive,
    load_archive,
    load_verified,
    make_metadata,
    reference_config,
)
from sepcli.models.archive import METADATA_FILE, ArchiveMetadata, count_parameters
from sepcli.models.configs import bandwidth_to_max_bin

torch.set_num_threads(2)

TINY = {
    "umx": UMXConfig(
        n_fft=256, hop_length=64, hidden_size=16, num_layers=1, sources=("vocals", "other")
    ),
    "umx-uni": UMXConfig(
        n_fft=256,
        hop_length=64,
        hidden_size=16,
        num_layers=2,
        unidirectional=True,
        audio_channels=1,
    ),
    "tfc-tdf": TFCTDFConfig(
        n_fft=256,
        hop_length=64,
        dim_f=64,
        num_levels=2,
        channels=4,
        growth=4,
        tfc_layers=2,
        segment_frames=32,
    ),
    "waveform": WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0),
    "waveform-attn": WaveformConfig(
        channels=4,
        depth=2,
        bottleneck="attention",
        attention_heads=2,
        attention_layers=1,
        shared_decoder=False,
        sources=("vocals", "drums"),
        segment=1.0,
    ),  # fmt: skip
}
FAMILY_OF = {
    "umx": "umx",
    "umx-uni": "umx",
    "tfc-tdf": "tfc-tdf",
    "waveform": "waveform",
    "waveform-attn": "waveform",
}


def _model(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(FAMILY_OF[key], TINY[key]).eval()


def _mix(batch: int, channels: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, channels, length, generator=g)


def test_families_listed():
    assert FAMILIES == (
        "umx",
        "tfc-tdf",
        "waveform",
        "htdemucs",
        "bs-roformer",
        "mel-roformer",
        "mdx23c",
        "scnet",
        "ensemble",
    )


@pytest.mark.parametrize(
    "family",
    [
        "umx", "tfc-tdf", "waveform", "htdemucs", "bs-roformer", "mel-roformer", "mdx23c",
        "scnet", "ensemble",
    ],  # fmt: skip
)
def test_config_json_round_trip(family):
    cfg = reference_config(family)
    text = json.dumps(cfg.to_dict())
    again = config_from_dict(family, json.loads(text))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(AttributeError):
        cfg.sources = ("x",)  # frozen


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict("umx", {"hiden_size": 3})
    with pytest.raises(ConfigError, match="hidden_size"):
        UMXConfig(hidden_size=15)
    with pytest.raises(ConfigError, match="dim_f"):
        TFCTDFConfig(dim_f=1000, num_levels=4)
    with pytest.raises(ConfigError, match="bottleneck"):
        WaveformConfig(bottleneck="gru")
    with pytest.raises(ConfigError, match="unknown model family"):
        build_model("mlp", {})
    with pytest.raises(ConfigError, match="not a config of family"):
        build_model("umx", TFCTDFConfig())


def test_bandwidth_to_max_bin_matches_open_unmix_rule():
    # np.max(np.where(linspace(0, sr/2, n_fft//2+1) <= bw)[0]) + 1, computed by hand
    assert bandwidth_to_max_bin(44100, 4096, 16000) == 1487
    assert bandwidth_to_max_bin(16000, 1024, 16000) == 513
    assert bandwidth_to_max_bin(44100, 256, 11025) == 65  # bandwidth exactly on a bin


@pytest.mark.parametrize("key", list(TINY))
def test_scripted_equals_eager(key):
    model = _model(key)
    scripted = torch.jit.script(model)
    channels = TINY[key].audio_channels
    with torch.no_grad():
        for batch, length in ((1, 1000), (1, 4097), (1, 6001), (3, 4097)):
            mix = _mix(batch, channels, length, seed=length)
            eager = model(mix)
            script = scripted(mix)
            assert script.shape == eager.shape
            assert script.shape[:3] == (batch, TINY[key].num_sources, channels)
            torch.testing.assert_close(script, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", list(TINY))
def test_archive_round_trip(key, tmp_path):
    model = _model(key)
    path = export_archive(model, tmp_path / f"{key}.sepcli", name=f"tiny-{key}", licence="MIT")
    archive = load_verified(path)
    meta = archive.metadata
    assert meta.family == FAMILY_OF[key]
    assert meta.config == TINY[key].to_dict()
    assert meta.num_parameters == count_parameters(model)
    assert meta.sources == TINY[key].sources
    assert meta.segment_seconds > 0 and 0 <= meta.context_seconds <= meta.segment_seconds
    assert (meta.stft is None) == (meta.output == "waveform")
    mix = _mix(2, TINY[key].audio_channels, 3000)
    with torch.no_grad():
        torch.testing.assert_close(archive.module(mix), model(mix), rtol=1e-5, atol=1e-6)
    # the archive rebuilds the same model from its metadata alone
    rebuilt = build_model(meta.family, meta.config).eval()
    rebuilt.load_state_dict(archive.module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(mix), model(mix), rtol=1e-5, atol=1e-6)
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def _rewrite_metadata(src, dst, **changes):
    """Copy an archive as a format-1 (TorchScript) one, replacing fields of its metadata
    (bypassing save_archive's checks)."""
    archive = load_archive(src)
    module = archive.module
    meta = json.loads(archive.metadata.to_json())
    meta.update(changes, format_version=1)
    torch.jit.save(module, str(dst), _extra_files={METADATA_FILE: json.dumps(meta)})
    with zipfile.ZipFile(dst) as zf:
        assert any(n.endswith(METADATA_FILE) for n in zf.namelist())
    return dst


def test_loading_rejects_metadata_that_does_not_match_module(tmp_path):
    path = export_archive(_model("umx"), tmp_path / "umx.sepcli", name="umx")
    cfg = dict(TINY["umx"].to_dict())
    bad_rate = _rewrite_metadata(path, tmp_path / "rate.sepcli", sample_rate=48000)
    with pytest.raises(ArchiveError, match="sample_rate"):
        load_archive(bad_rate)
    bad_sources = _rewrite_metadata(
        path, tmp_path / "src.sepcli", sources=["vocals", "drums", "bass"]
    )
    with pytest.raises(ArchiveError, match="num_sources"):
        load_archive(bad_sources)
    bad_config = _rewrite_metadata(path, tmp_path / "cfg.sepcli", config={**cfg, "hidden_size": 32})
    with pytest.raises(ArchiveError, match="config does not match"):
        load_verified(bad_config)
    bad_family = _rewrite_metadata(path, tmp_path / "fam.sepcli", family="tfc-tdf")
    with pytest.raises(ArchiveError, match="family"):
        load_verified(bad_family)
    bad_stft = _rewrite_metadata(
        path,
        tmp_path / "stft.sepcli",
        stft={"n_fft": 512, "hop_length": 64},
        config={**cfg, "n_fft": 512},
    )
    with pytest.raises(ArchiveError, match="config|STFT"):
        load_verified(bad_stft)
    bad_output = _rewrite_metadata(path, tmp_path / "out.sepcli", output="complex")
    with pytest.raises(ArchiveError, match="outputs"):
        load_verified(bad_output)


def test_make_metadata_fields():
    model = _model("tfc-tdf")
    meta = make_metadata(model, name="t", sources=["a", "b", "c", "d"], licence="MIT")
    assert isinstance(meta, ArchiveMetadata)
    assert meta.sources == ("a", "b", "c", "d") and meta.output == "complex"
    assert (meta.stft.n_fft, meta.stft.hop_length) == (256, 64)
    with pytest.raises(ConfigError, match="source names"):
        make_metadata(model, name="t", sources=["a"])


def test_recommended_overlap_per_family():
    """Open-Unmix chunks see 2 s of real audio each side: a 0.25-s crossfade is
    recommended; the other families keep the usual 0.25 of a chunk."""
    umx = make_metadata(_model("umx"), name="u")
    assert umx.context_seconds == 2.0 and umx.overlap == pytest.approx(0.25 / umx.segment_seconds)
    for key in ("tfc-tdf", "waveform"):
        assert make_metadata(_model(key), name="t", sources=None).overlap == 0.25
    # metadata written before the field existed reads as 0.25; bad values are refused
    data = json.loads(umx.to_json())
    del data["overlap"]
    assert ArchiveMetadata.from_json(json.dumps(data)).overlap == 0.25
    with pytest.raises(ArchiveError, match="overlap"):
        umx.replace(overlap=0.95)


def test_umx_training_hook_matches_forward():
    model = _model("umx")
    mix = _mix(2, 2, 5000)
    spec = stft(mix, 256, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_magnitude(spec.abs()), model(mix))
    model.train()
    est = model.forward_magnitude(spec.abs())
    assert est.shape == (2, 2, 2, 129, spec.shape[-1]) and bool((est >= 0).all())
    est.square().mean().backward()
    assert model.targets[0].fc1.weight.grad is not None


def test_umx_bandwidth_cut_off_feeds_only_low_bins():
    model = _model("umx")
    cut = TINY["umx"].input_bins
    assert cut == bandwidth_to_max_bin(44100, 256, 16000) < 129
    mag = torch.rand(1, 2, 129, 10)
    changed = mag.clone()
    changed[:, :, cut:] = 0.0  # high bins only scale the output through the mixture
    with torch.no_grad():
        a = model.forward_magnitude(mag)[..., :cut, :]
        b = model.forward_magnitude(changed)[..., :cut, :]
    torch.testing.assert_close(a, b)


def test_unidirectional_umx_is_causal():
    model = _model("umx-uni")
    mix = _mix(1, 1, 64 * 60)
    later = mix.clone()
    later[..., 64 * 40 :] += 0.5  # changes frames >= 40 - n_fft / (2 * hop) = 38
    with torch.no_grad():
        a, b = model(mix), model(later)
    torch.testing.assert_close(a[..., :37], b[..., :37])
    assert not torch.allclose(a[..., 40:], b[..., 40:])


def test_tfc_tdf_training_hook_and_band_limit():
    model = _model("tfc-tdf")
    mix = _mix(1, 2, 3000)
    spec = stft(mix, 256, 64)
    with torch.no_grad():
        out = model.forward_spectrogram(spec)
        torch.testing.assert_close(out, model(mix))
    assert out.is_complex() and out.shape == (1, 4, 2, 129, spec.shape[-1])
    assert bool((out[..., 64:, :] == 0).all())
    model.train()
    model.forward_spectrogram(spec).abs().mean().backward()
    assert model.final_conv.weight.grad is not None


def test_waveform_model_handles_any_length_and_scale():
    model = _model("waveform")
    with torch.no_grad():
        for length in (1, 15, 16, 17, 999):
            assert model(_mix(1, 2, length)).shape == (1, 4, 2, length)
        mix = _mix(1, 2, 2000)
        # input standardisation: scaling the mixture scales the estimates
        torch.testing.assert_close(model(3.0 * mix), 3.0 * model(mix), rtol=1e-3, atol=1e-4)


def test_reference_parameter_counts():
    umx = build_model("umx", reference_config("umx"))
    per_target = count_parameters(umx) / 4
    assert per_target == 8_893_348  # Open-Unmix umxhq: 8.9 M per target
    tfc = count_parameters(build_model("tfc-tdf", reference_config("tfc-tdf")))
    wave = count_parameters(build_model("waveform", reference_config("waveform")))
    assert 1e6 < tfc < 5e7 and 1e7 < wave < 1e8
