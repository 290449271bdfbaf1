"""BS-RoFormer: band-split RoPE transformer (Lu et al., ICASSP 2024, arXiv:2309.02612).

The complex STFT of the mixture (stereo channels interleaved per bin) is cut into
``freqs_per_bands`` contiguous bands; each band becomes one token per frame.
``depth`` axial blocks attend along time and along bands; a mask estimator per
stem gives a complex mask per bin, applied to the mixture STFT and inverted.
Archive output ``"waveform"``.

Arithmetic and state-dict keys follow ``audio-separator`` 0.47.1's
``uvr_lib_v5/roformer/bs_roformer.py`` (the code UVR and audio-separator run
viperx's ``model_bs_roformer_ep_317_sdr_12.9755.ckpt`` with); see
:mod:`sepcli.models.nets.roformer` and ``tests/test_models_roformer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sepcli.models.archive.contract import set_contract
from sepcli.models.nets.roformer import (
    ALL,
    BAND,
    TIME,
    BandSplit,
    MaskEstimator,
    RMSNorm,
    RoformerConfig,
    Transformer,
)

__all__ = ["BSRoformerConfig", "BSRoformer", "VIPERX_FREQS_PER_BANDS", "reference_config"]

#: The band layout of the paper and of every published BS-RoFormer: 62 bands of
#: 2, 4, 12, 24, 48 and 128/129 bins (n_fft 2048).
VIPERX_FREQS_PER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)


@dataclass(frozen=True)
class BSRoformerConfig(RoformerConfig):
    """BS-RoFormer hyper-parameters (defaults: viperx's ``ep_317_sdr_12.9755``).

    Attributes (beyond :class:`~sepcli.models.nets.roformer.RoformerConfig`):
        freqs_per_bands: bins per band, low to high; they sum to ``stft_n_fft // 2 + 1``.
        linear_transformer_depth: layers of a linear-attention transformer over all
            tokens run before each axial block (0 = none; no published UVR config
            uses it).
        mask_estimator_depth: Linear layers of each band's mask MLP (``depth - 1``
            hidden layers of ``dim * mlp_expansion_factor`` units, tanh).
    """

    family: ClassVar[str] = "bs-roformer"
    freqs_per_bands: tuple[int, ...] = VIPERX_FREQS_PER_BANDS
    linear_transformer_depth: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "freqs_per_bands", tuple(int(f) for f in self.freqs_per_bands))
        p = self._check_roformer()
        if len(self.freqs_per_bands) < 2 or min(self.freqs_per_bands) < 1:
            p.append("freqs_per_bands needs at least two bands of >= 1 bin")
        elif sum(self.freqs_per_bands) != self.num_freqs:
            p.append(
                f"freqs_per_bands sums to {sum(self.freqs_per_bands)} bins but "
                f"stft_n_fft={self.stft_n_fft} gives {self.num_freqs}"
            )
        if self.linear_transformer_depth < 0:
            p.append("linear_transformer_depth must be >= 0")
        if self.mask_estimator_depth < 1:
            p.append("mask_estimator_depth must be >= 1")
        self._raise(p)


def reference_config() -> BSRoformerConfig:
    """viperx's BS-RoFormer ``model_bs_roformer_ep_317_sdr_12.9755`` (UVR config)."""
    return BSRoformerConfig(sources=("vocals",), dim=512, depth=12, dim_t=801, num_overlap=4)


class BSRoformer(nn.Module):
    """BS-RoFormer; ``forward(mix (B, C, T)) -> (B, S, C, T)`` waveforms.

    ``T`` is any length above ``stft_n_fft // 2`` samples (reflect padding);
    the published chunk is ``config.chunk_samples``.
    """

    def __init__(self, config: BSRoformerConfig) -> None:
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
            norm_output=False,
        )
        blocks = []
        for _ in range(config.depth):
            parts: list[nn.Module] = []
            if config.linear_transformer_depth > 0:
                parts.append(
                    Transformer(
                        depth=config.linear_transformer_depth, axis=ALL, linear=True, **common
                    )
                )
            parts.append(Transformer(depth=config.time_transformer_depth, axis=TIME, **common))
            parts.append(Transformer(depth=config.freq_transformer_depth, axis=BAND, **common))
            blocks.append(nn.Sequential(*parts))
        self.layers = nn.ModuleList(blocks)
        self.final_norm = RMSNorm(config.dim)
        band_dims = [2 * f * self.audio_channels for f in config.freqs_per_bands]
        self.band_split = BandSplit(config.dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                config.dim,
                band_dims,
                hidden_layers=config.mask_estimator_depth - 1,
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
        # bins major, channels interleaved: (B, F * C, N, re/im)
        spec_ri = torch.view_as_real(spec).reshape(batch, channels, freqs, frames, 2)
        spec_ri = spec_ri.permute(0, 2, 1, 3, 4).reshape(batch, freqs * channels, frames, 2)
        x = spec_ri.permute(0, 2, 1, 3).reshape(batch, frames, freqs * channels * 2)
        x = self.band_split(x)
        for block in self.layers:
            x = block(x)
        x = self.final_norm(x)
        # float32 from here on (masks are bf16/fp16 under autocast; complex needs float32)
        masks = torch.stack([est(x) for est in self.mask_estimators], dim=1).to(spec_ri.dtype)
        sources = masks.shape[1]
        masks = masks.reshape(batch, sources, frames, freqs * channels, 2).permute(0, 1, 3, 2, 4)
        out = torch.view_as_complex(spec_ri.contiguous()).unsqueeze(1) * torch.view_as_complex(
            masks.contiguous()
        )
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
