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
from torch import Tensor

from sepcli.models.nets.roformer import Roformer, RoformerConfig

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


class BSRoformer(Roformer):
    """BS-RoFormer; ``forward(mix (B, C, T)) -> (B, S, C, T)`` waveforms.

    Bands are contiguous runs of bins (``freqs_per_bands``), so every band reads
    its bins as they lie and each bin gets its band's mask; a final RMSNorm
    follows the axial blocks. The forward is :class:`~sepcli.models.nets.roformer.Roformer`'s.
    """

    def __init__(self, config: BSRoformerConfig) -> None:
        band_dims = [2 * f * int(config.audio_channels) for f in config.freqs_per_bands]
        super().__init__(
            config,
            band_dims,
            norm_output=config.norm_output,
            final_norm=True,
            mask_hidden_layers=config.mask_estimator_depth - 1,
            linear_transformer_depth=config.linear_transformer_depth,
        )

    def select_bins(self, spec_ri: Tensor) -> Tensor:
        """Every row, in order: the bands tile the bins."""
        return spec_ri

    def bin_masks(self, masks: Tensor, bins: int) -> Tensor:
        """The band masks are already one per bin."""
        return torch.view_as_complex(masks.contiguous())
