"""The MDXC chunking recipe against audio-separator 0.47.1's ``MDXCSeparator.demix``.

Reference (test-only): audio-separator 0.47.1 installed ``--no-deps`` plus what
``architectures/mdxc_separator.py`` imports (tests/audio_separator_reference.py)::

    pip install --no-deps audio-separator==0.47.1 pydub==0.25.1 six
    pip install "einops>=0.7" "rotary-embedding-torch>=0.6.1,<0.7.0" \
        "beartype>=0.18.5,<0.19.0" "librosa>=0.10" ml_collections

``MDXCSeparator.__init__`` loads model files and picks devices, so the tests make
the object with ``MDXCSeparator.__new__`` and set only the attributes ``demix``
reads (logger, pitch_shift=0, is_roformer, segment settings, overlap,
batch_size, torch_device=cpu, model_data_cfgdict, model_run, and
is_primary_stem_main_target=False so it returns the model's stems unchanged).
Its own ``demix`` then runs unmodified. Both sides run the same tiny sepcli model,
so only the chunking is compared.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from audio_separator_reference import reference_module
from snr import snr_db

from sepcli.inference.mdxc_recipe import (
    MdxcPlan,
    MdxcRecipe,
    demix,
    hamming_window,
    roformer_chunk_starts,
)
from sepcli.models import build_model
from sepcli.models.nets.bs_roformer import BSRoformerConfig
from sepcli.models.nets.mdx23c import MDX23CConfig

N_FFT = 128
BANDS = (2,) * 8 + (4,) * 4 + (8,) * 2 + (N_FFT // 2 + 1 - 48,)


def _roformer(sources: tuple[str, ...], channels: int = 2, overlap: int = 2):
    cfg = BSRoformerConfig(
        sources=sources, audio_channels=channels, dim=16, depth=1, freqs_per_bands=BANDS,
        dim_head=8, heads=2, stft_n_fft=N_FFT, stft_hop_length=32, stft_win_length=N_FFT,
        dim_t=17, num_overlap=overlap,
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model("bs-roformer", cfg).eval(), cfg


def _mdx23c(sources: tuple[str, ...], overlap: int = 2):
    cfg = MDX23CConfig(
        sources=sources, n_fft=256, hop_length=64, dim_f=128, dim_t=16, num_overlap=overlap,
        num_subbands=2, num_scales=2, num_blocks_per_scale=1, num_channels=8, growth=4,
        bottleneck_factor=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model("mdx23c", cfg).eval(), cfg


class _AsReference(torch.nn.Module):
    """Our model with the reference model's calling convention (one stem: no stem axis)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_target_instruments = int(model.num_sources)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[:, 0] if out.shape[1] == 1 else out


def _reference_demix(model, cfg, mode: str, target: str | None, mix: torch.Tensor) -> torch.Tensor:
    """audio-separator's own ``MDXCSeparator.demix`` on ``mix (C, L)`` -> ``(S, C, L)``."""
    ml_collections = pytest.importorskip("ml_collections")
    module = reference_module("architectures.mdxc_separator")
    sep = module.MDXCSeparator.__new__(module.MDXCSeparator)  # no file loading
    sep.logger = logging.getLogger("audio-separator-reference")
    sep.pitch_shift = 0
    sep.is_roformer = mode == "roformer"
    sep.override_model_segment_size = False
    sep.segment_size = 256
    sep.overlap = cfg.num_overlap
    sep.batch_size = 1
    sep.torch_device = torch.device("cpu")
    sep.torch_device_cpu = torch.device("cpu")
    sep.is_primary_stem_main_target = False
    hop = cfg.stft_hop_length if mode == "roformer" else cfg.hop_length
    instruments = list(cfg.sources) if target is None else [target, "other"]
    sep.model_data_cfgdict = ml_collections.ConfigDict(
        {
            "training": {"instruments": instruments, "target_instrument": target},
            "inference": {"dim_t": cfg.dim_t, "num_overlap": cfg.num_overlap},
            "model": {"stft_hop_length": hop} if mode == "roformer" else {},
            "audio": {"hop_length": hop},
        }
    )
    sep.model_run = _AsReference(model)
    out = sep.demix(mix.numpy(), override_model_segment_size=False)
    if isinstance(out, dict):
        return torch.stack([torch.as_tensor(np.asarray(out[s])) for s in cfg.sources])
    return torch.as_tensor(np.asarray(out))[None]


def _mix(channels: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(channels, length, generator=g)


def _ours(model, cfg, mode: str, mix: torch.Tensor) -> torch.Tensor:
    plan = MdxcPlan(mode, cfg.chunk_samples, cfg.num_overlap)
    with torch.no_grad():
        return demix(model, mix, plan, cfg.num_sources)


# chunk 512 samples (hop 32, dim_t 17); lengths around one and several chunks
ROFORMER_LENGTHS = (100, 511, 513, 3333)


@pytest.mark.parametrize("length", ROFORMER_LENGTHS)
@pytest.mark.parametrize(
    ("sources", "target", "channels"),
    [
        (("vocals",), "vocals", 2),
        (("vocals", "drums", "bass"), None, 2),
        (("vocals",), "vocals", 1),
    ],
    ids=["target", "3-stems", "mono"],
)
def test_roformer_branch_equals_reference(length, sources, target, channels):
    model, cfg = _roformer(sources, channels)
    mix = _mix(channels, length, seed=length)
    with torch.no_grad():
        expected = _reference_demix(model, cfg, "roformer", target, mix)
    got = _ours(model, cfg, "roformer", mix)
    assert got.shape == expected.shape == (len(sources), channels, length)
    assert snr_db(expected, got) >= 60


@pytest.mark.parametrize("length", (100, 961, 5001))
@pytest.mark.parametrize(
    ("sources", "target", "overlap"),
    [(("vocals", "instrumental"), None, 2), (("vocals",), "vocals", 4), (("a", "b", "c"), None, 3)],
    ids=["2-stems", "target-overlap4", "3-stems-overlap3"],
)
def test_tfc_tdf_branch_equals_reference(length, sources, target, overlap):
    model, cfg = _mdx23c(sources, overlap)
    mix = _mix(2, length, seed=length)
    with torch.no_grad():
        expected = _reference_demix(model, cfg, "tfc-tdf", target, mix)
    got = _ours(model, cfg, "tfc-tdf", mix)
    assert got.shape == expected.shape == (len(sources), 2, length)
    assert snr_db(expected, got) >= 60


@pytest.mark.parametrize("mode", ["roformer", "tfc-tdf"])
@pytest.mark.parametrize("block", [97, 10_000])
def test_stream_equals_whole_track_and_stays_bounded(mode, block):
    model, cfg = _roformer(("vocals", "other")) if mode == "roformer" else _mdx23c(("a", "b"))
    plan = MdxcPlan(mode, cfg.chunk_samples, cfg.num_overlap)
    mix = _mix(2, 4321, seed=3)
    with torch.no_grad():
        whole = demix(model, mix, plan, 2)
        stream = MdxcRecipe(plan).engine(model, 2, 2)
        parts = []
        for start in range(0, mix.shape[-1], block):
            parts.append(stream.push(mix[:, start : start + block]))
            assert stream.window.held <= 2 * plan.chunk + block
            assert stream.accumulators[0].held <= 2 * plan.chunk
        parts.append(stream.finish())
    assert torch.equal(torch.cat(parts, dim=-1), whole)


@pytest.mark.parametrize("mode", ["roformer", "tfc-tdf"])
@pytest.mark.parametrize("length", [1, 77, 511, 512, 3000])
def test_identity_model_returns_the_input(mode, length):
    plan = MdxcPlan(mode, 512, 4)
    mix = _mix(2, length, seed=length)
    got = demix(lambda x: x.unsqueeze(1), mix, plan, 1)
    assert torch.allclose(got[0], mix, atol=1e-6)


def test_window_and_schedule_match_the_reference():
    scipy_signal = pytest.importorskip("scipy.signal")
    for n in (2, 5, 512, 352800):
        ref = torch.tensor(scipy_signal.windows.hamming(n), dtype=torch.float32)
        assert torch.allclose(hamming_window(n), ref, atol=1e-7, rtol=0)
    module = reference_module("architectures.mdxc_separator")
    schedule = module.MDXCSeparator._roformer_chunk_starts
    for length, chunk, step in [
        (0, 5, 2),
        (3, 5, 2),
        (10, 5, 2),
        (11, 5, 5),
        (352800 * 3 + 7, 352800, 88200),
    ]:
        assert roformer_chunk_starts(length, chunk, step) == schedule(length, chunk, step)


def test_plan_validation():
    with pytest.raises(ValueError, match="mode"):
        MdxcPlan("demucs", 10, 2)
    with pytest.raises(ValueError, match="num_overlap"):
        MdxcPlan("roformer", 10, 0)
    model, cfg = _roformer(("vocals",))
    assert MdxcPlan.for_family("bs-roformer", cfg) == MdxcPlan("roformer", 512, 2)


def test_recipe_takes_overlap_and_refuses_shifts_and_context_as_every_reference_recipe():
    from sepcli.errors import UsageError
    from sepcli.inference.config import SeparatorConfig
    from sepcli.inference.recipes import make_recipe
    from sepcli.models.archive import ArchiveMetadata

    meta = ArchiveMetadata(
        "mdx-x", ("vocals", "other"), 44100, 2, "waveform", "mdx23c", recipe="mdxc",
        config={"hop_length": 1024, "dim_t": 9, "num_overlap": 4},
    )  # fmt: skip
    assert make_recipe(meta, SeparatorConfig()) == MdxcRecipe(MdxcPlan("tfc-tdf", 8192, 4))
    assert make_recipe(meta, SeparatorConfig(overlap=0.5)).plan.num_overlap == 2
    # the one wording of sepcli.inference.recipes.reference_num_overlap (msst says the same)
    with pytest.raises(UsageError, match=r"^--shifts is not part of the mdxc chunking recipe; "):
        make_recipe(meta, SeparatorConfig(shifts=1))
    with pytest.raises(UsageError, match=r"^--context is not part of the mdxc chunking recipe$"):
        make_recipe(meta, SeparatorConfig(context_seconds=0.1))
