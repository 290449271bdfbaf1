"""Open-Unmix import, checked against the real ``openunmix`` package.

``openunmix`` (PyPI, test-only, installed with ``--no-deps``) imports torchaudio
at import time but its model code never uses it; torchaudio wheels do not load
with CPU torch, so an empty stand-in module is registered first.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_data_archive
from snr import snr_db

from sepcli.dsp.phase import reconstruct
from sepcli.dsp.stft import stft
from sepcli.errors import ArchiveError, UsageError
from sepcli.models import build_model, load_verified, reference_config
from sepcli.models.archive import count_parameters
from sepcli.models.importers.openunmix import convert, import_openunmix, import_openunmix_archive

sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
openunmix_model = pytest.importorskip("openunmix.model", reason="openunmix is not installed")
openunmix_utils = pytest.importorskip("openunmix.utils", reason="openunmix is not installed")

torch.set_num_threads(2)


def _random_umx(
    nb_bins: int, channels: int, hidden: int, max_bin: int, layers: int = 3, seed: int = 0
):
    """An ``openunmix.model.OpenUnmix`` with random weights and BN statistics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = openunmix_model.OpenUnmix(
        nb_bins=nb_bins,
        nb_channels=channels,
        hidden_size=hidden,
        nb_layers=layers,
        max_bin=max_bin,
        input_mean=rng.standard_normal(nb_bins).astype(np.float32) * 0.1,
        input_scale=rng.uniform(0.5, 2.0, nb_bins).astype(np.float32),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _ours(model, mix: torch.Tensor, n_fft: int, hop: int, niter: int) -> torch.Tensor:
    """What the separator does with a magnitude archive: Wiener (niter) on its output."""
    mags = model(mix)
    spec = stft(mix, n_fft, hop)
    return reconstruct("wiener", mags, spec, n_fft, hop, mix.shape[-1], wiener_iters=niter)


TINY = {"n_fft": 512, "hop": 128, "rate": 44100, "hidden": 16}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> tuple[Path, dict]:
    """An Open-Unmix model folder as its train.py writes it, with random weights."""
    folder = tmp_path_factory.mktemp("umx-folder")
    n_fft, hop, rate, hidden = TINY["n_fft"], TINY["hop"], TINY["rate"], TINY["hidden"]
    max_bin = int(openunmix_utils.bandwidth_to_max_bin(rate, n_fft, 16000))
    models = {}
    for i, target in enumerate(["bass", "vocals", "drums"]):
        model = _random_umx(n_fft // 2 + 1, 2, hidden, max_bin, seed=i)
        models[target] = model
        torch.save(model.state_dict(), folder / f"{target}.pth")
        args = {
            "nfft": n_fft,
            "nhop": hop,
            "hidden_size": hidden,
            "nb_channels": 2,
            "bandwidth": 16000,
        }
        (folder / f"{target}.json").write_text(json.dumps({"args": args, "best_loss": 1.0}))
    sep = {"nfft": n_fft, "nhop": hop, "sample_rate": rate, "nb_channels": 2}
    (folder / "separator.json").write_text(json.dumps(sep))
    return folder, models


@pytest.mark.parametrize("niter", [0, 1])
def test_folder_import_equals_openunmix_separator(tiny_folder, niter):
    folder, models = tiny_folder
    ours, meta = import_openunmix([str(folder)])
    assert meta.sources == ("vocals", "drums", "bass")  # Open-Unmix's stem order
    assert (meta.family, meta.output, meta.phase) == ("umx", "magnitude", "wiener")
    separator = openunmix_model.Separator(
        {t: models[t] for t in meta.sources}, niter=niter, n_fft=512, n_hop=128, sample_rate=44100.0
    ).eval()  # its defaults: softmask=False, residual=False, wiener_win_len=300
    # with Wiener: 352 frames, more than one of Open-Unmix's 300-frame Wiener windows
    length = 45000 if niter else 6000
    mix = 0.3 * torch.randn(2, 2, length, generator=torch.Generator().manual_seed(niter))
    with torch.no_grad():
        reference = separator(mix)
        estimate = _ours(ours, mix, 512, 128, niter)
    assert estimate.shape == reference.shape
    assert snr_db(reference, estimate) >= 60.0


def test_folder_import_archive_round_trip(tiny_folder, tmp_path):
    folder, models = tiny_folder
    path = import_openunmix_archive([str(folder)], tmp_path / "umx.sepcli", name="my-umx")
    assert_data_archive(path)
    archive = load_verified(path)
    meta = archive.metadata
    assert meta.name == "my-umx" and meta.config["hidden_size"] == 16
    assert meta.extra["files"]["vocals"]["file"] == "vocals.pth"
    assert len(meta.extra["files"]["vocals"]["sha256"]) == 64
    mix = 0.3 * torch.randn(1, 2, 8000)
    separator = openunmix_model.Separator(
        {t: models[t] for t in meta.sources}, niter=0, n_fft=512, n_hop=128
    ).eval()
    with torch.no_grad():
        reference = separator(mix)
        estimate = reconstruct("mixture", archive.module(mix), stft(mix, 512, 128), 512, 128, 8000)
    assert snr_db(reference, estimate) >= 60.0


@pytest.fixture(scope="module")
def umxse_files(tmp_path_factory) -> tuple[dict[str, Path], dict]:
    """Bare state dicts at the public umxse size (16 kHz mono, n_fft 1024, hidden 256)."""
    folder = tmp_path_factory.mktemp("umxse")
    max_bin = int(openunmix_utils.bandwidth_to_max_bin(16000.0, 1024, 16000))
    files, models = {}, {}
    for i, target in enumerate(["speech", "noise"]):
        models[target] = _random_umx(513, 1, 256, max_bin, seed=10 + i)
        files[target] = folder / f"{target}-0123abcd.pth"
        torch.save(models[target].state_dict(), files[target])
    return files, models


@pytest.mark.parametrize("niter", [0, 1])
def test_bare_files_with_preset_equal_openunmix_separator(umxse_files, niter):
    files, models = umxse_files
    ours, meta = import_openunmix(
        [f"speech={files['speech']}", f"noise={files['noise']}"], preset="umxse"
    )
    assert meta.sources == ("speech", "noise") and meta.sample_rate == 16000
    assert meta.audio_channels == 1 and meta.stft.n_fft == 1024 and meta.stft.hop_length == 512
    separator = openunmix_model.Separator(
        models, niter=niter, n_fft=1024, n_hop=512, nb_channels=1, sample_rate=16000.0
    ).eval()
    mix = 0.3 * torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = separator(mix)
        estimate = _ours(ours, mix, 1024, 512, niter)
    assert snr_db(reference, estimate) >= 60.0


def test_convert_in_memory_state_dicts_with_registry_style_preset(umxse_files):
    files, models = umxse_files
    preset = {
        "sample_rate": 16000, "audio_channels": 1, "n_fft": 1024, "hop_length": 512, "nb_bins": 513,
        "max_bin": 513, "bandwidth": 16000, "hidden_size": 256, "nb_layers": 3, "unidirectional": False,
    }  # fmt: skip
    ours, meta = convert({t: m.state_dict() for t, m in models.items()}, preset, name="umxse")
    assert meta.sources == ("speech", "noise") and meta.name == "umxse"
    with pytest.raises(UsageError, match="conflicting hidden_size"):
        convert({"speech": models["speech"].state_dict()}, {**preset, "hidden_size": 512})


def test_preset_conflict_and_bad_inputs_are_clear_errors(umxse_files, tiny_folder, tmp_path):
    files, _ = umxse_files
    with pytest.raises(UsageError, match="conflicting"):
        import_openunmix([f"speech={files['speech']}"], preset="umxhq")
    with pytest.raises(UsageError, match="hop length is unknown"):
        import_openunmix([f"speech={files['speech']}"])
    with pytest.raises(UsageError, match="unknown Open-Unmix preset"):
        import_openunmix([f"speech={files['speech']}"], preset="umx9")
    with pytest.raises(UsageError, match="needs a target name"):
        import_openunmix([str(files["speech"])], preset="umxse")
    with pytest.raises(UsageError, match="no such weights file"):
        import_openunmix([f"speech={tmp_path / 'missing.pth'}"], preset="umxse")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ArchiveError, match="junk.pth: not a PyTorch state dict"):
        import_openunmix([f"speech={junk}"], preset="umxse")
    state = torch.load(files["speech"], weights_only=True)
    del state["fc2.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(ArchiveError, match=r"broken.pth: .*missing \['fc2.weight'\]"):
        import_openunmix([f"speech={broken}"], preset="umxse")
    state = torch.load(files["speech"], weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    state["stft.window"] = torch.zeros(1024)  # kept by Open-Unmix 1.0: tolerated
    extra = tmp_path / "extra.pth"
    torch.save(state, extra)
    with pytest.raises(ArchiveError, match=r"unexpected \['extra.weight'\]"):
        import_openunmix([f"speech={extra}"], preset="umxse")
    folder, _ = tiny_folder
    with pytest.raises(UsageError, match="target given twice"):
        import_openunmix([str(folder), f"vocals={folder / 'vocals.pth'}"])
    with pytest.raises(UsageError, match="layer sizes"):
        import_openunmix([str(folder), f"speech={files['speech']}"])
    with pytest.raises(UsageError, match="no Open-Unmix targets"):
        import_openunmix([str(tmp_path)])


def test_open_unmix_1_0_keys_are_ignored(umxse_files, tmp_path):
    files, models = umxse_files
    state = torch.load(files["noise"], weights_only=True)
    state.update({"stft.window": torch.ones(1024), "transform.0.window": torch.ones(1024)})
    state["sample_rate"] = torch.tensor(16000.0)
    old = tmp_path / "noise.pth"
    torch.save(state, old)
    ours, _ = import_openunmix([f"noise={old}"], preset="umxse")
    mag = torch.rand(1, 1, 513, 7)
    with torch.no_grad():
        expected = models["noise"](mag)
        torch.testing.assert_close(ours.forward_magnitude(mag)[:, 0], expected)


def test_cli_import(umxse_files, tmp_path):
    from sepcli.cli.models_import import import_command

    files, _ = umxse_files
    out = tmp_path / "se.sepcli"
    args = ["--format", "openunmix", "--preset", "umxse", f"speech={files['speech']}"]
    result = CliRunner().invoke(import_command, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert load_verified(out).metadata.sources == ("speech",)
    again = CliRunner().invoke(import_command, [*args, "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = CliRunner().invoke(
        import_command, [*args[:-1], f"speech={tmp_path / 'nope.pth'}", "-o", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "nope.pth: no such weights file" in bad.output
    assert not (tmp_path / "x").exists()


def test_reference_parameter_count_matches_open_unmix():
    max_bin = int(openunmix_utils.bandwidth_to_max_bin(44100.0, 4096, 16000))
    theirs = openunmix_model.OpenUnmix(
        nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=max_bin
    )
    ours = build_model("umx", reference_config("umx"))
    assert count_parameters(theirs) == count_parameters(ours) // 4 == 8_893_348


@pytest.mark.slow
def test_umxhq_size_bare_file_equals_openunmix(tmp_path):
    max_bin = int(openunmix_utils.bandwidth_to_max_bin(44100.0, 4096, 16000))
    theirs = _random_umx(2049, 2, 512, max_bin, seed=5)
    torch.save(theirs.state_dict(), tmp_path / "vocals-b62c91ce.pth")
    ours, meta = import_openunmix([f"vocals={tmp_path / 'vocals-b62c91ce.pth'}"], preset="umxhq")
    assert meta.num_parameters == 8_893_348
    separator = openunmix_model.Separator({"vocals": theirs}, niter=0).eval()
    mix = 0.3 * torch.randn(1, 2, 44100 * 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = separator(mix)
        estimate = _ours(ours, mix, 4096, 1024, 0)
    assert snr_db(reference, estimate) >= 60.0


@pytest.mark.slow
@pytest.mark.data
def test_separate_cli_on_a_real_song_equals_openunmix_separator(tmp_path, shared_data):
    """``sepcli separate`` of a whole real 7-s preview (shorter than one chunk, so it
    runs once at its own length) equals ``openunmix``'s ``Separator`` on the same
    decoded mixture (mixture phase): the pipeline adds no padding the BiLSTM sees."""
    from sepcli import audio
    from sepcli.cli import main

    song = sorted((shared_data / "musdb18-preview" / "train").glob("*.stem.mp4"))[0]
    max_bin = int(openunmix_utils.bandwidth_to_max_bin(44100.0, 4096, 16000))
    theirs = _random_umx(2049, 2, 512, max_bin, seed=7)
    torch.save(theirs.state_dict(), tmp_path / "vocals-b62c91ce.pth")
    archive = import_openunmix_archive(
        [f"vocals={tmp_path / 'vocals-b62c91ce.pth'}"], tmp_path / "umx.sepcli", preset="umxhq"
    )
    out = tmp_path / "out"
    args = ["separate", str(song), "-m", str(archive), "-o", str(out), "--stems", "vocals"]
    result = CliRunner().invoke(
        main, [*args, "--phase", "mixture", "--bit-depth", "32", "--clip", "none"]
    )
    assert result.exit_code == 0, result.output
    estimate, rate = audio.load_audio(next(out.rglob("vocals.wav")))
    mix, mix_rate = audio.load_audio(song)
    assert rate == mix_rate == 44100 and mix.shape[-1] < 10 * rate  # one chunk
    with torch.no_grad():
        reference = openunmix_model.Separator({"vocals": theirs}, niter=0).eval()(
            torch.from_numpy(mix)[None]
        )[0, 0]
    assert estimate.shape == tuple(reference.shape)
    snr = snr_db(reference, torch.from_numpy(estimate))
    print(f"pipeline SNR {snr:.1f} dB")
    assert snr >= 60.0
