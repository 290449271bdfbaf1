"""TFC-TDF U-Net: complex-as-channels spectrogram mapping.

Choi, Kim, Chung, Jung, Jung, "Investigating U-Nets with various Intermediate
Blocks for Spectrogram-based Singing Voice Separation", ISMIR 2020, as used by
the KUIELab entries of the Music Demixing Challenge 2021 (Kim et al., MDX
workshop 2021). Each block is a TFC (densely connected 2-D convolutions over
time and frequency) followed by a residual TDF (a two-layer fully-connected
bottleneck over the frequency axis, shared across frames and channels).

The real and imaginary parts of every channel of the mixture spectrogram are
input channels; the output channels are those of every source. Archive output
is ``"complex"``.

Training calls :meth:`TFCTDF.forward_spectrogram` on the complex mixture STFT
``(B, C, F, N)`` and gets complex source estimates ``(B, S, C, F, N)`` (bins
above ``dim_f`` are zero), for a loss on spectrograms or, after
:func:`sepcli.dsp.stft.istft`, on waveforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.dsp.stft import stft
from sepcli.models.archive.contract import set_contract
from sepcli.models.configs import TFCTDFConfig

__all__ = ["TFC", "TDF", "TFCTDFBlock", "TFCTDF"]


class TFC(nn.Module):
    """Densely connected conv block: ``(B, in, N, F) -> (B, out, N, F)``.

    Layer ``i`` sees the block input concatenated with the outputs of layers
    ``0..i-1``; the block returns the last layer's output.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels + i * out_channels,
                    out_channels,
                    kernel_size,
                    padding=kernel_size // 2,
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            )
            for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.layers:
            y = layer(x)
            x = torch.cat([x, y], 1)
        return y


class TDF(nn.Module):
    """Frequency-axis bottleneck MLP: ``(B, ch, N, F) -> (B, ch, N, F)``."""

    def __init__(self, channels: int, bins: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(bins, hidden, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Linear(hidden, bins, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TFCTDFBlock(nn.Module):
    """TFC followed by a residual TDF: ``(B, in, N, F) -> (B, out, N, F)``."""

    def __init__(
        self, in_channels: int, out_channels: int, bins: int, config: TFCTDFConfig
    ) -> None:
        super().__init__()
        self.tfc = TFC(in_channels, out_channels, config.tfc_layers, config.kernel_size)
        hidden = max(bins // config.bottleneck_factor, config.min_bottleneck)
        self.tdf = TDF(out_channels, bins, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = self.tfc(x)
        return x + self.tdf(x)


class TFCTDF(nn.Module):
    """Multi-source TFC-TDF U-Net; archive output ``"complex"``.

    ``forward(mix (B, C, T)) -> (B, S, C, F, N)`` complex on the
    :mod:`sepcli.dsp.stft` grid. Frames are zero-padded internally to a multiple
    of ``2 ** num_levels``, so any input length works.
    """

    def __init__(self, config: TFCTDFConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.n_fft = int(config.n_fft)
        self.hop_length = int(config.hop_length)
        self.dim_f = int(config.dim_f)
        self.num_levels = int(config.num_levels)
        self.frame_multiple = int(2**config.num_levels)
        spec_channels = 2 * config.audio_channels
        ch = config.channels
        self.first_conv = nn.Sequential(
            nn.Conv2d(spec_channels, ch, 1), nn.BatchNorm2d(ch), nn.ReLU()
        )
        bins = config.dim_f
        self.encoder = nn.ModuleList()
        self.downsample = nn.ModuleList()
        widths: list[int] = []
        for _ in range(config.num_levels):
            self.encoder.append(TFCTDFBlock(ch, ch, bins, config))
            widths.append(ch)
            self.downsample.append(
                nn.Sequential(
                    nn.Conv2d(ch, ch + config.growth, 2, stride=2),
                    nn.BatchNorm2d(ch + config.growth),
                    nn.ReLU(),
                )
            )
            ch += config.growth
            bins //= 2
        self.bottleneck = TFCTDFBlock(ch, ch, bins, config)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths):
            bins *= 2
            self.upsample.append(
                nn.Sequential(
                    nn.ConvTranspose2d(ch, width, 2, stride=2), nn.BatchNorm2d(width), nn.ReLU()
                )
            )
            self.decoder.append(TFCTDFBlock(2 * width, width, bins, config))
            ch = width
        self.final_conv = nn.Conv2d(ch, spec_channels * config.num_sources, 1)

    def forward_spectrogram(self, mix_spec: Tensor) -> Tensor:
        """Complex source spectrograms from the complex mixture spectrogram.

        Args:
            mix_spec: ``(batch, channel, freq, frame)`` complex, ``freq = n_fft // 2 + 1``.

        Returns:
            ``(batch, source, channel, freq, frame)`` complex; bins ``>= dim_f`` are 0.
        """
        b, c, nbins, frames = mix_spec.shape
        x = torch.view_as_real(mix_spec[:, :, : self.dim_f])  # (B, C, F, N, 2)
        x = x.permute(0, 1, 4, 3, 2).reshape(b, c * 2, frames, self.dim_f)
        multiple = self.frame_multiple
        padded = (frames + multiple - 1) // multiple * multiple
        x = F.pad(x, [0, 0, 0, padded - frames])
        x = self.first_conv(x)
        skips: list[Tensor] = []
        for block, down in zip(self.encoder, self.downsample):  # noqa: B905 (TorchScript has no strict=)
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        i = len(skips) - 1
        for up, block in zip(self.upsample, self.decoder):  # noqa: B905
            x = up(x)
            x = block(torch.cat([x, skips[i]], 1))
            i -= 1
        x = self.final_conv(x)[:, :, :frames]  # (B, S*C*2, N, dim_f)
        x = x.reshape(b, self.num_sources, c, 2, frames, self.dim_f).permute(0, 1, 2, 5, 4, 3)
        out = torch.view_as_complex(x.contiguous())
        return F.pad(out, [0, 0, 0, nbins - self.dim_f])

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (B, C, T)`` -> complex ``(B, S, C, F, N)``."""
        return self.forward_spectrogram(stft(mix, self.n_fft, self.hop_length))

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """Recommended (segment, context) in seconds for chunked inference.

        Segment: ``segment_frames`` frames. Context: half the theoretical
        receptive field of the convolution stack, capped at a quarter segment
        (the effective receptive field of such stacks is far smaller, and the
        TDF layers are frame-wise).
        """
        cfg = self.config
        seconds_per_frame = cfg.hop_length / cfg.sample_rate
        per_block = (cfg.kernel_size - 1) * cfg.tfc_layers
        frames = 1 + per_block * (2**cfg.num_levels)
        for level in range(cfg.num_levels):
            frames += 2 * per_block * 2**level + 2 * 2**level
        segment = cfg.segment_frames * seconds_per_frame
        return segment, min(frames // 2 * seconds_per_frame, segment / 4)
