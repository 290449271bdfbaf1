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
from torch import Tensor, nn

from sepcli.models.archive.contract import set_contract
from sepcli.models.nets.roformer import (
    BAND,
    TIME,
    BandSplit,
    MaskEstimator,
    RoformerConfig,
    Transformer,
    mel_band_layout,
)

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


class MelRoformer(nn.Module):
    """Mel-Band RoFormer; ``forward(mix (B, C, T)) -> (B, S, C, T)`` waveforms."""

    def __init__(self, config: MelRoformerConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.n_fft = int(config.stft_n_fft)
        self.hop_length = int(config.stft_hop_length)
        self.win_length = int(config.stft_win_length)
        self.normalized = bool(config.stft_normalized)
        common = dict(
            dim=config.dim,
            heads=config.heads,
            dim_head=config.dim_head,
            attn_dropout=config.attn_dropout,
            ff_dropout=config.ff_dropout,
            norm_output=True,
        )
        self.layers = nn.ModuleList(
            nn.Sequential(
                Transformer(depth=config.time_transformer_depth, axis=TIME, **common),
                Transformer(depth=config.freq_transformer_depth, axis=BAND, **common),
            )
            for _ in range(config.depth)
        )
        layout = config.band_layout()  # (bands, F)
        freqs = layout.shape[1]
        indices = torch.arange(freqs).expand(config.num_bands, freqs)[layout]
        channels = self.audio_channels
        # rows of the (F * C) bin-major, channel-interleaved spectrogram each band reads
        indices = (indices[:, None] * channels + torch.arange(channels)[None, :]).reshape(-1)
        self.register_buffer("freq_indices", indices, persistent=False)
        bands_per_freq = layout.sum(dim=0).repeat_interleave(channels).to(torch.float32)
        self.register_buffer("num_bands_per_freq", bands_per_freq[:, None], persistent=False)
        band_dims = [2 * int(n) * channels for n in layout.sum(dim=1).tolist()]
        self.band_split = BandSplit(config.dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                config.dim,
                band_dims,
                hidden_layers=config.mask_estimator_depth,
                expansion=config.mlp_expansion_factor,
            )
            for _ in config.sources
        )
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (batch, channel, time)`` -> stems ``(batch, source, channel, time)``."""
        batch, channels, length = mix.shape
        spec = torch.stft(
            mix.reshape(batch * channels, length),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            center=True,
            normalized=self.normalized,
            onesided=True,
            return_complex=True,
        )
        freqs, frames = spec.shape[-2], spec.shape[-1]
        spec_ri = torch.view_as_real(spec).reshape(batch, channels, freqs, frames, 2)
        spec_ri = spec_ri.permute(0, 2, 1, 3, 4).reshape(batch, freqs * channels, frames, 2)
        picked = spec_ri.index_select(1, self.freq_indices)  # (B, K, N, 2)
        x = picked.permute(0, 2, 1, 3).reshape(batch, frames, -1)
        x = self.band_split(x)
        for block in self.layers:
            x = block(x)
        # float32 from here on (masks are bf16/fp16 under autocast; complex needs float32)
        masks = torch.stack([est(x) for est in self.mask_estimators], dim=1).to(spec_ri.dtype)
        sources = masks.shape[1]
        picks = self.freq_indices.shape[0]
        masks = masks.reshape(batch, sources, frames, picks, 2).permute(0, 1, 3, 2, 4)
        index = self.freq_indices.view(1, 1, picks, 1, 1).expand(batch, sources, picks, frames, 2)
        summed = torch.zeros(
            batch, sources, freqs * channels, frames, 2, dtype=masks.dtype, device=masks.device
        ).scatter_add_(2, index, masks)
        averaged = torch.view_as_complex(summed) / self.num_bands_per_freq
        out = torch.view_as_complex(spec_ri.contiguous()).unsqueeze(1) * averaged
        out = out.reshape(batch, sources, freqs, channels, frames).permute(0, 1, 3, 2, 4)
        wav = torch.istft(
            out.reshape(batch * sources * channels, freqs, frames),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            center=True,
            normalized=self.normalized,
            onesided=True,
            length=length,
        )
        return wav.reshape(batch, sources, channels, length)

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """(segment, context) in seconds: one published chunk, no extra context."""
        return self.config.chunk_samples / self.sample_rate, 0.0

    @torch.jit.unused
    def archive_overlap(self) -> float:
        """Fraction of a chunk shared with the next: ``1 - 1 / num_overlap``."""
        return min(0.9, 1.0 - 1.0 / self.config.num_overlap)
