"""On a real GPU: stems on the device equal stems on the CPU, half precision stays
within its bound, out-of-memory halving, training with AMP, ``evaluate --device``.

Marked ``cuda`` and skipped (with the reason) where there is no GPU; run them with
``python -m pytest -q -m cuda tests/test_cuda.py`` (``bench/gpu_check.sh`` does).
``SEPCLI_TEST_DEVICE=mps`` runs the same tests on Apple silicon, and
``SEPCLI_TEST_DEVICE=cpu`` runs their code on the CPU (CPU against CPU: only a
check that the tests themselves work). Measured SNRs are appended as JSON lines to
``$SEPCLI_GPU_REPORT`` when it is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import IdentityModel, _meta, make_tone, save_torchscript_archive, write_wav
from snr import snr_db

from sepcli.cli import main
from sepcli.inference.device import mps_available
from sepcli.inference.separator import Separator
from sepcli.models import (
    FAMILIES,
    EnsembleConfig,
    EnsembleMember,
    TFCTDFConfig,
    UMXConfig,
    WaveformConfig,
    build_model,
    export_archive,
    reference_config,
)
from sepcli.models.families import TRAINABLE_FAMILIES

DEVICE = os.environ.get("SEPCLI_TEST_DEVICE", "cuda")
DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1] / "sepcli" / "assets" / "default.sepcli"


def _available(name: str) -> bool:
    if name.startswith("cuda"):
        return torch.cuda.is_available()
    if name == "mps":
        return mps_available()
    return name == "cpu"


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not _available(DEVICE),
        reason=f"needs a {DEVICE} device; this machine has none (run on a GPU: bench/gpu_check.sh)",
    ),
]

#: fp32 on the device against fp32 on the CPU (issue 20).
FP32_MIN_SNR = 60.0
#: Half precision against fp32 on the CPU, per stem, in dB: the stated bound
#: (docs/usage.md). bf16 keeps 8 bits of mantissa, fp16 11. Measured with CPU
#: autocast on these models and song (SEPCLI_TEST_DEVICE=cpu): bf16 38-58 dB,
#: fp16 56-73 dB; the bounds leave 13 dB for the GPU's other kernels.
HALF_MIN_SNR = {"bf16": 25.0, "fp16": 40.0}

_UMX = UMXConfig(
    n_fft=256, hop_length=64, hidden_size=16, num_layers=1, sources=("vocals", "other")
)
_TFC = TFCTDFConfig(
    n_fft=256, hop_length=64, dim_f=64, num_levels=2, channels=4, growth=4, tfc_layers=2,
    segment_frames=32, sources=("vocals", "drums"),
)  # fmt: skip
_WAVE = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0, sources=("drums", "vocals"))
_BANDS = (2,) * 8 + (4,) * 4 + (8,) * 2 + (17,)  # 65 bins of a 128-point STFT


def _tiny_other_families() -> dict:
    """Tiny configs of the families added after umx/tfc-tdf/waveform (chunks of ~0.75 s:
    the mdxc recipe runs one chunk per call, so shorter ones only cost time)."""
    from sepcli.models.nets.bs_roformer import BSRoformerConfig
    from sepcli.models.nets.htdemucs import HTDemucsConfig
    from sepcli.models.nets.mdx23c import MDX23CConfig
    from sepcli.models.nets.mel_roformer import MelRoformerConfig
    from sepcli.models.nets.scnet import SCNetConfig

    two = ("vocals", "other")
    return {
        "htdemucs": HTDemucsConfig(
            sources=("vocals", "drums"), channels=8, dconv_comp=4, depth=2, n_fft=256,
            t_layers=2, t_heads=2, bottom_channels=0, segment_samples=22050,
        ),
        "bs-roformer": BSRoformerConfig(
            sources=two, dim=32, depth=2, freq_transformer_depth=2, freqs_per_bands=_BANDS,
            dim_head=16, heads=2, stft_n_fft=128, stft_hop_length=32, stft_win_length=128,
            dim_t=1024, num_overlap=2,
        ),
        "mel-roformer": MelRoformerConfig(
            sources=two, dim=32, depth=2, num_bands=12, dim_head=16, heads=2, stft_n_fft=256,
            stft_hop_length=64, stft_win_length=256, mask_estimator_depth=2, dim_t=512,
            num_overlap=2,
        ),
        "mdx23c": MDX23CConfig(
            sources=two, n_fft=256, hop_length=64, dim_f=128, dim_t=512, num_overlap=2,
            num_subbands=2, num_scales=2, num_blocks_per_scale=2, num_channels=8, growth=4,
            bottleneck_factor=2, norm="InstanceNorm", act="gelu",
        ),
        "scnet": SCNetConfig(
            sources=two, dims=(4, 8, 8, 16), nfft=256, hop_size=64, win_size=256,
            num_dplayer=2, chunk_size=33075, num_overlap=2, batch_size=1,
        ),
    }  # fmt: skip


def _tiny_config(name: str):
    """A tiny random config of family ``name``; one not known here runs at its reference size."""
    if name in TINY:
        return TINY[name]
    try:
        others = _tiny_other_families()
    except ImportError:  # a family module this checkout does not have
        others = {}
    return others.get(name) or reference_config(name)


#: tiny random configs of the first families (see also :func:`_tiny_config`)
TINY = {
    "umx": _UMX,
    "tfc-tdf": _TFC,
    "waveform": _WAVE,
    "ensemble": EnsembleConfig(
        ("vocals", "drums"),
        (
            EnsembleMember("umx", _UMX.to_dict(), 1),
            EnsembleMember("tfc-tdf", _TFC.to_dict()),
            EnsembleMember("waveform", _WAVE.to_dict()),
        ),
        ((0.2, 0.5, 0.3), (0.0, 1.0, 1.0)),
    ),
}


def _report(**record) -> None:
    path = os.environ.get("SEPCLI_GPU_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"device": DEVICE, **record}) + "\n")


@pytest.fixture(scope="module")
def family_archives(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("families")
    paths = {}
    for name in FAMILIES:
        torch.manual_seed(0)
        cfg = _tiny_config(name)
        model = build_model(name, cfg).eval()
        paths[name] = export_archive(model, folder / f"{name}.sepcli", name=f"tiny-{name}")
    return paths


@pytest.fixture(scope="module")
def cpu_stems(family_archives) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 CPU stems of each archive (and the default model) for a 4-s song."""
    mix = make_tone(4.0, seed=3)
    out = {
        name: Separator(p, device="cpu").separate(mix, 44100) for name, p in family_archives.items()
    }
    out["default"] = Separator(DEFAULT_ARCHIVE, device="cpu").separate(mix, 44100)
    return out


def _archive(name: str, family_archives: dict[str, Path]) -> Path:
    return DEFAULT_ARCHIVE if name == "default" else family_archives[name]


@pytest.mark.parametrize("name", [*FAMILIES, "default"])
def test_fp32_on_the_device_equals_the_cpu(name, family_archives, cpu_stems):
    mix = make_tone(4.0, seed=3)
    sep = Separator(_archive(name, family_archives), device=DEVICE, batch_size=4)
    assert sep.devices.model.type == torch.device(DEVICE).type or DEVICE == "mps"
    got = sep.separate(mix, 44100)
    for stem, ref in cpu_stems[name].items():
        snr = snr_db(ref, got[stem], stem, floor=1e-30)
        _report(test="fp32", model=name, stem=stem, snr_db=snr)
        assert snr >= FP32_MIN_SNR, f"{name}/{stem}: {snr:.1f} dB"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", [*FAMILIES, "default"])
def test_half_precision_within_its_bound(name, precision, family_archives, cpu_stems):
    mix = make_tone(4.0, seed=3)
    sep = Separator(_archive(name, family_archives), device=DEVICE, precision=precision)
    got = sep.separate(mix, 44100)
    for stem, ref in cpu_stems[name].items():
        assert got[stem].dtype == torch.float32 and torch.isfinite(got[stem]).all()
        snr = snr_db(ref, got[stem], stem, floor=1e-30)
        _report(test=precision, model=name, stem=stem, snr_db=snr)
        assert snr >= HALF_MIN_SNR[precision], f"{name}/{stem} {precision}: {snr:.1f} dB"


class _Greedy(torch.nn.Module):
    """Identity that allocates ``per_chunk`` float32 values of device memory per chunk."""

    def __init__(self, per_chunk: int) -> None:
        super().__init__()
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1
        self.per_chunk = per_chunk
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        buf = torch.empty([mix.shape[0] * self.per_chunk], device=mix.device)
        return mix.unsqueeze(1) + self.dummy * 0 + buf[:1].zero_()


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="a CUDA allocator's out-of-memory error")
def test_real_out_of_memory_halves_the_batch(tmp_path):
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    per_chunk = int(0.4 * free) // 4  # 2 chunks fit, 3 do not
    path = save_torchscript_archive(
        _Greedy(per_chunk), _meta("greedy", ["vocals"], 44100, 2, "waveform", "test",
                                  segment_seconds=0.1), tmp_path / "greedy.sepcli"
    )  # fmt: skip
    mix = make_tone(3.0)
    sep = Separator(path, device=DEVICE, batch_size=16, overlap=0.0, context_seconds=0.0)
    got = sep.separate(mix, 44100)
    assert sep.batch_limits[0].size == 2
    np.testing.assert_allclose(got["vocals"].numpy(), mix, atol=1e-6)
    # a second file starts at the size that worked
    sep.separate(mix, 44100)
    assert sep.batch_limits[0].halvings == 3
    torch.cuda.empty_cache()


def test_cli_separate_on_the_device_with_threads(tmp_path, family_archives):
    src = write_wav(tmp_path / "song.wav", make_tone(25.0, seed=5))  # 3 decode blocks
    outs = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / device.replace(":", "")
        result = CliRunner().invoke(
            main,
            ["separate", str(src), "-m", str(family_archives["waveform"]), "-o", str(out),
             "--device", device, "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outs[device] = {p.name: sf.read(str(p))[0] for p in sorted(out.rglob("*.wav"))}
    assert outs["cpu"].keys() == outs[DEVICE].keys() and outs["cpu"]
    for name, ref in outs["cpu"].items():
        # 16-bit files: equal up to a quantisation step
        assert np.abs(ref - outs[DEVICE][name]).max() <= 2.0 / 32768, name


@pytest.mark.parametrize("family", [f for f in TRAINABLE_FAMILIES if f in TINY])
def test_training_step_with_amp(family, tmp_path):
    from sepcli.training import TrainConfig, train

    root = tmp_path / "stems"
    for i, name in enumerate(("a_1", "a_2", "b_1")):
        write_wav(root / name / "vocals.wav", make_tone(1.5, seed=i) * 0.6)
        write_wav(root / name / "accompaniment.wav", make_tone(1.5, seed=10 + i) * 0.4)
    small = {k: v for k, v in TINY[family].to_dict().items()
             if k not in ("sources", "sample_rate", "audio_channels")}  # fmt: skip
    cfg = TrainConfig(
        data=(str(root),), model=family, model_config=small, out=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"), segment=1.0, samples_per_track=4, steps_per_epoch=2,
        batch_size=2, epochs=1, valid="b_1", device=DEVICE, amp=True, seed=1,
    )  # fmt: skip
    losses: list[float] = []

    def collect(event):
        if event.task == "train" and event.done:
            losses.append(event.info["loss"])

    result = train(cfg, progress=collect)
    assert len(losses) == 2 and all(np.isfinite(losses))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    if DEVICE.startswith("cuda"):
        assert state["scaler"], "AMP's gradient scaler was off"  # enabled only with AMP on CUDA
    _report(test="train-amp", model=family, losses=losses)
    assert result.archive is not None and Path(result.archive).is_file()


def test_evaluate_on_the_device(tmp_path):
    rate, sources = 8000, ("drums", "bass", "other", "vocals")
    root = tmp_path / "data"
    for t, name in enumerate(("t1", "t2")):
        for i, s in enumerate(sources):
            write_wav(
                root / "test" / name / f"{s}.wav", make_tone(2.0, rate, seed=10 * t + i), rate
            )
    torch.manual_seed(0)
    cfg = UMXConfig(n_fft=256, hop_length=64, hidden_size=16, num_layers=1, sources=sources,
                    sample_rate=rate)  # fmt: skip
    model_path = export_archive(build_model("umx", cfg).eval(), tmp_path / "m.sepcli", name="m")
    summaries = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / f"eval-{device.replace(':', '')}"
        result = CliRunner().invoke(
            main,
            ["evaluate", "--data", str(root), "--model", str(model_path), "--out", str(out),
             "--filters-len", "32", "--device", device, "--json", "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summaries[device] = json.loads(result.stdout)
    for stem, cells in summaries["cpu"]["aggregate"].items():
        for metric, cell in cells.items():
            if isinstance(cell, dict) and cell.get("median") is not None:
                other = summaries[DEVICE]["aggregate"][stem][metric]["median"]
                assert other == pytest.approx(cell["median"], abs=0.05), (stem, metric)


def test_identity_archive_through_pinned_copies(tmp_path):
    path = save_torchscript_archive(
        IdentityModel(), _meta("identity", ["vocals"], 44100, 2, "waveform", "test"),
        tmp_path / "identity.sepcli",
    )  # fmt: skip
    mix = make_tone(7.3)
    got = Separator(path, device=DEVICE, segment_seconds=0.5).separate(mix, 44100)
    np.testing.assert_allclose(got["vocals"].numpy(), mix, atol=1e-6)
