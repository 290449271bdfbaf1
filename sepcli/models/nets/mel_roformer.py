"""Mel-Band RoFormer (Wang, Lu, Kong, Hung, 2023, arXiv:2310.01809).

BS-RoFormer with overlapping bands: band ``i`` covers the STFT bins where the
``i``-th of ``num_bands`` Slaney mel filters (librosa's ``filters.mel``) is
non-zero. Each bin's complex mask is the average of the masks of the bands that
cover it. Every transformer ends with an RMSNorm and there is no final norm.
Archive output ``"waveform"``.

Arithmetic and state-dict keys follow ``audio-separator`` 0.47.1's
``uvr_lib_v5/roformer/mel_band_roformer.py`` (what UVR and audio-separator run
Kim's and viperx's Mel-Band RoFormer checkpoints with); see
:mod:`sepcli.models.nets.roformer` and ``tests/test_models_roformer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from sepcli.models.nets.roformer import Roformer, RoformerConfig, mel_band_layout

__all__ = ["MelRoformerConfig", "MelRoformer", "reference_config"]


@dataclass(frozen=True)
class MelRoformerConfig(RoformerConfig):
    """Mel-Band RoFormer hyper-parameters (defaults: Kim's vocal model).

    Attributes (beyond :class:`~sepcli.models.nets.roformer.RoformerConfig`):
        num_bands: mel bands (overlapping groups of bins); computed for
            ``sample_rate`` and ``stft_n_fft``.
        mask_estimator_depth: hidden layers of each band's mask MLP (``dim *
            mlp_expansion_factor`` units, tanh), one more Linear than BS-RoFormer's.
    """

    family: ClassVar[str] = "mel-roformer"
    dim: int = 384
    depth: int = 6
    num_bands: int = 60
    dim_t: int = 1101
    num_overlap: int = 1
    norm_output: bool = True

    def __post_init__(self) -> None:
        p = self._check_roformer()
        if self.num_bands < 2:
            p.append("num_bands must be >= 2")
        elif self.mask_estimator_depth < 0:
            p.append("mask_estimator_depth must be >= 0")
        elif not p and not bool(self.band_layout().any(dim=0).all()):
            p.append(
                f"{self.num_bands} mel bands leave some of the {self.num_freqs} STFT bins "
                "uncovered (too many bands for this n_fft)"
            )
        self._raise(p)

    def band_layout(self) -> torch.Tensor:
        """bool ``(num_bands, stft_n_fft // 2 + 1)``: bins of each band."""
        return mel_band_layout(self.sample_rate, self.stft_n_fft, self.num_bands)


def reference_config() -> MelRoformerConfig:
    """Kim's vocal Mel-Band RoFormer (UVR ``config_vocals_mel_band_roformer_kim.yaml``)."""
    return MelRoformerConfig(sources=("vocals",), dim=384, depth=6, dim_t=1101, num_overlap=1)


class MelRoformer(Roformer):
    """Mel-Band RoFormer; ``forward(mix (B, C, T)) -> (B, S, C, T)`` waveforms.

    Bands overlap: each reads the rows of its mel band (``freq_indices``) and a
    bin's mask is the mean of the masks of the bands covering it; every
    transformer ends with an RMSNorm and there is no final norm. The forward is
    :class:`~sepcli.models.nets.roformer.Roformer`'s.
    """

    def __init__(self, config: MelRoformerConfig) -> None:
        layout = config.band_layout()  # (bands, F)
        freqs = layout.shape[1]
        indices = torch.arange(freqs).expand(config.num_bands, freqs)[layout]
        channels = int(config.audio_channels)
        # rows of the (F * C) bin-major, channel-interleaved spectrogram each band reads
        indices = (indices[:, None] * channels + torch.arange(channels)[None, :]).reshape(-1)
        bands_per_freq = layout.sum(dim=0).repeat_interleave(channels).to(torch.float32)
        band_dims = [2 * int(n) * channels for n in layout.sum(dim=1).tolist()]
        super().__init__(
            config,
            band_dims,
            norm_output=config.norm_output,
            final_norm=False,
            mask_hidden_layers=config.mask_estimator_depth,
        )
        self.register_buffer("freq_indices", indices, persistent=False)
        self.register_buffer("num_bands_per_freq", bands_per_freq[:, None], persistent=False)

    def select_bins(self, spec_ri: Tensor) -> Tensor:
        """The rows of every band, band after band (a row read by two bands twice)."""
        return spec_ri.index_select(1, self.freq_indices)  # (B, K, N, 2)

    def bin_masks(self, masks: Tensor, bins: int) -> Tensor:
        """Per bin, the mean of the masks of the bands that read it."""
        batch, sources, picks, frames = (
            masks.shape[0],
            masks.shape[1],
            masks.shape[2],
            masks.shape[3],
        )
        index = self.freq_indices.view(1, 1, picks, 1, 1).expand(batch, sources, picks, frames, 2)
        summed = torch.zeros(
            batch, sources, bins, frames, 2, dtype=masks.dtype, device=masks.device
        ).scatter_add_(2, index, masks)
        return torch.view_as_complex(summed) / self.num_bands_per_freq
