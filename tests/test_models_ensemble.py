"""Ensembles: per-stem weighted blends of family members, as one archive."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_torchscript_archive

from sepcli.dsp.phase import reconstruct
from sepcli.dsp.stft import istft, stft
from sepcli.errors import ArchiveError, ConfigError
from sepcli.models import (
    EnsembleConfig,
    EnsembleMember,
    TFCTDFConfig,
    UMXConfig,
    WaveformConfig,
    build_model,
    config_from_dict,
    export_archive,
    load_archive,
    load_verified,
)
from sepcli.models.archive import METADATA_FILE
from sepcli.models.bags.ensemble import Ensemble
from sepcli.models.build import make_metadata

torch.set_num_threads(2)

UMX = UMXConfig(n_fft=256, hop_length=64, hidden_size=16, num_layers=1, sources=("vocals", "other"))
TFC = TFCTDFConfig(
    n_fft=256, hop_length=64, dim_f=64, num_levels=1, channels=4, growth=4, tfc_layers=1,
    segment_frames=32, sources=("vocals", "drums"),
)  # fmt: skip
WAVE = WaveformConfig(
    channels=4, depth=2, lstm_layers=1, segment=1.0, sources=("drums", "vocals", "other")
)
SOURCES = ("vocals", "drums", "other")
WEIGHTS = ((0.2, 0.4, 0.4), (0.0, 1.0, 3.0), (1.0, 0.0, 1.0))


def _config(umx_wiener: int = 0) -> EnsembleConfig:
    members = (
        EnsembleMember("umx", UMX.to_dict(), umx_wiener),
        EnsembleMember("tfc-tdf", TFC.to_dict()),
        EnsembleMember("waveform", WAVE.to_dict()),
    )
    return EnsembleConfig(SOURCES, members, WEIGHTS)


def _mix(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(batch, 2, length, generator=torch.Generator().manual_seed(seed))


def _ensemble(umx_wiener: int = 0) -> Ensemble:
    torch.manual_seed(0)
    return build_model("ensemble", _config(umx_wiener)).eval()


def _expected(model: Ensemble, mix: torch.Tensor, umx_wiener: int) -> torch.Tensor:
    """The blend computed by hand from the members' own outputs."""
    umx, tfc, wave = (m.model for m in model.members)
    length = mix.shape[-1]
    spec = stft(mix, 256, 64)
    if umx_wiener:
        umx_wave = reconstruct("wiener", umx(mix), spec, 256, 64, length, wiener_iters=umx_wiener)
    else:
        umx_wave = reconstruct("mixture", umx(mix), spec, 256, 64, length)
    est = {
        0: dict(zip(UMX.sources, umx_wave.unbind(1), strict=True)),
        1: dict(zip(TFC.sources, istft(tfc(mix), 256, 64, length).unbind(1), strict=True)),
        2: dict(zip(WAVE.sources, wave(mix).unbind(1), strict=True)),
    }
    out = []
    for s, row in zip(SOURCES, WEIGHTS, strict=True):
        num = sum(w * est[m][s] for m, w in enumerate(row) if s in est[m])
        den = sum(w for m, w in enumerate(row) if s in est[m])
        out.append(num / den)
    return torch.stack(out, 1)


@pytest.mark.parametrize("umx_wiener", [0, 1])
def test_blend_equals_hand_computed_weighted_mean(umx_wiener):
    model = _ensemble(umx_wiener)
    mix = _mix(2, 3000)
    with torch.no_grad():
        out = model(mix)
        expected = _expected(model, mix, umx_wiener)
    assert out.shape == (2, 3, 2, 3000)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_scripted_equals_eager():
    model = _ensemble(umx_wiener=1)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for batch, length in ((1, 999), (1, 4096), (3, 2500)):
            mix = _mix(batch, length, seed=length)
            torch.testing.assert_close(scripted(mix), model(mix), rtol=1e-5, atol=1e-6)


def test_archive_round_trip(tmp_path):
    model = _ensemble(umx_wiener=1)
    path = export_archive(model, tmp_path / "ens.sepcli", name="tiny-ensemble")
    archive = load_verified(path)
    meta = archive.metadata
    assert (meta.family, meta.output, meta.sources) == ("ensemble", "waveform", SOURCES)
    assert config_from_dict("ensemble", meta.config) == _config(1)
    assert meta.segment_seconds == pytest.approx(min(1.0, 32 * 64 / 44100))
    assert meta.context_seconds == pytest.approx(2.0)  # UMX's
    mix = _mix(2, 3333)
    with torch.no_grad():
        torch.testing.assert_close(archive.module(mix), model(mix), rtol=1e-5, atol=1e-6)
    rebuilt = build_model("ensemble", meta.config).eval()
    rebuilt.load_state_dict(archive.module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(mix), model(mix), rtol=1e-5, atol=1e-6)


def test_ensemble_of_archives_equals_ensemble_of_models(tmp_path):
    model = _ensemble(umx_wiener=0)
    paths = [
        export_archive(m.model, tmp_path / f"m{i}.sepcli", name=f"m{i}")
        for i, m in enumerate(model.members)
    ]
    from_files = Ensemble.from_archives([load_archive(p) for p in paths], SOURCES, WEIGHTS)
    assert from_files.config == model.config
    path = export_archive(from_files, tmp_path / "bag.sepcli", name="bag")
    loaded = load_verified(path)
    mix = _mix(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(mix), model(mix), rtol=1e-5, atol=1e-6)


def test_ensemble_of_archives_whose_parameters_require_grad(tmp_path):
    # Archives saved from a training module (as `sepcli train` wrote them before it
    # exported a frozen copy) keep requires_grad=True; deep-copying such a loaded
    # script module outside no_grad gives non-leaf parameters, which export_archive
    # could not freeze ("you can only change requires_grad flags of leaf variables").
    model = _ensemble()
    paths = []
    for i, member in enumerate(model.members):
        module = member.model.train()
        for p in module.parameters():
            p.requires_grad_(True)
        meta = make_metadata(module, name=f"m{i}")
        # format 1, as written then: data archives never hold requires_grad
        paths.append(save_torchscript_archive(module.eval(), meta, tmp_path / f"m{i}.sepcli"))
    loaded = [load_archive(p) for p in paths]
    assert all(p.requires_grad for a in loaded for p in a.module.parameters())
    path = export_archive(
        Ensemble.from_archives(loaded, SOURCES, WEIGHTS), tmp_path / "bag.sepcli", name="bag"
    )
    bag = load_verified(path)
    assert not any(p.requires_grad for p in bag.module.parameters())
    mix = _mix(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(bag.module(mix), model(mix), rtol=1e-5, atol=1e-6)


def _rewrite_metadata(src, dst, **changes):
    """Copy an archive as a format-1 (TorchScript) one, replacing fields of its metadata
    (bypassing save_archive's checks)."""
    archive = load_archive(src)
    meta = json.loads(archive.metadata.to_json())
    meta.update(changes, format_version=1)
    torch.jit.save(archive.module, str(dst), _extra_files={METADATA_FILE: json.dumps(meta)})
    return dst


def test_loading_rejects_mismatched_ensemble_metadata(tmp_path):
    path = export_archive(_ensemble(), tmp_path / "ens.sepcli", name="ens")
    config = _config().to_dict()
    config["weights"] = [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    bad = _rewrite_metadata(path, tmp_path / "bad.sepcli", config=config)
    with pytest.raises(ArchiveError, match="config does not match"):
        load_verified(bad)
    with pytest.raises(ArchiveError, match="num_sources"):
        load_archive(_rewrite_metadata(path, tmp_path / "n.sepcli", sources=["vocals", "drums"]))


def test_config_validation():
    members = _config().members
    with pytest.raises(ConfigError, match="without 'drums' has weight"):
        EnsembleConfig(SOURCES, members, ((1, 1, 1), (1, 1, 1), (1, 0, 1)))
    with pytest.raises(ConfigError, match="no member contributes to 'bass'"):
        EnsembleConfig(("bass",), members, ((0, 0, 0),))
    with pytest.raises(ConfigError, match="rows"):
        EnsembleConfig(SOURCES, members, ((1, 1, 1),))
    mono = EnsembleMember("waveform", {**WAVE.to_dict(), "audio_channels": 1})
    with pytest.raises(ConfigError, match="share audio_channels"):
        EnsembleConfig(("drums",), (members[2], mono), ((1, 1),))
    with pytest.raises(ConfigError, match="unknown ensemble member family"):
        EnsembleMember("ensemble", {})
