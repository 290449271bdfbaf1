"""SCNet: sparse compression network on the complex spectrogram.

Tong, Liu, Song, Yang, Li, "SCNet: Sparse Compression Network for Music Source
Separation", ICASSP 2024 (arXiv:2401.13276). The STFT of the mixture (real and
imaginary parts of every channel as ``dims[0]`` image channels) goes through an
encoder of sparse down-sampling blocks: each splits the frequency axis into a
low, mid and high band (proportions ``band_SR``), compresses each band by its own
strided convolution (``band_stride``, ``band_kernel``) followed by a residual
convolution stack along time (``conv_depths`` layers), and joins the bands. A
separation network of ``num_dplayer`` dual-path LSTM layers (along frequency,
then time) alternates between the frame domain and its real FFT. The decoder
mirrors the encoder with gated fusion of the skips and per-band transposed
convolutions, and its ``dims[0] * num_sources`` channels are the complex
spectrograms of the stems, inverted by the same STFT. Archive output
``"waveform"``.

Arithmetic and state-dict keys follow Music-Source-Separation-Training's
``models/scnet/scnet.py`` and ``separation.py`` (MSST ``--model_type scnet``, the
code the published SCNet checkpoints were trained with;
``tests/test_models_scnet.py`` checks parity against a golden made from it).
Quirks kept from the reference:

* the STFT has no window (a rectangular one of ``win_size`` samples) and is
  normalised by ``1 / sqrt(nfft)`` when ``normalized``;
* the input is zero-padded at the end by 1 to 2 hops so that the frame count is
  even (the separation network's real FFT along time must invert exactly);
* the band split points are ``ceil(bins * SR)`` of the cumulated proportions.

Any input length works; the published chunk is ``audio.chunk_size`` samples, run
with MSST's generic demix (:mod:`sepcli.inference.msst_recipe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.models.archive.contract import PublishedChunks, set_contract
from sepcli.models.configs import _Config

__all__ = ["SCNetConfig", "SCNet", "reference_config"]


@dataclass(frozen=True)
class SCNetConfig(_Config):
    """SCNet hyper-parameters, with MSST's YAML names (defaults: ``config_musdb18_scnet.yaml``).

    Attributes:
        sources: stems in output order (``model.sources`` = ``training.instruments``).
        sample_rate: Hz (``audio.sample_rate``). audio_channels: 1 or 2.
        dims: channels at the input and after each encoder block; ``dims[0]`` must be
            ``2 * audio_channels`` (real and imaginary part of each channel).
        nfft, hop_size, win_size: STFT in samples (rectangular window of ``win_size``).
        normalized: STFT scaled by ``1 / sqrt(nfft)`` (``torch.stft(normalized=True)``).
        band_SR: proportions of the low, mid and high band of the frequency axis.
        band_stride: down-sampling factor of each band per encoder block.
        band_kernel: kernel of each band's down-sampling convolution (along frequency).
        conv_depths: residual convolution layers after the down-sampling, per band.
        compress: a convolution layer's hidden width is ``channels // compress``.
        conv_kernel: odd kernel of those convolutions (along time).
        num_dplayer: dual-path LSTM layers of the separation network (even: every
            second one returns from the real-FFT domain).
        expand: LSTM hidden size is ``channels * expand``.
        chunk_size: samples of one inference chunk (``audio.chunk_size`` /
            ``inference.chunk_size``).
        num_overlap: chunks covering each sample (``inference.num_overlap``).
        batch_size: chunks MSST runs per model call (``inference.batch_size``); it
            decides which chunks' fades MSST's demix drops, so the recipe needs it.
    """

    family: ClassVar[str] = "scnet"
    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    sample_rate: int = 44100
    audio_channels: int = 2
    dims: tuple[int, ...] = (4, 32, 64, 128)
    nfft: int = 4096
    hop_size: int = 1024
    win_size: int = 4096
    normalized: bool = True
    band_SR: tuple[float, float, float] = (0.175, 0.392, 0.433)  # noqa: N815 (MSST's name)
    band_stride: tuple[int, int, int] = (1, 4, 16)
    band_kernel: tuple[int, int, int] = (3, 4, 16)
    conv_depths: tuple[int, int, int] = (3, 2, 1)
    compress: int = 4
    conv_kernel: int = 3
    num_dplayer: int = 6
    expand: int = 1
    chunk_size: int = 485100
    num_overlap: int = 4
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "band_SR", tuple(float(s) for s in self.band_SR))
        for name in ("band_stride", "band_kernel", "conv_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        p = self._check_common()
        if len(self.dims) < 2 or min(self.dims) < 1:
            p.append(f"dims must be at least two positive widths, got {list(self.dims)}")
        elif self.dims[0] != 2 * self.audio_channels:
            p.append(f"dims[0]={self.dims[0]} must be 2 * audio_channels")
        if not 0 < self.win_size <= self.nfft or not 0 < self.hop_size <= self.win_size:
            p.append(f"bad STFT nfft={self.nfft} hop_size={self.hop_size} win_size={self.win_size}")
        bands = (self.band_SR, self.band_stride, self.band_kernel, self.conv_depths)
        if any(len(b) != 3 for b in bands):
            p.append(
                "band_SR, band_stride, band_kernel and conv_depths need 3 values (low, mid, high)"
            )
        else:
            if min(self.band_SR) <= 0 or abs(sum(self.band_SR) - 1.0) > 1e-3:
                p.append(
                    f"band_SR must be positive proportions summing to 1, got {list(self.band_SR)}"
                )
            if min(self.band_stride) < 1 or min(self.band_kernel) < 1:
                p.append("band_stride and band_kernel must be >= 1")
            elif any(
                k < s for k, s in zip(self.band_kernel, self.band_stride, strict=True) if s > 1
            ):
                p.append("a strided band's kernel must be >= its stride")
        if self.compress < 1 or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            p.append("compress >= 1 and an odd conv_kernel are required")
        elif len(self.dims) > 1 and min(self.dims[1:]) < self.compress:
            p.append("the encoder widths dims[1:] must be >= compress")
        if self.num_dplayer < 0 or self.num_dplayer % 2:
            p.append(f"num_dplayer must be even, got {self.num_dplayer}")
        if self.expand < 1:
            p.append("expand must be >= 1")
        if self.chunk_size < self.nfft or not 1 <= self.num_overlap <= self.chunk_size:
            p.append("chunk_size >= nfft and 1 <= num_overlap <= chunk_size are required")
        if self.chunk_size // 10 < 1:
            p.append("chunk_size must be >= 10 (the demix fade is chunk_size // 10)")
        if self.batch_size < 1:
            p.append("batch_size must be >= 1")
        self._raise(p)

    @property
    def chunk_samples(self) -> int:
        """One published chunk, in samples (``chunk_size``; :class:`PublishedChunks`)."""
        return self.chunk_size

    @property
    def num_sources(self) -> int:
        return len(self.sources)


def reference_config() -> SCNetConfig:
    """StarryTong's SCNet for MUSDB18 (MSST ``config_musdb18_scnet.yaml``)."""
    return SCNetConfig()


def _band_splits(bins: int, proportions: tuple[float, ...]) -> list[int]:
    """Start of the mid and high band and the end, as MSST rounds them."""
    low, mid = proportions[0], proportions[1]
    return [math.ceil(bins * low), math.ceil(bins * (low + mid)), bins]


class _ConvStack(nn.Module):
    """Residual stack along time: each layer is norm, GLU conv, depthwise conv, norm,
    swish, 1x1 conv. ``(N, C, T) -> (N, C, T)``."""

    def __init__(self, channels: int, depth: int, compress: int, kernel: int) -> None:
        super().__init__()
        hidden = int(channels / compress)
        pad = kernel // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=pad),
                nn.GLU(1),
                nn.Conv1d(hidden, hidden, kernel, padding=pad, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(abs(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class _SparseDown(nn.Module):
    """The bands of ``(B, C, bins, T)``, each compressed along frequency by its own
    strided convolution (zero-padded to a whole number of strides)."""

    def __init__(self, c_in: int, c_out: int, bins: int, config: SCNetConfig) -> None:
        super().__init__()
        edges = [0, *_band_splits(bins, config.band_SR)]
        self.starts: list[int] = edges[:3]
        self.stops: list[int] = edges[1:]
        self.pads: list[list[int]] = []
        self.out_bins: list[int] = []
        convs = []
        for i in range(3):
            stride, kernel = config.band_stride[i], config.band_kernel[i]
            width = edges[i + 1] - edges[i]
            total = kernel - 1 if stride == 1 else (stride - width % stride) % stride
            self.pads.append([0, 0, total // 2, total - total // 2])
            self.out_bins.append((width + total - kernel) // stride + 1)
            convs.append(nn.Conv2d(c_in, c_out, (kernel, 1), (stride, 1)))
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        for i, conv in enumerate(self.convs):
            band = x[:, :, self.starts[i] : self.stops[i]]
            out.append(conv(F.pad(band, self.pads[i])))
        return out


class _SparseUp(nn.Module):
    """Per-band transposed convolutions back to the band widths before :class:`_SparseDown`
    (cropped symmetrically), joined along frequency."""

    def __init__(self, c_in: int, c_out: int, down: _SparseDown, config: SCNetConfig) -> None:
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, (config.band_kernel[i], 1), (config.band_stride[i], 1))
            for i in range(3)
        )
        starts = [0, down.out_bins[0], down.out_bins[0] + down.out_bins[1]]
        self.starts: list[int] = starts
        self.stops: list[int] = [starts[1], starts[2], starts[2] + down.out_bins[2]]
        self.widths: list[int] = [b - a for a, b in zip(down.starts, down.stops, strict=True)]
        self.crops: list[int] = []
        for i in range(3):
            up = (down.out_bins[i] - 1) * config.band_stride[i] + config.band_kernel[i]
            self.crops.append(abs(self.widths[i] - up) // 2)

    def forward(self, x: Tensor) -> Tensor:
        out: list[Tensor] = []
        for i, convtr in enumerate(self.convtrs):
            y = convtr(x[:, :, self.starts[i] : self.stops[i]])
            out.append(y[:, :, self.crops[i] : self.crops[i] + self.widths[i]])
        return torch.cat(out, dim=2)


class _EncoderBlock(nn.Module):
    """Sparse down-sampling, a convolution stack along time per band, GELU, and a
    3x3 convolution over the joined bands. Returns the output and the skip."""

    def __init__(self, c_in: int, c_out: int, bins: int, config: SCNetConfig) -> None:
        super().__init__()
        self.SDlayer = _SparseDown(c_in, c_out, bins, config)
        self.conv_modules = nn.ModuleList(
            _ConvStack(c_out, d, config.compress, config.conv_kernel) for d in config.conv_depths
        )
        self.globalconv = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.out_bins = sum(self.SDlayer.out_bins)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        bands = self.SDlayer(x)
        out: list[Tensor] = []
        for i, stack in enumerate(self.conv_modules):
            band = bands[i]
            b, c, f, t = band.shape
            y = stack(band.permute(0, 2, 1, 3).reshape(b * f, c, t))
            out.append(F.gelu(y.reshape(b, f, c, t).permute(0, 2, 1, 3)))
        skip = torch.cat(out, dim=2)
        return self.globalconv(skip), skip


class _Fusion(nn.Module):
    """``glu(conv3x3([x + skip, x + skip]))`` over channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = x + skip
        return F.glu(self.conv(torch.cat([x, x], dim=1)), dim=1)


class _DualPath(nn.Module):
    """A bidirectional LSTM along frequency, then one along time, each with a
    group norm before and a residual around it. ``(B, C, F, T) -> (B, C, F, T)``."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(channels, hidden, num_layers=1, bidirectional=True, batch_first=True)
            for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, t = x.shape
        y = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(b * t, f, c)
        y = self.linear_layers[0](self.lstm_layers[0](y)[0])
        x = x + y.reshape(b, t, f, c).permute(0, 3, 2, 1)
        y = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(b * f, t, c)
        y = self.linear_layers[1](self.lstm_layers[1](y)[0])
        return x + y.reshape(b, f, t, c).permute(0, 3, 1, 2)


class _SeparationNet(nn.Module):
    """Dual-path layers; after an even-numbered one the frames go to their real FFT
    (``ortho``, real and imaginary parts stacked on channels), after an odd one back."""

    def __init__(self, channels: int, expand: int, layers: int) -> None:
        super().__init__()
        self.dp_modules = nn.ModuleList(
            _DualPath(channels * (2 if i % 2 else 1), expand) for i in range(layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.dp_modules):
            x = layer(x).float()
            if i % 2 == 0:
                z = torch.fft.rfft(x, dim=3, norm="ortho")
                x = torch.cat([z.real, z.imag], dim=1)
            else:
                half = x.shape[1] // 2
                z = torch.complex(x[:, :half], x[:, half:])
                x = torch.fft.irfft(z, dim=3, norm="ortho")
        return x


class SCNet(PublishedChunks, nn.Module):
    """SCNet; ``forward(mix (B, C, T)) -> (B, S, C, T)`` waveforms."""

    def __init__(self, config: SCNetConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.n_fft = int(config.nfft)
        self.hop_length = int(config.hop_size)
        self.win_length = int(config.win_size)
        self.normalized = bool(config.normalized)
        dims = config.dims
        bins = self.n_fft // 2 + 1
        encoder = []
        decoder = []
        for i in range(len(dims) - 1):
            block = _EncoderBlock(dims[i], dims[i + 1], bins, config)
            out_c = dims[i] if i else dims[0] * self.num_sources
            up = _SparseUp(dims[i + 1], out_c, block.SDlayer, config)
            encoder.append(block)
            # a pair, keys "0" and "1" as MSST's nn.Sequential(FusionLayer, SUlayer)
            decoder.insert(0, nn.ModuleList([_Fusion(dims[i + 1]), up]))
            bins = block.out_bins
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.separation_net = _SeparationNet(dims[-1], config.expand, config.num_dplayer)
        self.register_buffer("window", torch.ones(self.win_length), persistent=False)

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (batch, channel, time)`` -> stems ``(batch, source, channel, time)``."""
        batch, channels, length = mix.shape
        hop = self.hop_length
        # pad so that the padded length is an odd number of hops: an even frame count
        pad = hop - length % hop
        if (length + pad) // hop % 2 == 0:
            pad += hop
        x = F.pad(mix, (0, pad)).reshape(batch * channels, length + pad)
        spec = torch.stft(
            x,
            self.n_fft,
            hop,
            self.win_length,
            window=self.window,
            center=True,
            normalized=self.normalized,
            onesided=True,
            return_complex=True,
        )
        bins, frames = spec.shape[-2], spec.shape[-1]
        # (B, C * re/im, F, N) with re/im of each channel adjacent
        x = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(batch, channels * 2, bins, frames)
        skips: list[Tensor] = []
        for block in self.encoder:
            x, skip = block(x)
            skips.append(skip)
        x = self.separation_net(x)
        i = len(skips) - 1
        for pair in self.decoder:
            x = pair[1](pair[0](x, skips[i]))
            i -= 1
        # consecutive channel pairs are (re, im) of stem s, channel c in (s, c) order
        x = x.reshape(batch * self.num_sources * channels, 2, bins, frames)
        spec = torch.complex(x[:, 0].float(), x[:, 1].float())
        wav = torch.istft(
            spec,
            self.n_fft,
            hop,
            self.win_length,
            window=self.window,
            center=True,
            normalized=self.normalized,
            onesided=True,
        )
        return wav[:, :length].reshape(batch, self.num_sources, channels, length)
