"""Layers shared by the band-split RoFormers (BS-RoFormer and Mel-Band RoFormer).

Lu, Wang, Kong, Hung, "Music Source Separation with Band-Split RoPE Transformer",
ICASSP 2024 (arXiv:2309.02612); Wang, Lu, Kong, Hung, "Mel-Band RoFormer for
Music Source Separation", 2023 (arXiv:2310.01809).

Both models take the complex STFT of the mixture, cut its bins into bands, project
each band to ``dim`` features (:class:`BandSplit`), alternate transformers along
time and along bands (rotary position embeddings, gated multi-head attention),
and estimate one complex mask per band and stem (:class:`MaskEstimator`).

Layer names and arithmetic follow the implementation that UVR and
``audio-separator`` 0.47.1 run the published checkpoints with
(``audio_separator/separator/uvr_lib_v5/roformer/``), so those state dicts load
with ``strict=True``. Two structural choices make the modules scriptable while
keeping the same keys: a transformer layer is an ``nn.Sequential`` of an
attention and a feed-forward block that each add their own residual, and a
:class:`Transformer` reshapes its ``(batch, frame, band, dim)`` input to the axis
it attends over itself.

Without autograd (inference), :class:`Attention` and :class:`FeedForward` run in
blocks of whole sequences that stay in cache
(:func:`sepcli.models.nets.blocks.row_blocks`), with the norm folded into the
projections that read it: the same arithmetic up to float rounding, about 1.2x
faster on a CPU. Training and autograd take the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepcli.dsp.stft import istft, stft
from sepcli.models.archive.contract import PublishedChunks, set_contract
from sepcli.models.configs import _Config
from sepcli.models.nets.blocks import row_blocks

__all__ = [
    "RoformerConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "Attention",
    "LinearAttention",
    "FeedForward",
    "Transformer",
    "BandSplit",
    "MaskEstimator",
    "Roformer",
    "mel_band_layout",
    "TIME",
    "BAND",
    "ALL",
]

#: Axes a :class:`Transformer` attends over.
TIME = 0
BAND = 1
ALL = 2


@dataclass(frozen=True)
class RoformerConfig(_Config):
    """Settings shared by the two RoFormer families (names as in the MSST YAML ``model:``).

    Attributes:
        sources: stem names, one mask estimator each (``num_stems``), in output order.
        sample_rate: Hz. audio_channels: 1, or 2 (``stereo: true``).
        dim: feature width of every band token.
        depth: axial blocks (a time transformer then a band transformer each).
        time_transformer_depth, freq_transformer_depth: layers per transformer.
        dim_head, heads: attention head width and count.
        attn_dropout, ff_dropout: training only.
        stft_n_fft, stft_hop_length, stft_win_length: STFT in samples (Hann window,
            centred, reflect padding, ``torch.stft`` conventions).
        stft_normalized: ``torch.stft(normalized=...)``.
        mask_estimator_depth: Linear layers of each band's mask MLP (see the family).
        mlp_expansion_factor: hidden width of the mask MLP, in multiples of ``dim``.
        dim_t: frames of one inference chunk (MSST/UVR ``inference.dim_t``); the
            chunk is ``stft_hop_length * (dim_t - 1)`` samples.
        num_overlap: chunks covering each sample (``inference.num_overlap``); the
            chunk step is ``chunk_samples // num_overlap``.
    """

    family: ClassVar[str] = ""
    sources: tuple[str, ...] = ("vocals",)
    sample_rate: int = 44100
    audio_channels: int = 2
    dim: int = 512
    depth: int = 12
    time_transformer_depth: int = 1
    freq_transformer_depth: int = 1
    dim_head: int = 64
    heads: int = 8
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    stft_n_fft: int = 2048
    stft_hop_length: int = 441
    stft_win_length: int = 2048
    stft_normalized: bool = False
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    dim_t: int = 801
    num_overlap: int = 4

    def _check_roformer(self) -> list[str]:
        object.__setattr__(self, "sources", tuple(self.sources))
        p = self._check_common()
        for name in ("dim", "depth", "dim_head", "heads", "mlp_expansion_factor"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1")
        if self.time_transformer_depth < 1 or self.freq_transformer_depth < 1:
            p.append("time_transformer_depth and freq_transformer_depth must be >= 1")
        if self.dim_head % 2:
            p.append("dim_head must be even (rotary embeddings rotate pairs)")
        if not 0 < self.stft_win_length <= self.stft_n_fft:
            p.append(f"stft_win_length must be in [1, stft_n_fft={self.stft_n_fft}]")
        if not 0 < self.stft_hop_length <= self.stft_win_length:
            p.append("stft_hop_length must be in [1, stft_win_length]")
        if not (0.0 <= self.attn_dropout < 1.0 and 0.0 <= self.ff_dropout < 1.0):
            p.append("attn_dropout and ff_dropout must be in [0, 1)")
        if self.dim_t < 2:
            p.append("dim_t must be >= 2 (the chunk is stft_hop_length * (dim_t - 1) samples)")
        if not 1 <= self.num_overlap <= self.chunk_samples:
            p.append("num_overlap must be in [1, chunk samples]")
        return p

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def num_freqs(self) -> int:
        """STFT bins, ``stft_n_fft // 2 + 1``."""
        return self.stft_n_fft // 2 + 1

    @property
    def chunk_samples(self) -> int:
        """Samples of one inference chunk, ``stft_hop_length * (dim_t - 1)``."""
        return self.stft_hop_length * (self.dim_t - 1)


class RMSNorm(nn.Module):
    """``x / ||x|| * sqrt(dim) * gamma`` over the last axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # ``x / ||x|| * sqrt(dim)`` is ``x * rsqrt(mean(x^2))``: one fused pass
        # instead of four. ``F.normalize`` divides by ``max(||x||, 1e-12)``; the
        # ``eps`` below gives the same for every row above that floor and 0 for a
        # zero row.
        d = x.shape[-1]
        return F.rms_norm(x, [d], self.gamma.to(x.dtype), 1e-24 / d)

    @torch.jit.export  # compiled even where the first RMSNorm scripted never calls it
    def fold_into(self, weight: Tensor) -> Tensor:
        """``weight`` of a Linear that reads this norm's output, with the norm's
        ``sqrt(dim) * gamma`` folded in: ``F.linear(F.normalize(x, dim=-1),
        fold_into(w))`` is ``F.linear(self(x), w)`` up to float rounding."""
        return weight * (self.gamma * weight.shape[-1] ** 0.5)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., arXiv:2104.09864) over the sequence axis.

    ``freqs`` (``dim // 2`` angular frequencies, ``10000 ** (-2i / dim)``) is a
    buffer saved under the key ``rotary_embed.freqs`` like the reference's
    non-learned parameter, so checkpoints load with ``strict=True``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)

    def turn(self, seq: int, device: torch.device) -> Tensor:
        """The unit complex numbers ``(seq, dim // 2)`` that turn each pair at each position."""
        positions = torch.arange(seq, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.freqs.float()[None, :]
        return torch.polar(torch.ones_like(angles), angles)

    def forward(self, t: Tensor) -> Tensor:
        """Rotate ``t`` ``(batch, heads, seq, dim)`` by position along ``seq``.

        Each adjacent pair ``(x1, x2)`` of the last axis turns by the angle of
        its position and frequency, ``(x1 cos - x2 sin, x2 cos + x1 sin)``: one
        complex product per pair (the reference's ``t * cos + rotate_half(t) *
        sin`` in a single pass).
        """
        turn = self.turn(t.shape[-2], t.device)
        pairs = torch.view_as_complex(t.float().reshape(t.shape[:-1] + (t.shape[-1] // 2, 2)))
        return torch.view_as_real(pairs * turn).reshape(t.shape).to(t.dtype)


class Attention(nn.Module):
    """Pre-norm gated multi-head self-attention with rotary embeddings, plus residual.

    ``(batch, seq, dim) -> (batch, seq, dim)``: ``x + to_out(gate * attend(q, k, v))``
    with a sigmoid gate per head and token (``to_gates``).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = float(dropout)
        dim_inner = heads * dim_head
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, dim_inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(dim_inner, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled():
            return self._forward_autograd(x)
        return self._forward_blocked(x)

    def _forward_autograd(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        h = self.norm(x)
        qkv = self.to_qkv(h).reshape(batch, seq, 3, self.heads, self.dim_head)
        out = self._attend(qkv.permute(2, 0, 3, 1, 4))
        gates = self.to_gates(h).transpose(1, 2).unsqueeze(-1).sigmoid()
        out = (out * gates).transpose(1, 2).reshape(batch, seq, self.heads * self.dim_head)
        return self.to_out(out) + x

    def _attend(self, qkv: Tensor, rotated: bool = False) -> Tensor:
        """Rotary ``q``, ``k`` (unless ``rotated``) and attention:
        ``(3, batch, heads, seq, dim_head)`` -> ``(batch, heads, seq, dim_head)``."""
        q, k = qkv[0], qkv[1]
        if not rotated:
            q, k = self.rotary_embed(q), self.rotary_embed(k)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, qkv[2], dropout_p=p)

    def _forward_blocked(self, x: Tensor) -> Tensor:
        """Inference: the reference's arithmetic, up to float rounding, in blocks of
        whole sequences (:func:`sepcli.models.nets.blocks.row_blocks`) whose
        element-wise steps run in cache.

        The norm's ``sqrt(dim) * gamma`` is folded into the two projections that
        read it; each block's ``q`` and ``k`` are turned in place while in cache
        (float32; under autocast the rotary runs at attention time); the gating,
        output projection and residual add write straight into the result.
        """
        batch, seq, dim = x.shape
        inner = self.heads * self.dim_head
        w_qkv = self.norm.fold_into(self.to_qkv.weight)
        w_gates = self.norm.fold_into(self.to_gates.weight)
        turn = self.rotary_embed.turn(seq, x.device)[:, None, None, :]
        qkv = torch.empty(0)
        gates = torch.empty(0)
        rotated = True
        for a, e in row_blocks(batch, seq * 3 * inner):
            h = F.normalize(x[a:e], dim=-1)
            part = F.linear(h, w_qkv).reshape(e - a, seq, 3, self.heads, self.dim_head)
            gate = F.linear(h, w_gates, self.to_gates.bias).sigmoid()
            if part.dtype == torch.float32:
                qk = part[:, :, :2].view(e - a, seq, 2, self.heads, self.dim_head // 2, 2)
                torch.view_as_complex(qk).mul_(turn)
            else:
                rotated = False
            if a == 0:
                qkv = x.new_empty([batch, seq, 3, self.heads, self.dim_head], dtype=part.dtype)
                gates = x.new_empty([batch, seq, self.heads], dtype=gate.dtype)
            qkv[a:e] = part
            gates[a:e] = gate
        out = self._attend(qkv.permute(2, 0, 3, 1, 4), rotated)
        gates = gates.transpose(1, 2).unsqueeze(-1)
        weight = self.to_out[0].weight
        result = torch.empty_like(x)
        for a, e in row_blocks(batch, seq * dim):
            gated = (out[a:e] * gates[a:e]).transpose(1, 2).reshape(e - a, seq, inner)
            torch.add(x[a:e], F.linear(gated, weight), out=result[a:e])
        return result


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al., XCiT, arXiv:2106.09681), plus residual.

    Attends over feature channels instead of tokens: queries and keys are
    L2-normalised along the sequence, queries scaled by ``exp(temperature)`` per
    head, softmax scale 8. Used by BS-RoFormer when ``linear_transformer_depth > 0``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = float(dropout)
        dim_inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, dim_inner * 3, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(dim_inner, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(batch, seq, 3, self.heads, self.dim_head)
        qkv = qkv.permute(2, 0, 3, 4, 1)  # (3, batch, heads, dim_head, seq)
        q = F.normalize(qkv[0], dim=-1) * self.temperature.exp()
        k = F.normalize(qkv[1], dim=-1)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, qkv[2], dropout_p=p, scale=8.0)
        out = out.permute(0, 3, 1, 2).reshape(batch, seq, self.heads * self.dim_head)
        return self.to_out(out) + x


class FeedForward(nn.Module):
    """Pre-norm MLP ``dim -> 4 dim -> dim`` with GELU, plus residual."""

    def __init__(self, dim: int, dropout: float, mult: int = 4) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled():
            return self.net(x) + x
        return self._forward_blocked(x)

    def _forward_blocked(self, x: Tensor) -> Tensor:
        """Inference, per block of sequences (the hidden activations stay in
        cache; :func:`sepcli.models.nets.blocks.row_blocks`), with the norm's
        ``sqrt(dim) * gamma`` folded into the first Linear."""
        norm, up, down = self.net[0], self.net[1], self.net[4]
        batch, seq, _ = x.shape
        weight = norm.fold_into(up.weight)
        result = torch.empty_like(x)
        for a, e in row_blocks(batch, seq * weight.shape[0]):
            hidden = F.gelu(F.linear(F.normalize(x[a:e], dim=-1), weight, up.bias))
            torch.add(x[a:e], F.linear(hidden, down.weight, down.bias), out=result[a:e])
        return result


class Transformer(nn.Module):
    """``depth`` (attention, feed-forward) layers over one axis of ``(B, T, K, D)`` tokens.

    Args:
        axis: :data:`TIME` (sequences of frames, one per band), :data:`BAND`
            (sequences of bands, one per frame) or :data:`ALL` (every token of a
            chunk in one sequence; linear attention only).
        norm_output: a final :class:`RMSNorm` (Mel-Band RoFormer) or none (BS).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        attn_dropout: float,
        ff_dropout: float,
        axis: int,
        norm_output: bool,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.axis = axis
        layers = []
        for _ in range(depth):
            attn: nn.Module
            if linear:
                attn = LinearAttention(dim, heads, dim_head, attn_dropout)
            else:
                attn = Attention(dim, heads, dim_head, attn_dropout)
            layers.append(nn.Sequential(attn, FeedForward(dim, ff_dropout)))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``x (batch, frame, band, dim)`` -> same shape."""
        batch, frames, bands, dim = x.shape
        # contiguous tokens: on a strided view (what the reshape of a transposed
        # batch of one gives) every Linear turns into a batched product with an
        # expanded weight and copies its 4 x dim hidden activations
        if self.axis == 0:  # TIME
            y = x.transpose(1, 2).reshape(batch * bands, frames, dim).contiguous()
        elif self.axis == 1:  # BAND
            y = x.reshape(batch * frames, bands, dim).contiguous()
        else:
            y = x.reshape(batch, frames * bands, dim).contiguous()
        for layer in self.layers:
            y = layer(y)
        y = self.norm(y)
        if self.axis == 0:
            return y.reshape(batch, bands, frames, dim).transpose(1, 2)
        return y.reshape(batch, frames, bands, dim)


class BandSplit(nn.Module):
    """Per-band RMSNorm + Linear: ``(B, T, sum(dim_inputs)) -> (B, T, bands, dim)``."""

    def __init__(self, dim: int, dim_inputs: list[int]) -> None:
        super().__init__()
        self.dim_inputs = list(dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in dim_inputs
        )

    def forward(self, x: Tensor) -> Tensor:
        parts = x.split(self.dim_inputs, dim=-1)
        outs: list[Tensor] = []
        for i, net in enumerate(self.to_features):
            outs.append(net(parts[i]))
        return torch.stack(outs, dim=-2)


def _mlp(dim_in: int, dim_out: int, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    dims = [dim_in] + [dim_hidden] * hidden_layers + [dim_out]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per-band MLP + GLU: ``(B, T, bands, dim) -> (B, T, sum(dim_inputs))``.

    Args:
        hidden_layers: hidden layers of each band's MLP (``mask_estimator_depth
            - 1`` in BS-RoFormer, ``mask_estimator_depth`` in Mel-Band RoFormer).
    """

    def __init__(self, dim: int, dim_inputs: list[int], hidden_layers: int, expansion: int) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, d * 2, dim * expansion, hidden_layers), nn.GLU(dim=-1))
            for d in dim_inputs
        )

    def forward(self, x: Tensor) -> Tensor:
        bands = x.unbind(dim=-2)
        outs: list[Tensor] = []
        for i, net in enumerate(self.to_freqs):
            outs.append(net(bands[i]))
        return torch.cat(outs, dim=-1)


class Roformer(PublishedChunks, nn.Module):
    """The forward both RoFormers share; ``forward(mix (B, C, T)) -> (B, S, C, T)``.

    STFT of each channel, bins interleaved per channel (``(B, F * C, N)``, bin
    major), :meth:`select_bins` -> :class:`BandSplit` -> ``depth`` axial blocks
    (an optional linear transformer over all tokens, then time, then bands) ->
    final norm -> one :class:`MaskEstimator` per stem -> :meth:`bin_masks` (one
    complex mask per bin) -> mask times mixture STFT -> iSTFT. A family says
    only how bands read bins (:meth:`select_bins`) and how band masks become bin
    masks (:meth:`bin_masks`), and gives the bins each band reads (``band_dims``:
    ``2 * bins * channels`` features per band).

    ``T`` is any length above ``stft_n_fft // 2`` samples (reflect padding);
    the published chunk is ``config.chunk_samples``.
    """

    def __init__(
        self,
        config: RoformerConfig,
        band_dims: list[int],
        *,
        norm_output: bool,
        final_norm: bool,
        mask_hidden_layers: int,
        linear_transformer_depth: int = 0,
    ) -> None:
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
            norm_output=norm_output,
        )
        blocks = []
        for _ in range(config.depth):
            parts: list[nn.Module] = []
            if linear_transformer_depth > 0:
                parts.append(
                    Transformer(depth=linear_transformer_depth, axis=ALL, linear=True, **common)
                )
            parts.append(Transformer(depth=config.time_transformer_depth, axis=TIME, **common))
            parts.append(Transformer(depth=config.freq_transformer_depth, axis=BAND, **common))
            blocks.append(nn.Sequential(*parts))
        self.layers = nn.ModuleList(blocks)
        self.final_norm = RMSNorm(config.dim) if final_norm else nn.Identity()
        self.band_split = BandSplit(config.dim, band_dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(
                config.dim,
                band_dims,
                hidden_layers=mask_hidden_layers,
                expansion=config.mlp_expansion_factor,
            )
            for _ in config.sources
        )
        # a shorter window centred in n_fft samples, as torch.stft pads it
        left = (self.n_fft - self.win_length) // 2
        window = F.pad(
            torch.hann_window(self.win_length), (left, self.n_fft - self.win_length - left)
        )
        self.register_buffer("window", window, persistent=False)

    def select_bins(self, spec_ri: Tensor) -> Tensor:
        """``(B, F * C, N, 2)`` -> the rows the bands read, band by band ``(B, K, N, 2)``."""
        raise NotImplementedError

    def bin_masks(self, masks: Tensor, bins: int) -> Tensor:
        """Band masks ``(B, S, K, N, 2)`` -> complex mask per bin ``(B, S, bins, N)``."""
        raise NotImplementedError

    def forward(self, mix: Tensor) -> Tensor:
        """``mix (batch, channel, time)`` -> stems ``(batch, source, channel, time)``."""
        batch, channels, length = mix.shape
        spec = stft(mix, self.n_fft, self.hop_length, self.window, self.normalized)
        freqs, frames = spec.shape[-2], spec.shape[-1]
        # bins major, channels interleaved: (B, F * C, N, re/im)
        spec_ri = torch.view_as_real(spec).permute(0, 2, 1, 3, 4)
        spec_ri = spec_ri.reshape(batch, freqs * channels, frames, 2)
        x = self.select_bins(spec_ri).permute(0, 2, 1, 3).reshape(batch, frames, -1)
        x = self.band_split(x)
        for block in self.layers:
            x = block(x)
        x = self.final_norm(x)
        # float32 from here on (masks are bf16/fp16 under autocast; complex needs float32)
        masks = torch.stack([est(x) for est in self.mask_estimators], dim=1).to(spec_ri.dtype)
        sources = masks.shape[1]
        masks = masks.reshape(batch, sources, frames, -1, 2).permute(0, 1, 3, 2, 4)
        mask = self.bin_masks(masks, freqs * channels)
        out = torch.view_as_complex(spec_ri.contiguous()).unsqueeze(1) * mask
        out = out.reshape(batch, sources, freqs, channels, frames).permute(0, 1, 3, 2, 4)
        return istft(out, self.n_fft, self.hop_length, length, self.window, self.normalized)


def _hz_to_mel(freq: float) -> float:
    """Slaney's mel scale (librosa's default, ``htk=False``), one value."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    if freq >= min_log_hz:
        return float(min_log_mel + np.log(freq / min_log_hz) / logstep)
    return freq / f_sp


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def mel_band_layout(sample_rate: int, n_fft: int, num_bands: int) -> Tensor:
    """Which STFT bins each mel band covers: bool ``(num_bands, n_fft // 2 + 1)``.

    The support (non-zero entries) of librosa's ``filters.mel(sr=sample_rate,
    n_fft=n_fft, n_mels=num_bands)`` (Slaney scale, 0 Hz to Nyquist), with the
    first bin added to the first band and the last bin to the last band, as the
    Mel-Band RoFormer does. Computed with the same float64 operations as
    librosa, so the support is identical (tests compare with librosa).
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sample_rate) / 2), num_bands + 2)
    mel_f = _mel_to_hz(mels)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    support = np.zeros((num_bands, len(fftfreqs)), dtype=bool)
    for i in range(num_bands):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
        support[i] = weights > 0
    support[0, 0] = True
    support[-1, -1] = True
    return torch.from_numpy(support)
