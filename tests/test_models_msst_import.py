"""Importing MSST / UVR ``MODEL.yaml`` + ``MODEL.ckpt`` pairs (``sepcli models import --format msst``).

Checkpoints are written here from the audio-separator 0.47.1 reference models
(random weights, tiny widths; see tests/audio_separator_reference.py), in the
layouts published checkpoints use: a bare state dict, or one wrapped under
``state_dict`` / ``model``, with or without DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from audio_separator_reference import (
    PUBLISHED_YAMLS,
    reference_model,
    tiny_msst_yaml,
    write_msst_yaml,
)
from click.testing import CliRunner
from conftest import assert_data_archive
from snr import snr_db

from sepcli.cli import main
from sepcli.errors import ArchiveError, UsageError
from sepcli.models.archive import load_archive
from sepcli.models.importers.msst import (
    MSSTLoader,
    detect_model_type,
    import_msst,
    import_msst_archive,
    read_msst_yaml,
)

PUBLISHED = PUBLISHED_YAMLS


_tiny_yaml = tiny_msst_yaml
_reference = reference_model
_write_yaml = write_msst_yaml


def _pair(
    tmp_path: Path, model_type: str, wrap: str = "bare"
) -> tuple[Path, Path, torch.nn.Module]:
    cfg = _tiny_yaml(model_type)
    ref = _reference(model_type, cfg)
    state = ref.state_dict()
    if wrap.endswith("module"):
        state = {"module." + k: v for k, v in state.items()}
    if wrap.startswith("state_dict"):
        state = {"state_dict": state, "epoch": 3}
    elif wrap.startswith("model"):
        state = {"model": state}
    ckpt = tmp_path / f"{model_type}.ckpt"
    torch.save(state, ckpt)
    return _write_yaml(tmp_path / f"{model_type}.yaml", cfg), ckpt, ref


def _mix(length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(length)
    return 0.5 * torch.randn(1, 2, length, generator=g)


@pytest.mark.parametrize(
    ("model_type", "wrap"),
    [("bs_roformer", "bare"), ("mel_band_roformer", "state_dict+module"), ("mdx23c", "model")],
)
def test_import_equals_reference_and_archives(tmp_path, model_type, wrap):
    config, ckpt, ref = _pair(tmp_path, model_type, wrap)
    model, meta = import_msst(config, ckpt, licence="test licence")
    assert meta.recipe == "mdxc" and meta.licence == "test licence"
    assert meta.extra["model_type"] == model_type
    assert meta.extra["files"]["checkpoint"]["file"] == ckpt.name
    if model_type == "mdx23c":
        assert meta.sources == ("vocals", "instrumental")
    else:
        assert meta.sources == ("vocals",)
    mix = _mix(model.config.chunk_samples)
    with torch.no_grad():
        expected = ref(mix)
        got = model(mix)
    if expected.dim() == 3:
        expected = expected.unsqueeze(1)
    assert snr_db(expected, got) >= 60
    out = import_msst_archive(config, ckpt, tmp_path / "x.sepcli", model_type=model_type)
    assert_data_archive(out)
    archive = load_archive(out)
    assert archive.metadata.family == model.family and archive.metadata.recipe == "mdxc"
    with torch.no_grad():
        assert snr_db(got, archive.module(mix), "archive") >= 100


def test_cli_import(tmp_path):
    config, ckpt, _ = _pair(tmp_path, "bs_roformer")
    out = tmp_path / "bs.sepcli"
    args = [
        "models",
        "import",
        "--format",
        "msst",
        "--config",
        str(config),
        str(ckpt),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(main, [*args, "--licence", "CC-BY-4.0"])
    assert result.exit_code == 0, result.output
    meta = load_archive(out).metadata
    assert (
        meta.family == "bs-roformer" and meta.licence == "CC-BY-4.0" and meta.name == "bs_roformer"
    )
    again = CliRunner().invoke(main, [*args, "--model-type", "mdx23c", "--force"])
    assert again.exit_code != 0 and "unknown model settings" in again.output
    missing = CliRunner().invoke(
        main, ["models", "import", "--format", "msst", str(ckpt), "-o", str(tmp_path / "y.sepcli")]
    )
    assert missing.exit_code == 2 and "--config" in missing.output
    assert not (tmp_path / "y.sepcli").exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned",))


def test_cli_refused_checkpoint_says_what_and_why_in_one_line(tmp_path, monkeypatch):
    """A pickle that asks for a function is refused by name; torch's hint to turn
    weights_only off is never relayed."""
    monkeypatch.chdir(tmp_path)
    config, _, _ = _pair(tmp_path, "bs_roformer")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _RunsCode()}, evil)
    out = tmp_path / "evil.sepcli"
    args = [
        "models",
        "import",
        "--format",
        "msst",
        "--config",
        str(config),
        str(evil),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and not out.exists() and not (tmp_path / "pwned").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "evil.ckpt: refused" in lines[0] and "system" in lines[0]  # what was refused
    assert "never runs code" in lines[0]  # and why
    assert "weights_only" not in result.output and "trusted source" not in result.output


def test_safe_loader_takes_python_tuple_and_nothing_else(tmp_path):
    assert yaml.load("a: !!python/tuple [1, 2]", Loader=MSSTLoader) == {"a": (1, 2)}
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned > pwned']\n")
    with pytest.raises(ArchiveError, match="not a readable YAML"):
        read_msst_yaml(evil)
    assert not Path("pwned").exists()


def test_detects_the_architecture_from_the_keys():
    for model_type, path in PUBLISHED.items():
        assert detect_model_type(read_msst_yaml(path)) == model_type


def test_yaml_of_another_architecture(tmp_path):
    config, ckpt, _ = _pair(tmp_path, "bs_roformer")
    # MSST's scnet_unofficial (config_vocals_scnet_unofficial.yaml keys)
    scnet = tmp_path / "scnet.yaml"
    scnet.write_text(
        "audio: {sample_rate: 44100}\nmodel: {dims: [4, 32, 64], n_fft: 4096, "
        "bandsplit_ratios: [0.2, 0.3, 0.5]}\n"
        "training: {instruments: [drums, bass, other, vocals], target_instrument: null}\n"
    )
    with pytest.raises(ArchiveError, match=r"scnet\.yaml: cannot tell the architecture"):
        import_msst(scnet, ckpt)
    out = tmp_path / "never.sepcli"
    with pytest.raises(ArchiveError, match=r"scnet\.yaml: unknown model settings"):
        import_msst_archive(scnet, ckpt, out, model_type="bs_roformer")
    assert not out.exists()
    # an MDX23C YAML given for a RoFormer checkpoint
    with pytest.raises(
        ArchiveError,
        match=r"bs_roformer\.ckpt: does not fit its config: first_conv\.weight: the config "
        r"gives shape \(128, 16, 1, 1\), the checkpoint lacks it",
    ):
        import_msst(PUBLISHED["mdx23c"], ckpt)


def test_checkpoint_shapes_disagree_with_the_yaml(tmp_path):
    config, ckpt, _ = _pair(tmp_path, "bs_roformer")
    cfg = _tiny_yaml("bs_roformer")
    cfg["model"]["dim"] = 24
    wider = _write_yaml(tmp_path / "wider.yaml", cfg)
    with pytest.raises(
        ArchiveError,
        match=r"bs_roformer\.ckpt: does not fit its config: \S+: the checkpoint has shape \(16,\), "
        r"the config gives \(24,\) \(and \d+ more\); dim=16 in the weights, 24 in the config",
    ):
        import_msst(wider, ckpt)
    cfg = _tiny_yaml("bs_roformer")
    cfg["model"]["mask_estimator_depth"] = 3
    deeper = _write_yaml(tmp_path / "deeper.yaml", cfg)
    with pytest.raises(
        ArchiveError,
        match=r"does not fit its config: mask_estimators\.0\.\S+: the config gives shape \(16, 16\), the checkpoint lacks it",
    ):
        import_msst(deeper, ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["band_split.to_features.0.1.bias"] = torch.zeros(5)
    bad = tmp_path / "misshaped.ckpt"
    torch.save(state, bad)
    with pytest.raises(
        ArchiveError,
        match=r"misshaped\.ckpt: does not fit its config: band_split\.to_features\.0\.1\.bias: the checkpoint has shape \(5,\), the config gives \(16,\)$",
    ):
        import_msst(config, bad)
    state = torch.load(ckpt, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    extra = tmp_path / "extra.ckpt"
    torch.save(state, extra)
    with pytest.raises(
        ArchiveError,
        match=r"extra\.ckpt: does not fit its config: extra\.weight: the checkpoint has shape \(1,\), the config has no such weight",
    ):
        import_msst(config, extra)


def test_truncated_and_foreign_files(tmp_path):
    config, ckpt, _ = _pair(tmp_path, "mel_band_roformer")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    out = tmp_path / "never.sepcli"
    with pytest.raises(ArchiveError, match=r"cut\.ckpt: not a PyTorch checkpoint"):
        import_msst_archive(config, cut, out)
    assert not out.exists()
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"net": Path("somewhere")}, pickled)
    with pytest.raises(ArchiveError, match=r"pickled\.ckpt: refused: .*pathlib\.PosixPath"):
        import_msst(config, pickled)
    half_yaml = tmp_path / "half.yaml"
    half_yaml.write_text(config.read_text()[:40] + "\n  - [unclosed")
    with pytest.raises(ArchiveError, match=r"half\.yaml"):
        import_msst(half_yaml, ckpt)
    with pytest.raises(UsageError, match="no such checkpoint"):
        import_msst(config, tmp_path / "absent.ckpt")


def test_unknown_model_type_and_unsupported_settings(tmp_path):
    config, ckpt, _ = _pair(tmp_path, "bs_roformer")
    with pytest.raises(UsageError, match="unknown model type 'htdemucs'"):
        import_msst(config, ckpt, model_type="htdemucs")
    for key, value, match in [
        ("mask_estimator", {"kind": "mystery"}, "mask_estimator .* is not one of the heads"),
        ("mask_estimator", {"kind": "hyperace_residual_v2", "x": 1}, r"settings \['x'\]"),
        ("stft_normalized", True, "stft_normalized: true is not supported"),
        ("num_stems", 2, "num_stems=2 but training names 1"),
        ("dim_freqs_in", 1000, "dim_freqs_in=1000"),
        ("rope_theta", 5, "unknown model settings"),
    ]:
        cfg = _tiny_yaml("bs_roformer")
        cfg["model"][key] = value
        with pytest.raises(ArchiveError, match=match):
            import_msst(_write_yaml(tmp_path / "c.yaml", cfg), ckpt)


def test_mel_mask_width_comes_from_the_weights(tmp_path):
    # audio-separator builds Mel-Band RoFormer mask MLPs 4 x dim wide whatever
    # the YAML says; a YAML stating another factor still imports its weights
    config, ckpt, ref = _pair(tmp_path, "mel_band_roformer")
    cfg = _tiny_yaml("mel_band_roformer")
    cfg["model"]["mlp_expansion_factor"] = 1
    model, _ = import_msst(_write_yaml(tmp_path / "f1.yaml", cfg), ckpt)
    assert model.config.mlp_expansion_factor == 4
    mix = _mix(4410)
    with torch.no_grad():
        assert snr_db(ref(mix), model(mix)[:, 0]) >= 60


def test_rotary_frequencies_may_be_left_out_and_stem_names_are_kept(tmp_path):
    # the rotary frequencies are fixed, so a checkpoint without them still loads;
    # a published stem name with a space becomes a safe name, the original kept
    config, ckpt, ref = _pair(tmp_path, "bs_roformer")
    state = {k: v for k, v in torch.load(ckpt).items() if not k.endswith("rotary_embed.freqs")}
    torch.save(state, ckpt)
    cfg = _tiny_yaml("bs_roformer")
    cfg["training"] = {"instruments": ["No Reverb"], "target_instrument": "No Reverb"}
    model, meta = import_msst(_write_yaml(tmp_path / "n.yaml", cfg), ckpt)
    assert model.config.sources == ("no_reverb",)
    assert meta.extra["stem_names"] == {"no_reverb": "No Reverb"}
    mix = _mix(4410)
    with torch.no_grad():
        assert snr_db(ref(mix), model(mix)[:, 0]) >= 60
