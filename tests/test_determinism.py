"""The same input gives the same bits: twice in one process, and after other models ran.

A real-song parity run once gave 68.8 dB where its reruns gave 137.0
(docs/benchmarks.md). A pipeline whose output depends on what ran before it
(memory read before it is written, a buffer handed to another thread and then
changed or reused, a cache keyed wrongly) gives different bits for the same
input. Between the two runs here other models run and freed memory is filled
with NaN (the heap then hands NaN-filled blocks to the next allocations), so
such a read shows up as different bits, not as a lucky equal value. The
RoFormers run with small row blocks (several blocks per layer, the boundaries
of the in-place writes included); the separator's file path runs with its
decode-ahead / write-behind threads on and off, in blocks of a quarter second,
so chunk and block boundaries fall everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sepcli.inference.separator as separator_module
import sepcli.models.nets.blocks as blocks
from sepcli.inference.separator import Separator
from sepcli.models import build_model, export_archive
from sepcli.models.nets.bs_roformer import BSRoformerConfig
from sepcli.models.nets.htdemucs import HTDemucsConfig
from sepcli.models.nets.mdx23c import MDX23CConfig
from sepcli.models.nets.mel_roformer import MelRoformerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_BANDS = (2,) * 8 + (4,) * 4 + (8,) * 2 + (65 - 48,)
CONFIGS = {
    "bs-roformer": BSRoformerConfig(
        sources=("vocals", "other"), dim=16, depth=1, freqs_per_bands=_BANDS, dim_head=8,
        heads=2, stft_n_fft=128, stft_hop_length=32, stft_win_length=128, dim_t=41,
        num_overlap=2,
    ),
    "mel-roformer": MelRoformerConfig(
        sources=("vocals",), dim=16, depth=1, num_bands=8, dim_head=8, heads=2,
        stft_n_fft=256, stft_hop_length=64, stft_win_length=256, dim_t=21, num_overlap=2,
    ),
    "htdemucs": HTDemucsConfig(
        channels=4, depth=2, n_fft=256, t_layers=1, t_heads=2, segment_samples=11025,
        dconv_comp=4,
    ),
    "mdx23c": MDX23CConfig(
        sources=("vocals", "instrumental"), n_fft=256, hop_length=64, dim_f=128, dim_t=16,
        num_overlap=2, num_subbands=2, num_scales=2, num_blocks_per_scale=1,
        num_channels=4, growth=2, bottleneck_factor=2,
    ),
}  # fmt: skip

#: Row blocks of about 16 kB: several blocks per RoFormer layer at these sizes.
SMALL_BLOCKS = 16 << 10


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model(family, CONFIGS[family]).eval()


def _length(family: str) -> int:
    """Samples of one model call: a whole chunk (HT-Demucs: its training segment)."""
    cfg = CONFIGS[family]
    return cfg.segment_samples if family == "htdemucs" else cfg.chunk_samples


def _mix(length: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(1, 2, length, generator=torch.Generator().manual_seed(seed))


def _poison_heap() -> None:
    """Allocate and free NaN-filled blocks of many sizes: memory that is read before it
    is written afterwards holds NaN (or another model's activations), not zeros."""
    for size in (1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22):
        junk = [torch.full((size,), float("nan")) for _ in range(3)]
        del junk


def _others_run(skip: str) -> None:
    """Every other family runs once (its activations go back to the heap), then NaN."""
    with torch.no_grad():
        for family in CONFIGS:
            if family != skip:
                _model(family)(_mix(_length(family), 9))
    _poison_heap()


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "scripted"])
def test_the_same_input_twice_gives_the_same_bits(family, scripted, monkeypatch):
    # RoFormers: small blocks of sequences, so the blocked inference path writes its
    # results into preallocated buffers block by block (TorchScript keeps the default)
    monkeypatch.setattr(blocks.row_blocks, "__defaults__", (SMALL_BLOCKS,))
    model = _model(family)
    if scripted:
        model = torch.jit.script(model)
    mix = _mix(_length(family), 1)
    with torch.no_grad():
        first = model(mix)
        _others_run(family)
        second = model(mix)
        _poison_heap()
        third = model(mix.clone())
    assert torch.isfinite(first).all()
    assert torch.equal(first, second) and torch.equal(first, third)


def test_roformer_blocks_are_several_at_these_sizes():
    # the test above proves nothing about block boundaries if each layer is one block
    cfg = CONFIGS["bs-roformer"]
    inner, bands, frames = cfg.heads * cfg.dim_head, len(cfg.freqs_per_bands), cfg.dim_t
    assert len(blocks.row_blocks(bands, frames * 3 * inner, SMALL_BLOCKS)) >= 3  # time axis
    assert len(blocks.row_blocks(frames, bands * 3 * inner, SMALL_BLOCKS)) >= 3  # band axis


@pytest.mark.parametrize("family", list(CONFIGS))
def test_separator_file_path_gives_the_same_bits_with_and_without_threads(
    family, tmp_path: Path, monkeypatch
):
    # the separator's own recipe for the family (mdxc for RoFormers and MDX23C, the
    # demucs recipe for HT-Demucs), blocks of a quarter second through the reader,
    # decode-ahead and write-behind threads on (as on a GPU) and off
    monkeypatch.setattr(separator_module, "BLOCK_SECONDS", 0.25)
    archive = export_archive(_model(family), tmp_path / f"{family}.sepcli", name=family)
    g = np.random.default_rng(5)
    song = tmp_path / "song.wav"
    sf.write(song, 0.2 * g.standard_normal((int(1.5 * 44100) + 77, 2)), 44100, subtype="FLOAT")
    sep = Separator(archive, device="cpu")
    outputs: list[dict[str, np.ndarray]] = []
    for run, threads in enumerate((False, True, False)):
        sep.threads = threads
        paths = {s: tmp_path / f"run{run}" / f"{s}.wav" for s in sep.sources}
        sep.separate_file(song, paths, bit_depth=32, clip="none")
        # the samples (the bytes: tests/test_audio.py, tests/test_cli_separate.py)
        outputs.append({s: sf.read(p, dtype="float32")[0] for s, p in paths.items()})
        _others_run(family)
    first = outputs[0]
    assert all(np.isfinite(y).all() and np.abs(y).max() > 0 for y in first.values())
    for later in outputs[1:]:
        assert all(np.array_equal(later[s], first[s]) for s in first)
