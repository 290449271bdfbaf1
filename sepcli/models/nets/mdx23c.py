"""MDX23C: the TFC-TDF v3 U-Net of KUIELab's Sound Demixing Challenge 2023 entry.

Kim, Jung, Lee, Kim, Chun, "Sound Demixing Challenge 2023 - Music Demixing Track
Technical Report: TFC-TDF-UNet v3" (arXiv:2306.09382); the U-Net of Choi et al.
(ISMIR 2020) on the complex spectrogram, with the bins folded into
``num_subbands`` channel groups, ``num_scales`` down-sampling steps and
TFC-TDF blocks (3x3 convolutions plus a bottlenecked fully-connected layer along
frequency) at every scale. The network outputs the complex spectrograms of the
stems (bins above ``dim_f`` are zero), inverted by the same STFT. Archive output
``"waveform"``.

Arithmetic and state-dict keys follow ``audio-separator`` 0.47.1's
``uvr_lib_v5/tfc_tdf_v3.py`` (what UVR and audio-separator run
``MDX23C-8KFFT-InstVoc_HQ.ckpt`` with; ``tests/test_models_mdx23c.py``).

The U-Net needs ``frames`` divisible by ``scale[0] ** num_scales``. At the
published chunk (``hop_length * (dim_t - 1)`` samples, ``dim_t`` frames) it runs
as the reference does; other lengths are zero-padded at the end to the next
valid frame count and cropped back (instance norms then see the padding, so
only the published chunk reproduces the reference exactly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.models.archive.contract import PublishedChunks, set_contract
from sepcli.models.configs import _Config

__all__ = ["MDX23CConfig", "MDX23C", "TFCTDF", "reference_config"]

_GROUP_NORM = re.compile(r"GroupNorm([0-9]+)")
_ELU = re.compile(r"elu([0-9.eE+-]+)")


@dataclass(frozen=True)
class MDX23CConfig(_Config):
    """MDX23C hyper-parameters (names as in the MSST YAML; defaults: 8KFFT InstVoc HQ).

    Attributes:
        sources: stems in output order (``training.instruments``, or the one
            ``target_instrument``).
        sample_rate: Hz. audio_channels: 2 (the reference is stereo only).
        n_fft, hop_length: STFT in samples (periodic Hann window, centred).
        dim_f: lowest bins the network sees (the rest are output as zero).
        dim_t: frames of one inference chunk (``inference.dim_t``; the chunk is
            ``hop_length * (dim_t - 1)`` samples).
        num_overlap: chunks covering each sample (``inference.num_overlap``).
        num_subbands: bins folded into channel groups (``dim_f / num_subbands``
            bins per group).
        num_scales: down-sampling steps. scale: (time, freq) factor of each step.
        num_blocks_per_scale: TFC-TDF blocks per scale.
        num_channels: channels after the first 1x1 convolution; growth: added per scale.
        bottleneck_factor: the TDF's hidden units are ``bins // bottleneck_factor``.
        norm: ``"InstanceNorm"``, ``"BatchNorm"``, ``"GroupNorm<groups>"`` or ``""`` (none).
        act: ``"gelu"``, ``"relu"`` or ``"elu<alpha>"``.
    """

    family: ClassVar[str] = "mdx23c"
    sources: tuple[str, ...] = ("vocals", "instrumental")
    sample_rate: int = 44100
    audio_channels: int = 2
    n_fft: int = 8192
    hop_length: int = 1024
    dim_f: int = 4096
    dim_t: int = 256
    num_overlap: int = 8
    num_subbands: int = 4
    num_scales: int = 5
    scale: tuple[int, int] = (2, 2)
    num_blocks_per_scale: int = 2
    num_channels: int = 128
    growth: int = 128
    bottleneck_factor: int = 4
    norm: str = "InstanceNorm"
    act: str = "gelu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "scale", tuple(int(s) for s in self.scale))
        p = self._check_common()
        if self.audio_channels != 2:
            p.append("audio_channels must be 2 (the MDX23C reference is stereo only)")
        if self.n_fft <= 0 or not 0 < self.hop_length <= self.n_fft:
            p.append(f"bad STFT n_fft={self.n_fft} hop_length={self.hop_length}")
        if len(self.scale) != 2 or min(self.scale) < 1:
            p.append(f"scale must be two factors >= 1, got {list(self.scale)}")
        elif self.num_subbands < 1 or self.num_scales < 0:
            p.append("num_subbands >= 1 and num_scales >= 0 are required")
        else:
            step = self.num_subbands * self.scale[1] ** self.num_scales
            if not 0 < self.dim_f <= self.n_fft // 2 + 1 or self.dim_f % step:
                p.append(
                    f"dim_f={self.dim_f} must be <= n_fft // 2 + 1 and a multiple of "
                    f"num_subbands * scale[1] ** num_scales = {step}"
                )
            elif (self.dim_f // self.num_subbands) // self.scale[1] ** self.num_scales < (
                self.bottleneck_factor
            ):
                p.append("the bottleneck has fewer bins than bottleneck_factor")
        if self.num_blocks_per_scale < 1 or self.num_channels < 1 or self.growth < 0:
            p.append("num_blocks_per_scale >= 1, num_channels >= 1 and growth >= 0 are required")
        if self.bottleneck_factor < 1:
            p.append("bottleneck_factor must be >= 1")
        if self.dim_t < 2 or not 1 <= self.num_overlap <= self.chunk_samples:
            p.append("dim_t >= 2 and 1 <= num_overlap <= chunk samples are required")
        if self.norm not in ("", "InstanceNorm", "BatchNorm") and not _GROUP_NORM.fullmatch(
            self.norm
        ):
            p.append(f"norm must be InstanceNorm, BatchNorm, GroupNorm<n> or '', got {self.norm!r}")
        if self.act not in ("gelu", "relu") and not _ELU.fullmatch(self.act):
            p.append(f"act must be gelu, relu or elu<alpha>, got {self.act!r}")
        self._raise(p)

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def chunk_samples(self) -> int:
        """Samples of one inference chunk, ``hop_length * (dim_t - 1)``."""
        return self.hop_length * (self.dim_t - 1)


def reference_config() -> MDX23CConfig:
    """``MDX23C-8KFFT-InstVoc_HQ`` (UVR ``model_2_stem_full_band_8k.yaml``)."""
    return MDX23CConfig()


def _norm(kind: str, channels: int, eps: float = 1e-5) -> nn.Module:
    if kind == "BatchNorm":
        return nn.BatchNorm2d(channels)
    if kind == "InstanceNorm":
        return nn.InstanceNorm2d(channels, affine=True, eps=eps)
    match = _GROUP_NORM.fullmatch(kind)
    if match:
        return nn.GroupNorm(num_groups=int(match.group(1)), num_channels=channels)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    if kind == "relu":
        return nn.ReLU()
    if kind == "silu":  # the HyperACE mask head's blocks (sepcli.models.nets.roformer)
        return nn.SiLU()
    return nn.ELU(float(kind[3:]))


class _TFCTDFBlock(nn.Module):
    """``x + tdf(x)`` between two 3x3 convolutions, plus a 1x1 shortcut."""

    def __init__(
        self, in_c: int, c: int, bins: int, bn: int, norm: str, act: str, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.tfc1 = nn.Sequential(
            _norm(norm, in_c, eps), _act(act), nn.Conv2d(in_c, c, 3, 1, 1, bias=False)
        )
        self.tdf = nn.Sequential(
            _norm(norm, c, eps),
            _act(act),
            nn.Linear(bins, bins // bn, bias=False),
            _norm(norm, c, eps),
            _act(act),
            nn.Linear(bins // bn, bins, bias=False),
        )
        self.tfc2 = nn.Sequential(
            _norm(norm, c, eps), _act(act), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        )
        self.shortcut = nn.Conv2d(in_c, c, 1, 1, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.shortcut(x)
        x = self.tfc1(x)
        x = x + self.tdf(x)
        return self.tfc2(x) + s


class TFCTDF(nn.Module):
    """``blocks`` TFC-TDF blocks: ``(B, in_c, T, bins) -> (B, c, T, bins)``.

    ``eps`` is the InstanceNorm's (MDX23C: PyTorch's 1e-5; the HyperACE mask head
    of :mod:`sepcli.models.nets.roformer`: 1e-8 with ``act="silu"``).
    """

    def __init__(
        self,
        in_c: int,
        c: int,
        layers: int,
        bins: int,
        bn: int,
        norm: str,
        act: str,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        blocks = []
        for _ in range(layers):
            blocks.append(_TFCTDFBlock(in_c, c, bins, bn, norm, act, eps))
            in_c = c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _Rescale(nn.Module):
    """Norm, activation and a strided (transposed) convolution by ``scale``."""

    def __init__(
        self, in_c: int, out_c: int, scale: tuple[int, int], norm: str, act: str, up: bool
    ) -> None:
        super().__init__()
        conv: nn.Module
        if up:
            conv = nn.ConvTranspose2d(in_c, out_c, kernel_size=scale, stride=scale, bias=False)
        else:
            conv = nn.Conv2d(in_c, out_c, kernel_size=scale, stride=scale, bias=False)
        self.conv = nn.Sequential(_norm(norm, in_c), _act(act), conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _EncoderBlock(nn.Module):
    def __init__(self, tfc_tdf: TFCTDF, downscale: _Rescale) -> None:
        super().__init__()
        self.tfc_tdf = tfc_tdf
        self.downscale = downscale


class _DecoderBlock(nn.Module):
    def __init__(self, upscale: _Rescale, tfc_tdf: TFCTDF) -> None:
        super().__init__()
        self.upscale = upscale
        self.tfc_tdf = tfc_tdf


class MDX23C(PublishedChunks, nn.Module):
    """TFC-TDF v3 U-Net; ``forward(mix (B, 2, T)) -> (B, S, 2, T)`` waveforms."""

    def __init__(self, config: MDX23CConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.n_fft = int(config.n_fft)
        self.hop_length = int(config.hop_length)
        self.dim_f = int(config.dim_f)
        self.num_subbands = int(config.num_subbands)
        self.frame_multiple = int(config.scale[0] ** config.num_scales)
        norm, act, scale = config.norm, config.act, config.scale
        dim_c = self.num_subbands * self.audio_channels * 2
        c = config.num_channels
        g = config.growth
        bn = config.bottleneck_factor
        layers = config.num_blocks_per_scale
        bins = config.dim_f // self.num_subbands
        self.first_conv = nn.Conv2d(dim_c, c, 1, 1, 0, bias=False)
        encoders = []
        for _ in range(config.num_scales):
            encoders.append(
                _EncoderBlock(
                    TFCTDF(c, c, layers, bins, bn, norm, act),
                    _Rescale(c, c + g, scale, norm, act, up=False),
                )
            )
            bins = bins // scale[1]
            c += g
        self.encoder_blocks = nn.ModuleList(encoders)
        self.bottleneck_block = TFCTDF(c, c, layers, bins, bn, norm, act)
        decoders = []
        for _ in range(config.num_scales):
            up = _Rescale(c, c - g, scale, norm, act, up=True)
            bins = bins * scale[1]
            c -= g
            decoders.append(_DecoderBlock(up, TFCTDF(2 * c, c, layers, bins, bn, norm, act)))
        self.decoder_blocks = nn.ModuleList(decoders)
        self.final_conv = nn.Sequential(
            nn.Conv2d(c + dim_c, c, 1, 1, 0, bias=False),
            _act(act),
            nn.Conv2d(c, self.num_sources * dim_c, 1, 1, 0, bias=False),
        )
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def _unet(self, x: Tensor) -> Tensor:
        """Folded spectrogram ``(B, 2C * k, bins / k, N)`` -> ``(B, S * 2C * k, bins / k, N)``."""
        mix = x
        first = self.first_conv(x)
        x = first.transpose(-1, -2)
        skips: list[Tensor] = []
        for block in self.encoder_blocks:
            x = block.tfc_tdf(x)
            skips.append(x)
            x = block.downscale(x)
        x = self.bottleneck_block(x)
        i = len(skips) - 1
        for block in self.decoder_blocks:
            x = block.upscale(x)
            x = torch.cat([x, skips[i]], 1)
            i -= 1
            x = block.tfc_tdf(x)
        x = x.transpose(-1, -2) * first
        return self.final_conv(torch.cat([mix, x], 1))

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (batch, 2, time)`` -> stems ``(batch, source, 2, time)``."""
        batch, channels, length = mix.shape
        frames = length // self.hop_length + 1
        padded = -(-frames // self.frame_multiple) * self.frame_multiple
        x = mix
        if padded != frames:
            x = F.pad(mix, (0, (padded - frames) * self.hop_length))
        total = x.shape[-1]
        spec = torch.stft(
            x.reshape(batch * channels, total),
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            onesided=True,
            return_complex=True,
        )
        nbins, nframes = spec.shape[-2], spec.shape[-1]
        # (B, C * re/im, F, N) with re/im of each channel adjacent, cut to dim_f bins
        spec_ri = torch.view_as_real(spec).permute(0, 3, 1, 2)
        spec_ri = spec_ri.reshape(batch, channels * 2, nbins, nframes)[:, :, : self.dim_f]
        k = self.num_subbands
        cw = channels * 2
        folded = spec_ri.reshape(batch, cw * k, self.dim_f // k, nframes)
        # float32 from here on (bf16/fp16 under autocast; complex needs float32)
        out = self._unet(folded).to(spec_ri.dtype)
        out = out.reshape(batch, self.num_sources * cw, self.dim_f, nframes)
        out = out.reshape(batch * self.num_sources * channels, 2, self.dim_f, nframes)
        out = F.pad(out, (0, 0, 0, nbins - self.dim_f))
        out = torch.complex(out[:, 0], out[:, 1])
        wav = torch.istft(
            out,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            onesided=True,
            length=length,
        )
        return wav.reshape(batch, self.num_sources, channels, length)
