"""Waveform U-Net in the Demucs family.

Défossez, Usunier, Bottou, Bach, "Music Source Separation in the Waveform
Domain", arXiv:1911.13254 (Demucs v2): strided 1-D convolution encoder with
GLU, a recurrent (BiLSTM) or attention bottleneck, and a transposed-convolution
decoder with additive skip connections. The decoder is shared by all sources
(one output channel per source and audio channel) or there is one per source.

The input is standardised by its own mean and standard deviation (undone on
output) and zero-padded at the end to a multiple of ``stride ** depth``
samples, so any length works; chunked inference with overlap-add suits it.
Training calls ``forward`` (waveform out) and puts the loss on waveforms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.models.archive.contract import set_contract
from sepcli.models.configs import WaveformConfig

__all__ = ["WaveformUNet"]


class _EncoderLayer(nn.Module):
    """``(B, in, L) -> (B, out, L / stride)``: strided conv, ReLU, 1x1 conv, GLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - stride) // 2
        )
        self.rewrite = nn.Conv1d(out_channels, 2 * out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.rewrite(F.relu(self.conv(x))), dim=1)


class _DecoderLayer(nn.Module):
    """``(B, in, L) -> (B, out, L * stride)``: 3-tap conv, GLU, transposed conv (+ReLU)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, last: bool
    ) -> None:
        super().__init__()
        self.rewrite = nn.Conv1d(in_channels, 2 * in_channels, 3, padding=1)
        self.conv_tr = nn.ConvTranspose1d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - stride) // 2
        )
        self.last = last

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_tr(F.glu(self.rewrite(x), dim=1))
        if not self.last:
            x = F.relu(x)
        return x


class _Decoder(nn.Module):
    """Decoder stack consuming the encoder skips (deepest first)."""

    def __init__(self, widths: list[int], out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        layers = []
        for i in range(len(widths) - 1, -1, -1):
            out = widths[i - 1] if i > 0 else out_channels
            layers.append(_DecoderLayer(widths[i], out, kernel_size, stride, last=i == 0))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        i = len(skips) - 1
        for layer in self.layers:
            x = layer(x + skips[i])
            i -= 1
        return x


class _LSTMBottleneck(nn.Module):
    """BiLSTM over time with a linear projection back: ``(B, ch, L) -> (B, ch, L)``."""

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers, bidirectional=True)
        self.linear = nn.Linear(2 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))
        return self.linear(y).permute(1, 2, 0)


class _AttentionLayer(nn.Module):
    """Pre-norm transformer encoder layer (self-attention + feed-forward)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


class _AttentionBottleneck(nn.Module):
    """Sinusoidal positions + self-attention layers: ``(B, ch, L) -> (B, ch, L)``."""

    def __init__(self, channels: int, num_layers: int, heads: int) -> None:
        super().__init__()
        self.channels = channels
        self.layers = nn.ModuleList(_AttentionLayer(channels, heads) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        half = self.channels // 2
        pos = torch.arange(length, device=x.device, dtype=x.dtype).unsqueeze(1)
        freqs = torch.exp(
            -math.log(10000.0)
            * torch.arange(half, device=x.device, dtype=x.dtype)
            / max(half - 1, 1)
        )
        emb = torch.cat([torch.cos(pos * freqs), torch.sin(pos * freqs)], 1)  # (L, 2*half)
        y = x.transpose(1, 2)
        y = y + F.pad(emb, [0, self.channels - 2 * half]).unsqueeze(0)
        for layer in self.layers:
            y = layer(y)
        return y.transpose(1, 2)


class WaveformUNet(nn.Module):
    """Demucs-style waveform U-Net; archive output ``"waveform"``.

    ``forward(mix (B, C, T)) -> (B, S, C, T)``.
    """

    def __init__(self, config: WaveformConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.normalize = bool(config.normalize)
        self.multiple = int(config.stride**config.depth)
        widths = config.layer_channels()
        self.encoder = nn.ModuleList()
        in_ch = config.audio_channels
        for width in widths:
            self.encoder.append(_EncoderLayer(in_ch, width, config.kernel_size, config.stride))
            in_ch = width
        if config.bottleneck == "lstm":
            self.bottleneck: nn.Module = _LSTMBottleneck(widths[-1], config.lstm_layers)
        elif config.bottleneck == "attention":
            self.bottleneck = _AttentionBottleneck(
                widths[-1], config.attention_layers, config.attention_heads
            )
        else:
            self.bottleneck = nn.Identity()
        if config.shared_decoder:
            out = config.audio_channels * config.num_sources
            self.decoders = nn.ModuleList(
                [_Decoder(widths, out, config.kernel_size, config.stride)]
            )
        else:
            self.decoders = nn.ModuleList(
                _Decoder(widths, config.audio_channels, config.kernel_size, config.stride)
                for _ in config.sources
            )

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (B, C, T)`` -> sources ``(B, S, C, T)``."""
        b, c, length = mix.shape
        x = mix
        mean = torch.zeros(b, 1, 1, dtype=mix.dtype, device=mix.device)
        std = torch.ones(b, 1, 1, dtype=mix.dtype, device=mix.device)
        if self.normalize:
            mono = mix.mean(1, keepdim=True)
            mean = mono.mean(-1, keepdim=True)
            std = mono.std(-1, keepdim=True) if length > 1 else std
            x = (x - mean) / (1e-5 + std)
        padded = (length + self.multiple - 1) // self.multiple * self.multiple
        x = F.pad(x, [0, padded - length])
        skips: list[Tensor] = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        x = self.bottleneck(x)
        outs: list[Tensor] = []
        for decoder in self.decoders:
            outs.append(decoder(x, skips))
        y = torch.cat(outs, 1)[..., :length]
        y = y.reshape(b, self.num_sources, c, length)
        return y * (1e-5 + std).unsqueeze(1) + mean.unsqueeze(1)

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """Recommended (segment, context) in seconds for chunked inference.

        With a recurrent or attention bottleneck the receptive field is the whole
        segment; a quarter segment of context each side (Demucs's overlap)
        is recommended. Without one, half the convolution receptive field.
        """
        cfg = self.config
        if cfg.bottleneck != "none":
            return cfg.segment, cfg.segment / 4
        field = 1
        for i in range(cfg.depth):
            field += (cfg.kernel_size - 1) * cfg.stride**i + 2 * cfg.stride ** (i + 1)
        return cfg.segment, min(field / 2 / cfg.sample_rate, cfg.segment / 4)
