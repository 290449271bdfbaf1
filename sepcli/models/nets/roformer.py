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
from sepcli.errors import ConfigError
from sepcli.models.archive.contract import PublishedChunks, set_contract
from sepcli.models.configs import _Config
from sepcli.models.nets.blocks import row_blocks
from sepcli.models.nets.mdx23c import TFCTDF

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
    "MASK_ESTIMATORS",
    "TIME",
    "BAND",
    "ALL",
]

#: The per-stem mask heads (:attr:`RoformerConfig.mask_estimator`).
MASK_ESTIMATORS = (
    "baseline",
    "axial_refiner_large_v2",
    "hyperace_residual_v1",
    "hyperace_residual_v2",
)

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
        norm_output: an RMSNorm at the end of every transformer (the family's
            default: Mel-Band on, BS off; splifft's ``norm_output``).
        rms_norm_eps: every RMSNorm divides by ``max(||x||, rms_norm_eps)``
            (splifft's ``rms_norm_eps``); 0 = ``F.normalize``'s 1e-12.
        use_shared_bias: one ``qkv`` and one output bias shared by every attention
            (``shared_qkv_bias``, ``shared_out_bias``).
        skip_connection: before each axial block, add the outputs of all earlier
            blocks (MSST's ``skip_connection``; audio-separator 0.47.1 ignores it).
        mask_estimator: the per-stem head: ``baseline`` (per-band MLP + GLU),
            ``axial_refiner_large_v2`` (``axial_refiner_depth`` time/band
            transformer pairs before the MLPs, unwa's large v2),
            ``hyperace_residual_v1`` / ``hyperace_residual_v2`` (unwa's HyperACE
            CNN over all bands added to the MLPs' output; ``num_hyperedges``, 0 =
            the version's 16 / 32, ``hyperace_heads``).
        chunk_size: samples of one inference chunk when it is not a whole number
            of hops (MSST ``audio.chunk_size``); 0 = ``stft_hop_length * (dim_t - 1)``.
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
    norm_output: bool = False
    rms_norm_eps: float = 0.0
    use_shared_bias: bool = False
    skip_connection: bool = False
    mask_estimator: str = "baseline"
    axial_refiner_depth: int = 4
    num_hyperedges: int = 0
    hyperace_heads: int = 8
    chunk_size: int = 0

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
        if self.rms_norm_eps < 0:
            p.append("rms_norm_eps must be >= 0")
        if self.mask_estimator not in MASK_ESTIMATORS:
            p.append(
                f"mask_estimator must be one of {list(MASK_ESTIMATORS)}, "
                f"got {self.mask_estimator!r}"
            )
        if self.axial_refiner_depth < 1 or self.num_hyperedges < 0 or self.hyperace_heads < 1:
            p.append(
                "axial_refiner_depth >= 1, num_hyperedges >= 0 and hyperace_heads >= 1 are required"
            )
        if self.mask_estimator.startswith("hyperace") and self.audio_channels != 2:
            p.append("the HyperACE mask heads are stereo only")
        if self.skip_connection and getattr(self, "linear_transformer_depth", 0):
            p.append("skip_connection with linear_transformer_depth > 0 is not implemented")
        if self.chunk_size < 0:
            p.append("chunk_size must be >= 0 (0: stft_hop_length * (dim_t - 1))")
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
        """Samples of one inference chunk: ``chunk_size``, else
        ``stft_hop_length * (dim_t - 1)``."""
        return self.chunk_size or self.stft_hop_length * (self.dim_t - 1)


class RMSNorm(nn.Module):
    """``x / max(||x||, eps) * sqrt(dim) * gamma`` over the last axis (``eps``
    1e-12: ``F.normalize``'s floor; splifft's ``rms_norm_eps`` otherwise)."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        # ``x / ||x|| * sqrt(dim)`` is ``x * rsqrt(mean(x^2))``: one fused pass
        # instead of four. ``F.normalize`` divides by ``max(||x||, eps)``; the
        # ``eps`` below gives the same for every row above that floor and 0 for a
        # zero row.
        d = x.shape[-1]
        if self.eps > 1e-12:  # a floor that may matter: divide by max(||x||, eps) exactly
            return F.normalize(x, dim=-1, eps=self.eps) * (self.gamma.to(x.dtype) * d**0.5)
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

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        dropout: float,
        eps: float = 1e-12,
        shared_bias: tuple[nn.Parameter, nn.Parameter] | None = None,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = float(dropout)
        dim_inner = heads * dim_head
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.norm = RMSNorm(dim, eps)
        self.to_qkv = nn.Linear(dim, dim_inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(dim_inner, dim, bias=False), nn.Dropout(dropout))
        if shared_bias is not None:  # ``use_shared_bias``: the model's two biases
            self.to_qkv.bias = shared_bias[0]
            self.to_out[0].bias = shared_bias[1]

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
            h = F.normalize(x[a:e], dim=-1, eps=self.norm.eps)
            part = F.linear(h, w_qkv, self.to_qkv.bias).reshape(
                e - a, seq, 3, self.heads, self.dim_head
            )
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
        bias = self.to_out[0].bias
        result = torch.empty_like(x)
        for a, e in row_blocks(batch, seq * dim):
            gated = (out[a:e] * gates[a:e]).transpose(1, 2).reshape(e - a, seq, inner)
            torch.add(x[a:e], F.linear(gated, weight, bias), out=result[a:e])
        return result


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al., XCiT, arXiv:2106.09681), plus residual.

    Attends over feature channels instead of tokens: queries and keys are
    L2-normalised along the sequence, queries scaled by ``exp(temperature)`` per
    head, softmax scale 8. Used by BS-RoFormer when ``linear_transformer_depth > 0``.
    """

    def __init__(
        self, dim: int, heads: int, dim_head: int, dropout: float, eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = float(dropout)
        dim_inner = heads * dim_head
        self.norm = RMSNorm(dim, eps)
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

    def __init__(self, dim: int, dropout: float, mult: int = 4, eps: float = 1e-12) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim, eps),
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
            h = F.normalize(x[a:e], dim=-1, eps=norm.eps)
            hidden = F.gelu(F.linear(h, weight, up.bias))
            torch.add(x[a:e], F.linear(hidden, down.weight, down.bias), out=result[a:e])
        return result


class Transformer(nn.Module):
    """``depth`` (attention, feed-forward) layers over one axis of ``(B, T, K, D)`` tokens.

    Args:
        axis: :data:`TIME` (sequences of frames, one per band), :data:`BAND`
            (sequences of bands, one per frame) or :data:`ALL` (every token of a
            chunk in one sequence; linear attention only).
        norm_output: a final :class:`RMSNorm` (Mel-Band RoFormer) or none (BS).
        eps: of every RMSNorm (:class:`RMSNorm`).
        shared_bias: the model's shared ``qkv`` and output biases (``use_shared_bias``).
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
        eps: float = 1e-12,
        shared_bias: tuple[nn.Parameter, nn.Parameter] | None = None,
    ) -> None:
        super().__init__()
        self.axis = axis
        layers = []
        for _ in range(depth):
            attn: nn.Module
            if linear:
                attn = LinearAttention(dim, heads, dim_head, attn_dropout, eps)
            else:
                attn = Attention(dim, heads, dim_head, attn_dropout, eps, shared_bias)
            layers.append(nn.Sequential(attn, FeedForward(dim, ff_dropout, eps=eps)))
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(dim, eps) if norm_output else nn.Identity()

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

    def __init__(self, dim: int, dim_inputs: list[int], eps: float = 1e-12) -> None:
        super().__init__()
        self.dim_inputs = list(dim_inputs)
        self.to_features = nn.ModuleList(
            nn.Sequential(RMSNorm(d, eps), nn.Linear(d, dim)) for d in dim_inputs
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
        return self._bands(x)

    def _bands(self, x: Tensor) -> Tensor:
        bands = x.unbind(dim=-2)
        outs: list[Tensor] = []
        for i, net in enumerate(self.to_freqs):
            outs.append(net(bands[i]))
        return torch.cat(outs, dim=-1)


class AxialRefinerMaskEstimator(MaskEstimator):
    """unwa's large-v2 head (``axial_refiner_large_v2``): ``depth`` pairs of a time
    and a band :class:`Transformer` (8 heads of 64, one layer each, no output
    norm, the plain RMSNorm), an :class:`RMSNorm`, then the per-band MLPs."""

    def __init__(
        self, dim: int, dim_inputs: list[int], hidden_layers: int, expansion: int, depth: int
    ) -> None:
        super().__init__(dim, dim_inputs, hidden_layers, expansion)
        blocks = []
        for _ in range(depth):
            pair = [
                Transformer(dim, 1, 8, 64, 0.0, 0.0, axis=axis, norm_output=False)
                for axis in (TIME, BAND)
            ]
            blocks.append(nn.Sequential(*pair))
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.layers:
            x = block(x)
        return self._bands(self.norm(x))


class HyperAceMaskEstimator(MaskEstimator):
    """unwa's HyperACE heads (``hyperace_residual_v1`` / ``_v2``): the per-band MLPs
    plus a residual from :class:`HyperAceNet`, a CNN over all bands and frames
    (``(B, T, bands, dim)`` as ``dim`` channels) that gives 4 values per output
    bin (``sum(dim_inputs) // 4`` bins: stereo re/im of each STFT bin)."""

    def __init__(
        self,
        dim: int,
        dim_inputs: list[int],
        hidden_layers: int,
        expansion: int,
        v2: bool,
        hyperedges: int,
        heads: int,
    ) -> None:
        super().__init__(dim, dim_inputs, hidden_layers, expansion)
        if sum(dim_inputs) % 4:
            raise ConfigError(
                f"the HyperACE head needs band features in fours, got {sum(dim_inputs)}"
            )
        self.segm = HyperAceNet(
            len(dim_inputs), dim, sum(dim_inputs) // 4, v2, hyperedges or (32 if v2 else 16), heads
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, frames = x.shape[0], x.shape[1]
        y = self.segm(x.permute(0, 3, 1, 2))  # (B, dim, T, bands) -> (B, 4, T, bins)
        y = y.permute(0, 2, 3, 1).reshape(batch, frames, -1)
        return self._bands(x) + y


# --- the HyperACE CNN (unwa's BS-RoFormer HyperACE heads; splifft 0.0.9's
# ``models/utils/hyperace.py`` is the reference the tests compare with) ---------------


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True, eps=1e-8)


class _ConvNormAct(nn.Module):
    """Conv2d (no bias, ``k // 2`` padding unless given) -> InstanceNorm -> SiLU."""

    def __init__(
        self, c1: int, c2: int, k: int = 1, s: int | tuple[int, int] = 1, p: int | None = None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = _instance_norm(c2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class _DSConvNormAct(nn.Module):
    """:class:`_ConvNormAct` with a depthwise ``k x k`` then a 1x1 convolution."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c1, c1, k, s, k // 2, groups=c1, bias=False)
        self.pwconv = nn.Conv2d(c1, c2, 1, 1, 0, bias=False)
        self.bn = _instance_norm(c2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.pwconv(self.dwconv(x))))


def _ds(c1: int, c2: int, s: int | tuple[int, int] = 1) -> _DSConvNormAct:
    return _DSConvNormAct(c1, c2, 3, s)


class _Bottleneck(nn.Module):
    """Two depthwise-separable convolutions plus the input (same width)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dsconv1 = _ds(c, c)
        self.dsconv2 = _ds(c, c)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dsconv2(self.dsconv1(x))


class _CSP(nn.Module):
    """Cross-stage partial block: ``cv3([m(cv1(x)), cv2(x)])`` with ``n`` bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int, e: float) -> None:
        super().__init__()
        c = int(c2 * e)
        self.cv1 = _ConvNormAct(c1, c)
        self.cv2 = _ConvNormAct(c1, c)
        self.cv3 = _ConvNormAct(2 * c, c2)
        self.m = nn.Sequential(*[_Bottleneck(c) for _ in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class _CSP2(nn.Module):
    """``cv2(m(cv1(x)))``: a half-width :class:`_CSP` between two 1x1 convolutions."""

    def __init__(self, c1: int, c2: int, n: int) -> None:
        super().__init__()
        c = int(c2 * 0.5)
        self.cv1 = _ConvNormAct(c1, c)
        self.m = _CSP(c, c, n, 1.0)
        self.cv2 = _ConvNormAct(c, c2)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.m(self.cv1(x)))


class _HyperedgeGeneration(nn.Module):
    """Soft assignment ``(B, E, N)`` of ``N`` tokens to ``E`` hyperedges whose
    prototypes shift with the tokens' mean and max (multi-head similarity,
    averaged over heads, softmax over tokens)."""

    def __init__(self, c: int, edges: int, heads: int) -> None:
        super().__init__()
        self.edges = edges
        self.heads = heads
        self.head_dim = c // heads
        self.global_proto = nn.Parameter(torch.randn(edges, c))
        self.context_mapper = nn.Linear(2 * c, edges * c, bias=False)
        self.query_proj = nn.Linear(c, c, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        context = torch.cat((x.mean(dim=1), x.amax(dim=1)), dim=1)
        protos = self.global_proto.unsqueeze(0) + self.context_mapper(context).view(
            b, self.edges, c
        )
        z = self.query_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        protos = protos.view(b, self.edges, self.heads, self.head_dim).permute(0, 2, 3, 1)
        sim = (z @ protos) * self.head_dim**-0.5  # (B, heads, N, E)
        return F.softmax(sim.mean(dim=1).transpose(1, 2), dim=-1)


class _HypergraphConv(nn.Module):
    def __init__(self, c: int, out: int) -> None:
        super().__init__()
        self.W_e = nn.Linear(c, c, bias=False)
        self.W_v = nn.Linear(c, out, bias=False)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        edges = F.silu(self.W_e(torch.bmm(a, x)))
        return x + F.silu(self.W_v(torch.bmm(a.transpose(1, 2), edges)))


class _Hypergraph(nn.Module):
    """Hypergraph message passing over the pixels of ``(B, C, H, W)``."""

    def __init__(self, c: int, edges: int, heads: int) -> None:
        super().__init__()
        self.adaptive_hyperedge_gen = _HyperedgeGeneration(c, edges, heads)
        self.hypergraph_conv = _HypergraphConv(c, c)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2).transpose(1, 2)
        out = self.hypergraph_conv(flat, self.adaptive_hyperedge_gen(flat))
        return out.transpose(1, 2).reshape(b, -1, h, w)


class _C3AH(nn.Module):
    def __init__(self, c: int, edges: int, heads: int) -> None:
        super().__init__()
        self.cv1 = _ConvNormAct(c, c)
        self.cv2 = _ConvNormAct(c, c)
        self.ahc = _Hypergraph(c, edges, heads)
        self.cv3 = _ConvNormAct(2 * c, c)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.ahc(self.cv2(x)), self.cv1(x)), dim=1))


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    return F.interpolate(x, size=[h, w], mode="bilinear", align_corners=False)


class _HyperACE(nn.Module):
    """Fuses the four encoder scales at the third's size, then splits the
    channels: half through ``k`` hypergraph branches, a quarter through ``l``
    CSP blocks, the rest as is."""

    def __init__(self, chans: list[int], out: int, edges: int, heads: int, k: int, n: int) -> None:
        super().__init__()
        mid = chans[2]
        self.c_h = int(mid * 0.5)
        self.c_l = int(mid * 0.25)
        self.c_s = mid - self.c_h - self.c_l
        self.fuse_conv = _ConvNormAct(sum(chans), mid)
        self.high_order_branch = nn.ModuleList(_C3AH(self.c_h, edges, heads) for _ in range(k))
        self.high_order_fuse = _ConvNormAct(self.c_h * k, self.c_h)
        self.low_order_branch = nn.Sequential(*[_CSP(self.c_l, self.c_l, 1, 1.0) for _ in range(n)])
        self.final_fuse = _ConvNormAct(mid, out)

    def forward(self, feats: list[Tensor]) -> Tensor:
        h, w = feats[2].shape[2], feats[2].shape[3]
        x = torch.cat(
            (_resize(feats[0], h, w), _resize(feats[1], h, w), feats[2], _resize(feats[3], h, w)),
            dim=1,
        )
        parts = torch.split(self.fuse_conv(x), [self.c_h, self.c_l, self.c_s], dim=1)
        highs = [m(parts[0]) for m in self.high_order_branch]
        high = self.high_order_fuse(torch.cat(highs, dim=1))
        return self.final_fuse(torch.cat((high, self.low_order_branch(parts[1]), parts[2]), dim=1))


class _GatedFusion(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return x + self.gamma * h


class _Backbone(nn.Module):
    """Five depthwise-separable strided stages (time halves at each; v2 also halves
    the bands in the last two); returns the last four."""

    def __init__(self, dim: int, v2: bool, chans: list[int], base: int = 64, depth: int = 2):
        super().__init__()
        last = 2 if v2 else (2, 1)
        self.stem = _ds(dim, base, (2, 1))
        widths = [base] + chans
        strides = [(2, 1), (2, 1), last, last]
        repeats = [depth, 2 * depth, 2 * depth, depth]
        for i in range(4):
            stage = nn.Sequential(
                _ds(widths[i], widths[i + 1], strides[i]),
                _CSP2(widths[i + 1], widths[i + 1], repeats[i]),
            )
            self.add_module(f"p{i + 2}", stage)

    def forward(self, x: Tensor) -> list[Tensor]:
        x2 = self.p2(self.stem(x))
        x3 = self.p3(x2)
        x4 = self.p4(x3)
        return [x2, x3, x4, self.p5(x4)]


class _Decoder(nn.Module):
    """From the coarsest scale up: 1x1 skips, CSP up-blocks, and at each scale the
    HyperACE features gated in (``gamma``, zero-initialised)."""

    def __init__(self, chans: list[int], ace: int) -> None:
        super().__init__()
        for i, c in zip((2, 3, 4, 5), chans, strict=True):
            self.add_module(f"h_to_d{i}", _ConvNormAct(ace, c))
            self.add_module(f"fusion_d{i}", _GatedFusion(c))
            self.add_module(f"skip_p{i}", _ConvNormAct(c, c))
        self.up_d5 = _CSP2(chans[3], chans[2], 1)
        self.up_d4 = _CSP2(chans[2], chans[1], 1)
        self.up_d3 = _CSP2(chans[1], chans[0], 1)
        self.final_d2 = _CSP2(chans[0], chans[0], 1)

    def forward(self, feats: list[Tensor], ace: Tensor) -> Tensor:
        p2, p3, p4, p5 = feats[0], feats[1], feats[2], feats[3]
        d = self.skip_p5(p5)
        d = self.fusion_d5(d, self.h_to_d5(_resize(ace, d.shape[2], d.shape[3])))
        d = self.up_d5(_resize(d, p4.shape[2], p4.shape[3])) + self.skip_p4(p4)
        d = self.fusion_d4(d, self.h_to_d4(_resize(ace, d.shape[2], d.shape[3])))
        d = self.up_d4(_resize(d, p3.shape[2], p3.shape[3])) + self.skip_p3(p3)
        d = self.fusion_d3(d, self.h_to_d3(_resize(ace, d.shape[2], d.shape[3])))
        d = self.up_d3(_resize(d, p2.shape[2], p2.shape[3])) + self.skip_p2(p2)
        d = self.fusion_d2(d, self.h_to_d2(_resize(ace, d.shape[2], d.shape[3])))
        return self.final_d2(d)


class _FreqShuffle(nn.Module):
    """Doubles the band axis: a depthwise-separable convolution to twice the
    channels, each channel pair interleaved along frequency (v2: then two
    TFC-TDF blocks over the ``bins`` result)."""

    def __init__(self, c1: int, c2: int, bins: int = 0) -> None:
        super().__init__()
        self.out_c = c2
        self.conv = _ds(c1, c2 * 2)
        self.out_conv = (
            TFCTDF(c2, c2, 2, bins, 4, "InstanceNorm", "silu", 1e-8) if bins else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        x = x.view(b, self.out_c, 2, h, w).permute(0, 1, 3, 4, 2).reshape(b, self.out_c, h, w * 2)
        return self.out_conv(x)


class _UpsampleHead(nn.Module):
    """Four :class:`_FreqShuffle` (16x the bands), resized to ``bins``, then a
    convolution to the output channels (v1: 1x1; v2: 3x3 after TFC-TDF blocks)."""

    def __init__(self, c: int, out: int, bins: int, bands: int, v2: bool) -> None:
        super().__init__()
        self.bins = bins
        widths = [c, c // 2, c // 4, c // 8, c // 16] if v2 else [c, c, c // 2, c // 2, c // 4]
        for i in range(4):
            f = bands * 2 ** (i + 1) if v2 else 0
            self.add_module(f"block{i + 1}", _FreqShuffle(widths[i], widths[i + 1], f))
        if v2:
            self.final_conv = nn.Conv2d(widths[4], out, 3, 1, padding=1, bias=False)
        else:
            self.final_conv = nn.Conv2d(widths[4], out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        if x.shape[-1] != self.bins:
            x = _resize(x, x.shape[2], self.bins)
        return self.final_conv(x)


class HyperAceNet(nn.Module):
    """unwa's HyperACE segmentation CNN: ``(B, dim, T, bands) -> (B, 4, T, bins)``.

    Encoder (:class:`_Backbone`, widths 256/384/512/768), the HyperACE fusion of
    its four scales, a gated decoder back to the finest scale, the time axis
    resized back to ``T``, and a frequency up-sampling head to ``bins``. ``v2``:
    unwa's second version (strided bands in the last stages, TFC-TDF blocks in
    the head, 2 hypergraph branches and 1 low-order block instead of 3 and 2).
    """

    def __init__(self, bands: int, dim: int, bins: int, v2: bool, edges: int, heads: int):
        super().__init__()
        chans = [256, 384, 512, 768]
        self.backbone = _Backbone(dim, v2, chans)
        self.hyperace = _HyperACE(chans, chans[2], edges, heads, 2 if v2 else 3, 1 if v2 else 2)
        self.decoder = _Decoder(chans, chans[2])
        self.upsample_head = _UpsampleHead(chans[0], 4, bins, bands, v2)

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        feats = self.backbone(x)
        d = self.decoder(feats, self.hyperace(feats))
        return self.upsample_head(_resize(d, frames, d.shape[-1]))


def _mask_estimator(config: RoformerConfig, band_dims: list[int], hidden: int) -> nn.Module:
    """One stem's mask head of kind ``config.mask_estimator``."""
    kind = config.mask_estimator
    args = (config.dim, band_dims, hidden, config.mlp_expansion_factor)
    if kind == "axial_refiner_large_v2":
        return AxialRefinerMaskEstimator(*args, depth=config.axial_refiner_depth)
    if kind.startswith("hyperace_residual_"):
        v2 = kind.endswith("v2")
        return HyperAceMaskEstimator(*args, v2, config.num_hyperedges, config.hyperace_heads)
    return MaskEstimator(*args)


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
        eps = float(config.rms_norm_eps) or 1e-12
        shared: tuple[nn.Parameter, nn.Parameter] | None = None
        if config.use_shared_bias:
            inner = config.heads * config.dim_head
            self.shared_qkv_bias = nn.Parameter(torch.ones(inner * 3))
            self.shared_out_bias = nn.Parameter(torch.ones(config.dim))
            shared = (self.shared_qkv_bias, self.shared_out_bias)
        self.skip_connection = bool(config.skip_connection)
        common = dict(
            dim=config.dim,
            heads=config.heads,
            dim_head=config.dim_head,
            attn_dropout=config.attn_dropout,
            ff_dropout=config.ff_dropout,
            norm_output=norm_output,
            eps=eps,
            shared_bias=shared,
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
        self.final_norm = RMSNorm(config.dim, eps) if final_norm else nn.Identity()
        self.band_split = BandSplit(config.dim, band_dims, eps)
        self.mask_estimators = nn.ModuleList(
            _mask_estimator(config, band_dims, mask_hidden_layers) for _ in config.sources
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
        earlier: list[Tensor] = []
        for block in self.layers:
            if self.skip_connection:  # MSST: the sum of every earlier block's output
                for y in earlier:
                    x = x + y
            x = block(x)
            if self.skip_connection:
                earlier.append(x)
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
