"""Hybrid Transformer Demucs (HT-Demucs, Demucs v4).

Rouard, Massa, Défossez, "Hybrid Transformers for Music Source Separation",
ICASSP 2023 (arXiv:2211.08553). Two U-Nets run side by side: a spectrogram
branch (complex-as-channels STFT, convolutions along frequency) and a waveform
branch (strided 1-D convolutions). At the bottom, a cross-domain transformer
alternates self-attention within each branch and cross-attention between them.
Each source is the sum of the waveform branch's output and the inverse STFT of
the spectrogram branch's output.

This is our implementation of ``demucs.htdemucs.HTDemucs`` (demucs 4.1.0) for
the configurations the published models use (``htdemucs``, the four
``htdemucs_ft`` members, ``htdemucs_6s``): the state-dict keys are the
reference's, so a published ``state`` loads with ``strict=True``, and the
arithmetic follows it operation by operation (tests/test_models_htdemucs.py
measures the difference against the reference package). Not supported, and
refused by :class:`HTDemucsConfig`: Wiener filtering / magnitude masks
(``cac=False``), multi-band layers (``multi_freqs``), branches that merge before
the bottom (a frequency axis that collapses within ``depth`` layers), sparse
attention and the ``cape`` / ``scaled`` positional embeddings. None of the
published HT-Demucs models use them.

**Fixed length.** HT-Demucs is trained on segments of a fixed length
(``segment_samples``: 7.8 s = 343,980 samples for the published models) and its
transformer only ever saw that many frames, so :meth:`HTDemucs.forward` zero-pads
a shorter input at the end to that length and crops the output back, as the
reference does in eval mode. An input longer than the segment is an error:
longer tracks go through Demucs' chunking (:mod:`sepcli.inference.demucs_recipe`).

Spectrogram convention: unlike :mod:`sepcli.dsp.stft`, Demucs uses a
*normalized* STFT (``normalized=True``, i.e. scaled by ``1 / sqrt(n_fft)``), hop
``n_fft // 4``, the top bin dropped, and reflect padding that makes the frame
count ``ceil(time / hop)``; the module keeps that convention because the
weights were trained with it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.errors import ConfigError
from sepcli.models.archive.contract import set_contract
from sepcli.models.configs import _Config
from sepcli.models.nets.blocks import row_blocks

__all__ = [
    "HTDemucsConfig",
    "HTDemucs",
    "reference_config",
    "PUBLISHED_SAMPLE_RATE",
    "PUBLISHED_SEGMENT_SAMPLES",
]

#: Sample rate and training segment of every published HT-Demucs model
#: (``samplerate=44100``, ``segment=Fraction(39, 5)`` seconds in their kwargs).
PUBLISHED_SAMPLE_RATE = 44100
PUBLISHED_SEGMENT_SAMPLES = 343980


@dataclass(frozen=True)
class HTDemucsConfig(_Config):
    """Hyper-parameters of :class:`HTDemucs` (names as ``HTDemucs.__init__`` where kept).

    The defaults are the published ``htdemucs`` model (see :meth:`reference`).

    Attributes:
        sources: stem names in output order (published: drums, bass, other, vocals).
        sample_rate: Hz. audio_channels: 1 or 2.
        segment_samples: the training length in samples; ``forward`` pads shorter
            input to it (Demucs' ``int(segment * samplerate)``).
        channels: channels of the first spectrogram-branch layer, times ``growth``
            per layer. channels_time: same for the waveform branch (0 = ``channels``).
        growth: channel multiplier per layer.
        n_fft: STFT size (hop ``n_fft // 4``); the branch sees ``n_fft // 2`` bins.
        depth: encoder/decoder layers of each branch.
        rewrite: add the 1x1 (encoder) / 3x3 (decoder) GLU convolution to each layer.
        freq_emb: weight of the learnt frequency embedding added after the first
            spectrogram layer (0 = none). emb_scale, emb_smooth: its initialisation.
        kernel_size, stride: of the strided convolutions (both branches).
        context: half-width of the decoder's rewrite convolution.
        context_enc: half-width of the encoder's rewrite convolution.
        norm_starts: first layer index with GroupNorm(``norm_groups``) (4 = none
            at depth 4).
        dconv_mode: residual dilated-conv branch in encoders (1), decoders (2) or both (3).
        dconv_depth, dconv_comp, dconv_init: its depth, channel compression and
            LayerScale initial value.
        bottom_channels: width of the transformer (1x1 convs around it); 0 = the
            width of the last layer.
        t_layers: transformer layers per branch (alternating self- and
            cross-attention, self first unless ``t_cross_first``).
        t_hidden_scale: feed-forward width as a multiple of the transformer width.
        t_heads: attention heads. t_dropout: dropout (training only).
        t_norm_in, t_norm_in_group: LayerNorm / GroupNorm(1) on the transformer input.
        t_group_norm: GroupNorm(1) instead of LayerNorm inside the layers.
        t_norm_first: pre-norm layers. t_norm_out: a GroupNorm(1) after each pre-norm layer.
        t_max_period: of the sinusoidal positional embeddings.
        t_layer_scale: LayerScale (init 1e-4) on the residual branches.
        t_gelu: GELU (else ReLU) in the feed-forward blocks.
        t_weight_pos_embed: weight of the positional embeddings.
        t_cross_first: start with a cross-attention layer.
    """

    family: ClassVar[str] = "htdemucs"
    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    sample_rate: int = PUBLISHED_SAMPLE_RATE
    audio_channels: int = 2
    segment_samples: int = PUBLISHED_SEGMENT_SAMPLES
    channels: int = 48
    channels_time: int = 0
    growth: float = 2.0
    n_fft: int = 4096
    depth: int = 4
    rewrite: bool = True
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    emb_smooth: bool = True
    kernel_size: int = 8
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_mode: int = 3
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    dconv_init: float = 1e-3
    bottom_channels: int = 512
    t_layers: int = 5
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_dropout: float = 0.02
    t_norm_in: bool = True
    t_norm_in_group: bool = False
    t_group_norm: bool = False
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_cross_first: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        p = self._check_common()
        if self.segment_samples < 1:
            p.append("segment_samples must be >= 1")
        if self.channels < 1 or self.growth < 1:
            p.append("channels >= 1 and growth >= 1 are required")
        if self.channels_time not in (0, self.channels):
            # Demucs sizes the transformer for both branches from `channels` alone.
            p.append("channels_time must be 0 or equal to channels")
        if self.n_fft < 16 or self.n_fft % 4:
            p.append(f"n_fft must be a multiple of 4 and >= 16, got {self.n_fft}")
        if self.depth < 1:
            p.append("depth must be >= 1")
        if self.kernel_size < 4 or self.kernel_size % 4 or self.stride < 1:
            p.append("kernel_size must be a positive multiple of 4 and stride >= 1")
        if self.context < 0 or self.context_enc < 0:
            p.append("context and context_enc must be >= 0")
        if self.norm_starts < 0 or self.norm_groups < 1:
            p.append("norm_starts >= 0 and norm_groups >= 1 are required")
        if self.dconv_mode not in (0, 1, 2, 3) or self.dconv_depth < 1 or self.dconv_comp <= 0:
            p.append("dconv_mode must be 0-3, dconv_depth >= 1 and dconv_comp > 0")
        if self.bottom_channels < 0:
            p.append("bottom_channels must be >= 0")
        if self.t_layers < 1 or self.t_heads < 1 or self.t_hidden_scale <= 0:
            p.append("t_layers >= 1, t_heads >= 1 and t_hidden_scale > 0 are required")
        if not p:
            freqs = self.n_fft // 2
            for index in range(self.depth):
                if freqs <= self.kernel_size:
                    p.append(
                        f"the frequency axis collapses at layer {index} (n_fft {self.n_fft}, "
                        f"stride {self.stride}, depth {self.depth}): merged branches are not "
                        "supported"
                    )
                    break
                freqs //= self.stride
            width = self.transformer_channels
            if width % 4 or width % self.t_heads:
                p.append(
                    f"the transformer width {width} must be divisible by 4 and by t_heads "
                    f"{self.t_heads}"
                )
            last = self.layer_channels()[-1]
            if last != self.channels * self.growth ** (self.depth - 1):
                p.append("channels * growth ** (depth - 1) must be a whole number")
            if any(int(c / self.dconv_comp) < 1 for c in self.layer_channels()):
                p.append(f"dconv_comp {self.dconv_comp} leaves a DConv branch without channels")
            for width in self._normed_widths():
                if width % self.norm_groups:
                    p.append(f"norm_groups {self.norm_groups} does not divide width {width}")
                    break
        self._raise(p)

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def _normed_widths(self) -> list[int]:
        """Channel counts that get a GroupNorm(norm_groups) (layers >= norm_starts)."""
        chans = self.layer_channels()
        out: list[int] = []
        for index in range(self.norm_starts, self.depth):
            below = 2 * self.audio_channels * self.num_sources if index == 0 else chans[index - 1]
            out += [chans[index], 2 * chans[index], below, below // 2 if index == 0 else below]
        return out

    @property
    def hop_length(self) -> int:
        return self.n_fft // 4

    @property
    def segment_seconds(self) -> float:
        return self.segment_samples / self.sample_rate

    def layer_channels(self, time: bool = False) -> list[int]:
        """Output channels of each encoder layer of the spectrogram (or waveform) branch."""
        out = []
        c = (self.channels_time or self.channels) if time else self.channels
        for _ in range(self.depth):
            out.append(c)
            c = int(self.growth * c)
        return out

    @property
    def transformer_channels(self) -> int:
        """Width of the transformer: ``bottom_channels`` or the last layer's channels.

        Demucs computes the last width as ``channels * growth ** (depth - 1)``.
        """
        if self.bottom_channels:
            return self.bottom_channels
        return int(self.channels * self.growth ** (self.depth - 1))

    @classmethod
    def reference(cls, sources: tuple[str, ...] | None = None) -> HTDemucsConfig:
        """The published ``htdemucs`` size (also each ``htdemucs_ft`` member): 48
        channels, depth 4, n_fft 4096, a 512-wide 5-layer cross transformer
        (``bottom_channels=512``), DConv in encoders and decoders, 7.8-s segments;
        41,984,456 parameters with four sources."""
        base = cls()
        return base if sources is None else dataclasses.replace(base, sources=tuple(sources))

    @classmethod
    def published(cls, name: str) -> HTDemucsConfig:
        """The size of a published model: ``htdemucs``, ``htdemucs_ft`` (each member)
        or ``htdemucs_6s``.

        ``htdemucs_6s`` has six sources and no bottom projection: its transformer
        is 384 wide (27,414,996 parameters). That is read off its file size (54,996,327
        bytes of fp16 weights; the 512-wide layout would need 84 MB); the importer
        takes every size from the checkpoint's own kwargs anyway.
        """
        if name in ("htdemucs", "htdemucs_ft"):
            return cls.reference()
        if name == "htdemucs_6s":
            six = ("drums", "bass", "other", "vocals", "guitar", "piano")
            return dataclasses.replace(cls.reference(six), bottom_channels=0)
        raise ConfigError(f"unknown published HT-Demucs {name!r}")


def reference_config() -> HTDemucsConfig:
    """The published ``htdemucs`` size (the family table's reference; docs/models.md)."""
    return HTDemucsConfig.reference()


# -- building blocks -------------------------------------------------------------


class _LayerScale(nn.Module):
    """Per-channel learnt scale of a residual branch (Touvron et al. 2021).

    ``channel_last``: the input is ``(..., channel)``; else ``(batch, channel, time)``.
    """

    __constants__ = ["channel_last"]

    def __init__(self, channels: int, init: float, channel_last: bool) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x


class _DConv(nn.Module):
    """Residual branch of dilated 1-D convolutions, ``(N, C, T) -> (N, C, T)``.

    Layer ``d``: conv (kernel 3, dilation ``2 ** d``) to ``C / compress``
    channels, GroupNorm(1), GELU, 1x1 conv to ``2 C``, GroupNorm(1), GLU,
    LayerScale; added to the input.

    Every row ``n`` is independent (GroupNorm(1) normalises each row alone), so
    :meth:`forward` runs the rows in blocks (:func:`sepcli.models.nets.blocks.row_blocks`)
    of about 8 MB of their widest activation (``2 C x T`` floats): on the
    spectrogram branch the rows are frequency bins (512 x 2C x T is 66 MB for the
    published first layer), and blocks that stay in cache run about twice as
    fast. The 1x1 convolution is a batched matrix product and the LayerScale is folded into
    the second norm's affine (``scale * (w x + b)``); both are the reference's
    arithmetic up to float rounding.
    """

    def __init__(self, channels: int, compress: float, depth: int, init: float) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(depth):
            dilation = 2**d
            self.layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    _LayerScale(channels, init, False),
                )
            )

    def _block(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            y = F.gelu(layer[1](layer[0](x)))
            weight, bias = layer[3].weight[:, :, 0], layer[3].bias
            assert bias is not None
            y = torch.baddbmm(bias[None, :, None], weight.expand(y.shape[0], -1, -1), y)
            scale = layer[6].scale
            gain = torch.cat([scale, torch.ones_like(scale)])
            norm = layer[4]
            y = F.group_norm(y, 1, norm.weight * gain, norm.bias * gain, norm.eps)
            x = x + F.glu(y, 1)
        return x

    def forward(self, x: Tensor) -> Tensor:
        blocks = row_blocks(x.shape[0], 2 * x.shape[1] * x.shape[2])
        if len(blocks) == 1:
            return self._block(x)
        return torch.cat([self._block(x[a:e]) for a, e in blocks])

    def forward_freq(self, y: Tensor) -> Tensor:
        """The branch on every frequency row of ``y (B, C, F, T)``, along time.

        Takes blocks of rows straight from ``y`` and writes them back in place
        of a transposed copy of the whole tensor.
        """
        b, c, fr, t = y.shape
        out = torch.empty_like(y)
        for a, e in row_blocks(fr, 2 * c * t * b):
            part = y[:, :, a:e].permute(0, 2, 1, 3).reshape(-1, c, t)
            out[:, :, a:e] = self._block(part).view(b, e - a, c, t).permute(0, 2, 1, 3)
        return out


def _norm(enabled: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


class _FreqEncoder(nn.Module):
    """Spectrogram-branch encoder layer, ``(B, Cin, F, T) -> (B, Cout, F / stride, T)``.

    Strided conv along frequency (kernel ``(k, 1)``, padding ``k / 4``), norm,
    GELU, optional DConv (per frequency row, along time), optional rewrite
    conv + norm + GLU.

    Without norms and with a 1x1 rewrite (every published model's layers), no
    step looks further along frequency than the strided conv's kernel, so the
    layer runs in blocks of output bins (:func:`sepcli.models.nets.blocks.row_blocks`),
    each from its own slice of the input: the first layer's activations (66 MB at the
    published size) never exist whole, which is faster (cache) and lighter.
    """

    __constants__ = ["blocked", "stride", "kernel", "pad"]

    def __init__(self, chin: int, chout: int, cfg: HTDemucsConfig, norm: bool, dconv: bool) -> None:
        super().__init__()
        k, s = cfg.kernel_size, cfg.stride
        self.stride, self.kernel, self.pad = s, k, k // 4
        self.conv = nn.Conv2d(chin, chout, (k, 1), (s, 1), (k // 4, 0))
        self.norm1 = _norm(norm, cfg.norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if cfg.rewrite:
            c = cfg.context_enc
            self.rewrite = nn.Conv2d(chout, 2 * chout, 1 + 2 * c, 1, c)
            self.norm2 = _norm(norm, cfg.norm_groups, 2 * chout)
        self.dconv: _DConv | None = None
        if dconv:
            self.dconv = _DConv(chout, cfg.dconv_comp, cfg.dconv_depth, cfg.dconv_init)
        self.blocked = not norm and (not cfg.rewrite or cfg.context_enc == 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.blocked:
            return self._forward_blocked(x)
        y = F.gelu(self.norm1(self.conv(x)))
        if self.dconv is not None:
            y = self.dconv.forward_freq(y)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y

    def _forward_blocked(self, x: Tensor) -> Tensor:
        b, _, fin, t = x.shape
        fout = (fin + 2 * self.pad - self.kernel) // self.stride + 1
        chout = self.conv.weight.shape[0]
        out = x.new_empty(b, chout, fout, t)
        for a, e in row_blocks(fout, 2 * chout * t * b):
            lo = a * self.stride - self.pad
            hi = (e - 1) * self.stride - self.pad + self.kernel
            part = _rows_zero_padded(x, lo, hi)
            y = F.gelu(F.conv2d(part, self.conv.weight, self.conv.bias, (self.stride, 1)))
            if self.dconv is not None:
                y = self.dconv.forward_freq(y)
            if self.rewrite is not None:
                y = F.glu(self.rewrite(y), dim=1)
            out[:, :, a:e] = y
        return out


class _TimeEncoder(nn.Module):
    """Waveform-branch encoder layer, ``(B, Cin, T) -> (B, Cout, ceil(T / stride))``.

    The input is zero-padded at the end to a multiple of ``stride``.
    """

    __constants__ = ["stride"]

    def __init__(self, chin: int, chout: int, cfg: HTDemucsConfig, norm: bool, dconv: bool) -> None:
        super().__init__()
        k, s = cfg.kernel_size, cfg.stride
        self.stride = s
        self.conv = nn.Conv1d(chin, chout, k, s, k // 4)
        self.norm1 = _norm(norm, cfg.norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if cfg.rewrite:
            c = cfg.context_enc
            self.rewrite = nn.Conv1d(chout, 2 * chout, 1 + 2 * c, 1, c)
            self.norm2 = _norm(norm, cfg.norm_groups, 2 * chout)
        self.dconv: _DConv | None = None
        if dconv:
            self.dconv = _DConv(chout, cfg.dconv_comp, cfg.dconv_depth, cfg.dconv_init)

    def forward(self, x: Tensor) -> Tensor:
        rest = x.shape[-1] % self.stride
        if rest:
            x = F.pad(x, (0, self.stride - rest))
        y = F.gelu(self.norm1(self.conv(x)))
        if self.dconv is not None:
            y = self.dconv(y)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class _FreqDecoder(nn.Module):
    """Spectrogram-branch decoder layer, ``(B, Cin, F, T) -> (B, Cout, F * stride, T)``.

    Adds the skip, optional rewrite conv (3x3 for ``context=1``) + norm + GLU,
    optional DConv, transposed conv along frequency, norm, crop ``k / 4`` bins on
    each side, GELU unless it is the last layer.

    Without norms it runs in blocks of input bins like :class:`_FreqEncoder`:
    each block takes ``context`` bins either side for the rewrite conv and adds
    its transposed conv (bias once, at the end) into the output, whose blocks
    overlap by ``k - stride`` bins.
    """

    __constants__ = ["last", "pad", "blocked", "stride", "context"]

    def __init__(
        self, chin: int, chout: int, cfg: HTDemucsConfig, norm: bool, dconv: bool, last: bool
    ) -> None:
        super().__init__()
        k, s = cfg.kernel_size, cfg.stride
        self.last = last
        self.pad = k // 4
        self.stride = s
        self.context = cfg.context if cfg.rewrite else 0
        self.conv_tr = nn.ConvTranspose2d(chin, chout, (k, 1), (s, 1))
        self.norm2 = _norm(norm, cfg.norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if cfg.rewrite:
            c = cfg.context
            self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * c, 1, c)
            self.norm1 = _norm(norm, cfg.norm_groups, 2 * chin)
        self.dconv: _DConv | None = None
        if dconv:
            self.dconv = _DConv(chin, cfg.dconv_comp, cfg.dconv_depth, cfg.dconv_init)
        self.blocked = not norm

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if self.blocked:
            return self._forward_blocked(x, skip)
        y = x + skip
        if self.rewrite is not None:
            y = F.glu(self.norm1(self.rewrite(y)), dim=1)
        if self.dconv is not None:
            y = self.dconv.forward_freq(y)
        z = self.norm2(self.conv_tr(y))
        z = z[:, :, self.pad : z.shape[2] - self.pad, :]
        if not self.last:
            z = F.gelu(z)
        return z

    def _forward_blocked(self, x: Tensor, skip: Tensor) -> Tensor:
        b, cin, fin, t = x.shape
        weight = self.conv_tr.weight
        k, s, c = weight.shape[2], self.stride, self.context
        full = (fin - 1) * s + k
        acc = x.new_zeros(b, weight.shape[1], full, t)
        for a, e in row_blocks(fin, 2 * cin * t * b):
            y = _rows_zero_padded(x, a - c, e + c) + _rows_zero_padded(skip, a - c, e + c)
            rewrite = self.rewrite
            if rewrite is not None:
                y = F.glu(F.conv2d(y, rewrite.weight, rewrite.bias, 1, (0, c)), dim=1)
            if self.dconv is not None:
                y = self.dconv.forward_freq(y)
            acc[:, :, a * s : (e - 1) * s + k] += F.conv_transpose2d(y, weight, None, (s, 1))
        bias = self.conv_tr.bias
        if bias is not None:
            acc += bias[:, None, None]
        z = acc[:, :, self.pad : full - self.pad, :]
        if not self.last:
            z = F.gelu(z)
        return z


def _rows_zero_padded(x: Tensor, lo: int, hi: int) -> Tensor:
    """Rows ``lo:hi`` of axis 2 of ``x``, with zeros for rows outside it."""
    n = x.shape[2]
    part = x[:, :, max(lo, 0) : min(hi, n)]
    if lo < 0 or hi > n:
        part = F.pad(part, (0, 0, max(-lo, 0), max(hi - n, 0)))
    return part


class _TimeDecoder(nn.Module):
    """Waveform-branch decoder layer, ``(B, Cin, T) -> (B, Cout, length)``.

    Like :class:`_FreqDecoder` along time; the output is cropped to ``length``
    samples after dropping ``k / 4`` at the start.
    """

    __constants__ = ["last", "pad"]

    def __init__(
        self, chin: int, chout: int, cfg: HTDemucsConfig, norm: bool, dconv: bool, last: bool
    ) -> None:
        super().__init__()
        k, s = cfg.kernel_size, cfg.stride
        self.last = last
        self.pad = k // 4
        self.conv_tr = nn.ConvTranspose1d(chin, chout, k, s)
        self.norm2 = _norm(norm, cfg.norm_groups, chout)
        self.rewrite: nn.Module | None = None
        if cfg.rewrite:
            c = cfg.context
            self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * c, 1, c)
            self.norm1 = _norm(norm, cfg.norm_groups, 2 * chin)
        self.dconv: _DConv | None = None
        if dconv:
            self.dconv = _DConv(chin, cfg.dconv_comp, cfg.dconv_depth, cfg.dconv_init)

    def forward(self, x: Tensor, skip: Tensor, length: int) -> Tensor:
        y = x + skip
        if self.rewrite is not None:
            y = F.glu(self.norm1(self.rewrite(y)), dim=1)
        if self.dconv is not None:
            y = self.dconv(y)
        z = self.norm2(self.conv_tr(y))
        z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z


class _ScaledEmbedding(nn.Module):
    """Embedding whose output is multiplied by ``scale`` (a learning-rate boost)."""

    __constants__ = ["scale"]

    def __init__(self, num: int, dim: int, scale: float, smooth: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        if smooth:  # Demucs' initialisation: a running mean of Gaussians along frequency
            with torch.no_grad():
                w = torch.cumsum(self.embedding.weight, dim=0)
                w = w / torch.arange(1, num + 1).to(w).sqrt()[:, None]
                self.embedding.weight.copy_(w)
        with torch.no_grad():
            self.embedding.weight.div_(scale)
        self.scale = float(scale)

    def forward(self, index: Tensor) -> Tensor:
        return self.embedding(index) * self.scale


class _ChannelGroupNorm(nn.GroupNorm):
    """GroupNorm over a ``(batch, time, channel)`` tensor (channels last).

    With one group it normalises each batch item over all its time steps and channels.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.num_groups == 1 and self.weight is not None and self.bias is not None:
            # one group: normalise over (time, channel) in place, no transposed copies
            y = F.layer_norm(x, x.shape[1:], eps=self.eps)
            return torch.addcmul(self.bias, y, self.weight)
        y = F.group_norm(x.transpose(1, 2), self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2)


def _inner_norm(group: bool, dim: int) -> nn.Module:
    return _ChannelGroupNorm(1, dim) if group else nn.LayerNorm(dim)


class _AttentionLayer(nn.Module):
    """One transformer layer on ``(batch, tokens, dim)``: attention, then feed-forward.

    ``cross=False``: self-attention (``self_attn``, keys as
    ``torch.nn.TransformerEncoderLayer``); ``forward(x, other)`` ignores ``other``.
    ``cross=True``: ``x`` attends to ``other`` (``cross_attn``; norms ``norm1`` for
    the queries, ``norm2`` for the keys/values, ``norm3`` before the feed-forward).
    """

    __constants__ = ["cross", "norm_first", "gelu", "layer_scale"]

    def __init__(self, dim: int, cfg: HTDemucsConfig, cross: bool) -> None:
        super().__init__()
        heads, hidden = cfg.t_heads, int(dim * cfg.t_hidden_scale)
        self.cross = cross
        self.norm_first = cfg.t_norm_first
        self.gelu = cfg.t_gelu
        attention = nn.MultiheadAttention(dim, heads, dropout=cfg.t_dropout, batch_first=True)
        self.attn_dropout = float(cfg.t_dropout)
        if cross:
            self.cross_attn = attention
        else:
            self.self_attn = attention
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(cfg.t_dropout)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _inner_norm(cfg.t_group_norm, dim)
        self.norm2 = _inner_norm(cfg.t_group_norm, dim)
        if cross:
            self.norm3 = _inner_norm(cfg.t_group_norm, dim)
        self.dropout1 = nn.Dropout(cfg.t_dropout)
        self.dropout2 = nn.Dropout(cfg.t_dropout)
        self.norm_out: nn.Module | None = None
        if cfg.t_norm_first and cfg.t_norm_out:
            self.norm_out = _ChannelGroupNorm(1, dim)
        self.layer_scale = bool(cfg.t_layer_scale)
        self.gamma_1: nn.Module = nn.Identity()
        self.gamma_2: nn.Module = nn.Identity()
        if cfg.t_layer_scale:
            self.gamma_1 = _LayerScale(dim, 1e-4, True)
            self.gamma_2 = _LayerScale(dim, 1e-4, True)

    def _attend(self, q: Tensor, kv: Tensor) -> Tensor:
        """Multi-head attention of ``q (B, N, D)`` over ``kv (B, M, D)`` -> ``(B, N, D)``.

        The arithmetic of ``nn.MultiheadAttention`` (packed input projection, scaled
        dot product, output projection), written out so that cross-attention also
        runs through ``F.scaled_dot_product_attention``: on CPU its fused kernel
        is several times faster than the module's explicit path, which
        ``nn.MultiheadAttention`` takes whenever queries and keys differ.
        """
        if self.cross:
            weight, bias = self.cross_attn.in_proj_weight, self.cross_attn.in_proj_bias
            out_proj, heads = self.cross_attn.out_proj, self.cross_attn.num_heads
        else:
            weight, bias = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
            out_proj, heads = self.self_attn.out_proj, self.self_attn.num_heads
            kv = q
        b, n, d = q.shape
        m = kv.shape[1]
        if self.cross:
            query = F.linear(q, weight[:d], bias[:d])
            key, value = F.linear(kv, weight[d:], bias[d:]).chunk(2, dim=-1)
        else:
            query, key, value = F.linear(q, weight, bias).chunk(3, dim=-1)
        query = query.reshape(b, n, heads, d // heads).transpose(1, 2)
        key = key.reshape(b, m, heads, d // heads).transpose(1, 2)
        value = value.reshape(b, m, heads, d // heads).transpose(1, 2)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=p)
        out = F.linear(out.transpose(1, 2).reshape(b, n, d), out_proj.weight, out_proj.bias)
        return self.dropout1(out)

    def _feed_forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        h = F.gelu(h) if self.gelu else F.relu(h)
        return self.dropout2(self.linear2(self.dropout(h)))

    def _residual(self, x: Tensor, y: Tensor, first: bool) -> Tensor:
        """``x + gamma(y)``; with LayerScale one fused multiply-add."""
        if self.layer_scale:
            gamma = self.gamma_1 if first else self.gamma_2
            return torch.addcmul(x, gamma.scale, y)
        return x + y

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        """Args: x ``(B, N, D)``; other ``(B, M, D)`` (cross layers). Returns ``(B, N, D)``."""
        if self.norm_first:
            if self.cross:
                x = self._residual(x, self._attend(self.norm1(x), self.norm2(other)), True)
                x = self._residual(x, self._feed_forward(self.norm3(x)), False)
            else:
                x = self._residual(x, self._attend(self.norm1(x), x), True)
                x = self._residual(x, self._feed_forward(self.norm2(x)), False)
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(x + self.gamma_1(self._attend(x, other)))
            x = self.norm2(x + self.gamma_2(self._feed_forward(x)))
        return x


def sin_embedding(length: int, dim: int, max_period: float, device: torch.device) -> Tensor:
    """1-D sinusoidal positions ``(1, length, dim)``: ``[cos(p w_i), sin(p w_i)]``,
    ``w_i = max_period ** (-i / (dim / 2 - 1))`` (Demucs' ``create_sin_embedding``)."""
    half = dim // 2
    pos = torch.arange(length, device=device).view(-1, 1)
    adim = torch.arange(half, device=device).view(1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)[None]


def sin_embedding_2d(
    dim: int, height: int, width: int, max_period: float, device: torch.device
) -> Tensor:
    """2-D sinusoidal positions ``(1, width * height, dim)`` in the token order
    ``t * height + f`` (Demucs' ``create_2d_sin_embedding``, flattened): the first
    half of the channels encodes the time index, the second half the frequency index."""
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half))
    pos_w = torch.arange(0.0, width, device=device)[:, None] * div  # (width, half / 2)
    pos_h = torch.arange(0.0, height, device=device)[:, None] * div  # (height, half / 2)
    pe = torch.zeros(width, height, dim, device=device)
    pe[:, :, 0:half:2] = torch.sin(pos_w)[:, None, :].expand(width, height, -1)
    pe[:, :, 1:half:2] = torch.cos(pos_w)[:, None, :].expand(width, height, -1)
    pe[:, :, half::2] = torch.sin(pos_h)[None, :, :].expand(width, height, -1)
    pe[:, :, half + 1 :: 2] = torch.cos(pos_h)[None, :, :].expand(width, height, -1)
    return pe.reshape(1, width * height, dim)


class _CrossTransformer(nn.Module):
    """Cross-domain transformer: ``(B, D, F, T1), (B, D, T2) -> same shapes``.

    Spectrogram tokens (time-major ``T1 * F``) and waveform tokens ``T2`` get
    sinusoidal positions (2-D and 1-D), then ``t_layers`` layer pairs alternate
    self-attention within each branch and cross-attention between them.
    """

    __constants__ = ["max_period", "weight_pos_embed"]

    def __init__(self, dim: int, cfg: HTDemucsConfig) -> None:
        super().__init__()
        self.max_period = float(cfg.t_max_period)
        self.weight_pos_embed = float(cfg.t_weight_pos_embed)
        if cfg.t_norm_in:
            self.norm_in: nn.Module = nn.LayerNorm(dim)
            self.norm_in_t: nn.Module = nn.LayerNorm(dim)
        elif cfg.t_norm_in_group:
            self.norm_in = _ChannelGroupNorm(1, dim)
            self.norm_in_t = _ChannelGroupNorm(1, dim)
        else:
            self.norm_in = nn.Identity()
            self.norm_in_t = nn.Identity()
        parity = 1 if cfg.t_cross_first else 0
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for idx in range(cfg.t_layers):
            cross = idx % 2 != parity
            self.layers.append(_AttentionLayer(dim, cfg, cross))
            self.layers_t.append(_AttentionLayer(dim, cfg, cross))

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, c, fr, t1 = x.shape
        x = x.permute(0, 3, 2, 1).reshape(b, t1 * fr, c)
        x = self.norm_in(x)
        x = x + self.weight_pos_embed * sin_embedding_2d(c, fr, t1, self.max_period, x.device)
        t2 = xt.shape[-1]
        xt = self.norm_in_t(xt.transpose(1, 2))
        xt = xt + self.weight_pos_embed * sin_embedding(t2, c, self.max_period, xt.device)
        for layer, layer_t in zip(self.layers, self.layers_t):  # noqa: B905 (TorchScript has no strict=)
            x_in = x
            x = layer(x, xt)
            xt = layer_t(xt, x_in)
        x = x.reshape(b, t1, fr, c).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)


# -- the model -------------------------------------------------------------------


class HTDemucs(nn.Module):
    """HT-Demucs; archive output ``"waveform"``: ``forward(mix (B, C, T)) -> (B, S, C, T)``.

    ``T`` must be at most ``segment_samples``; shorter input is zero-padded at
    the end (and the output cropped), as ``demucs.htdemucs.HTDemucs`` does in
    eval mode. Attribute and submodule names follow the reference so that its
    state dicts load unchanged.
    """

    __constants__ = [
        "segment_samples",
        "n_fft",
        "hop_length",
        "num_sources",
        "audio_channels",
        "freq_emb_scale",
        "has_bottom",
    ]

    def __init__(self, config: HTDemucsConfig) -> None:
        super().__init__()
        set_contract(self, config)
        self.segment_samples = int(config.segment_samples)
        self.n_fft = int(config.n_fft)
        self.hop_length = config.hop_length
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        chin, chin_z = config.audio_channels, 2 * config.audio_channels
        chans, chans_t = config.layer_channels(), config.layer_channels(time=True)
        freqs = config.n_fft // 2
        self.freq_emb: nn.Module | None = None
        self.freq_emb_scale = float(config.freq_emb)
        for index in range(config.depth):
            norm = index >= config.norm_starts
            chout_z, chout = chans[index], chans_t[index]
            enc_dconv, dec_dconv = bool(config.dconv_mode & 1), bool(config.dconv_mode & 2)
            self.encoder.append(_FreqEncoder(chin_z, chout_z, config, norm, enc_dconv))
            self.tencoder.append(_TimeEncoder(chin, chout, config, norm, enc_dconv))
            if index == 0:
                chin = config.audio_channels * config.num_sources
                chin_z = 2 * chin
            last = index == 0
            self.decoder.insert(0, _FreqDecoder(chout_z, chin_z, config, norm, dec_dconv, last))
            self.tdecoder.insert(0, _TimeDecoder(chout, chin, config, norm, dec_dconv, last))
            chin, chin_z = chout, chout_z
            freqs //= config.stride
            if index == 0 and config.freq_emb:
                self.freq_emb = _ScaledEmbedding(
                    freqs, chout_z, config.emb_scale, config.emb_smooth
                )
        width = chans[-1]
        self.has_bottom = config.bottom_channels > 0
        if self.has_bottom:
            bottom = config.bottom_channels
            self.channel_upsampler = nn.Conv1d(width, bottom, 1)
            self.channel_downsampler = nn.Conv1d(bottom, width, 1)
            self.channel_upsampler_t = nn.Conv1d(chans_t[-1], bottom, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom, chans_t[-1], 1)
        self.crosstransformer = _CrossTransformer(config.transformer_channels, config)

    # -- spectrogram ---------------------------------------------------------
    def _spec(self, mix: Tensor) -> Tensor:
        """``(B, C, T) -> (B, C, n_fft / 2, ceil(T / hop))`` complex, Demucs' framing."""
        hop = self.hop_length
        length = mix.shape[-1]
        frames = (length + hop - 1) // hop
        pad = hop // 2 * 3
        x = _reflect_pad(mix, pad, pad + frames * hop - length)
        b, c, n = x.shape
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        z = torch.stft(
            x.reshape(b * c, n), self.n_fft, hop, self.n_fft, window,
            center=True, pad_mode="reflect", normalized=True, onesided=True, return_complex=True,
        )  # fmt: skip
        z = z.view(b, c, z.shape[-2], z.shape[-1])
        return z[:, :, :-1, 2 : 2 + frames]

    def _ispec(self, z: Tensor, length: int) -> Tensor:
        """Inverse of :meth:`_spec`: ``(..., n_fft / 2, frames)`` complex -> ``(..., length)``."""
        hop = self.hop_length
        z = F.pad(z, (2, 2, 0, 1))
        pad = hop // 2 * 3
        total = hop * ((length + hop - 1) // hop) + 2 * pad
        shape = z.shape
        window = torch.hann_window(self.n_fft, device=z.device, dtype=z.real.dtype)
        x = torch.istft(
            z.reshape(-1, shape[-2], shape[-1]), self.n_fft, hop, self.n_fft, window,
            center=True, normalized=True, length=total,
        )  # fmt: skip
        x = x.view(shape[:-2] + (total,))
        return x[..., pad : pad + length]

    # -- forward -------------------------------------------------------------
    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix (B, C, T)``, ``T <= segment_samples``, into ``(B, S, C, T)``."""
        length = mix.shape[-1]
        seg = self.segment_samples
        if length > seg:
            raise ValueError(
                f"HT-Demucs takes at most {seg} samples per call (its training segment), got "
                f"{length}; use the Demucs chunking recipe for longer input"
            )
        if length < seg:
            mix = F.pad(mix, (0, seg - length))
        b = mix.shape[0]
        z = self._spec(mix)
        zb, zc, fq, frames = z.shape
        x = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(zb, zc * 2, fq, frames)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)

        saved: list[Tensor] = []
        saved_t: list[Tensor] = []
        lengths_t: list[int] = []
        for idx, (encode, tencode) in enumerate(zip(self.encoder, self.tencoder)):  # noqa: B905
            lengths_t.append(xt.shape[-1])
            xt = tencode(xt)
            saved_t.append(xt)
            x = encode(x)
            if idx == 0 and self.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                e = self.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + self.freq_emb_scale * e
            saved.append(x)

        if self.has_bottom:
            bb, c, f, t = x.shape
            x = self.channel_upsampler(x.reshape(bb, c, f * t)).view(bb, -1, f, t)
            xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            x = self.channel_downsampler(x.reshape(bb, -1, f * t)).view(bb, c, f, t)
            xt = self.channel_downsampler_t(xt)
        else:
            x, xt = self.crosstransformer(x, xt)

        depth = len(saved)
        for idx, (decode, tdecode) in enumerate(zip(self.decoder, self.tdecoder)):  # noqa: B905
            x = decode(x, saved[depth - 1 - idx])
            xt = tdecode(xt, saved_t[depth - 1 - idx], lengths_t[depth - 1 - idx])

        s = self.num_sources
        x = x.view(b, s, -1, fq, frames)
        x = x * std[:, None] + mean[:, None]
        # complex as channels: (re, im) pairs per audio channel
        x = x.view(b, s, -1, 2, fq, frames).permute(0, 1, 2, 4, 5, 3)
        wave = self._ispec(torch.view_as_complex(x.contiguous()), seg)
        xt = xt.view(b, s, -1, seg) * stdt[:, None] + meant[:, None]
        out = xt + wave
        return out[..., :length]

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """Recommended (segment, context) in seconds: the training segment, no context.

        Demucs' chunking (:mod:`sepcli.inference.demucs_recipe`) runs the model on
        exactly ``segment_samples`` at a time and blends chunks with triangle weights.
        """
        return self.segment_samples / self.sample_rate, 0.0

    @torch.jit.unused
    def archive_overlap(self) -> float:
        """Demucs' default overlap of consecutive chunks (``apply_model(overlap=0.25)``)."""
        return 0.25


def _reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Reflect-pad the last axis; an input too short to reflect gets zeros first
    (on the right, then the left), as Demucs' ``pad1d`` does."""
    length = x.shape[-1]
    biggest = max(left, right)
    if length <= biggest:
        extra = biggest - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode="reflect")
