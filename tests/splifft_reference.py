"""Test-only access to splifft 0.0.9's BS-/Mel-RoFormer and MDX23C modules.

splifft (MIT, on PyPI) needs only torch and einops for these modules. Its
Mel-Band layout calls ``torchaudio.functional.melscale_fbanks`` (Slaney mel,
Slaney norm); torchaudio is not installed here, so a stand-in module gives
librosa's ``filters.mel`` with the same settings (the same filters; only their
support matters, and ``test_mel_band_layout_is_librosa_support`` pins ours to
librosa's). Nothing here is copied into sepcli.

:func:`splifft_roformer` builds splifft's ``BSRoformer`` for a sepcli RoFormer
config; :func:`splifft_output` runs it the way splifft's inference does (mask
times the mixture STFT, inverse STFT), with sepcli's STFT, whose parity with
``torch.stft`` is tested elsewhere: the comparison is at the network.
:class:`SplifftWaveform` runs it on waveforms as splifft's own inference does
(splifft's STFT), for the chunked real-song checks (tests/test_cli_separate_shapes.py).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from sepcli.dsp.stft import istft, stft


def _torchaudio_stand_in() -> None:
    if "torchaudio.functional" in sys.modules:
        return
    try:
        import torchaudio.functional  # noqa: F401

        return
    except ImportError:
        pass
    librosa = pytest.importorskip("librosa")

    def melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate, norm, mel_scale):
        assert (f_min, norm, mel_scale) == (0.0, "slaney", "slaney")
        assert f_max == sample_rate / 2
        n_fft = (n_freqs - 1) * 2
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        return torch.from_numpy(mel).T.float()  # (n_freqs, n_mels)

    ta = types.ModuleType("torchaudio")
    fn = types.ModuleType("torchaudio.functional")
    fn.melscale_fbanks = melscale_fbanks
    ta.functional = fn
    sys.modules.setdefault("torchaudio", ta)
    sys.modules["torchaudio.functional"] = fn


def splifft_bs_module():
    pytest.importorskip("einops")
    mod = pytest.importorskip("splifft.models.bs_roformer")
    _torchaudio_stand_in()
    return mod


def splifft_params(cfg, frames: int):
    """splifft's ``BSRoformerParams`` for a sepcli BS/Mel-RoFormer config, its
    rotary tables sized for ``frames`` STFT frames."""
    m = splifft_bs_module()
    mel = cfg.family == "mel-roformer"
    if mel:
        bands = m.MelBandsConfig(
            kind="mel", stft_n_fft=cfg.stft_n_fft, num_bands=cfg.num_bands,
            sample_rate=cfg.sample_rate,
        )  # fmt: skip
    else:
        bands = m.FixedBandsConfig(kind="fixed", freqs_per_bands=tuple(cfg.freqs_per_bands))
    kind = cfg.mask_estimator
    if kind == "baseline":
        head = m.BaselineMaskEstimatorConfig()
    elif kind == "axial_refiner_large_v2":
        head = m.AxialRefinerLargeV2MaskEstimatorConfig(
            kind=kind, axial_refiner_depth=cfg.axial_refiner_depth
        )
    else:
        cls = (
            m.HyperAceResidualV2MaskEstimatorConfig
            if kind.endswith("v2")
            else m.HyperAceResidualV1MaskEstimatorConfig
        )
        head = cls(
            kind=kind, num_hyperedges=cfg.num_hyperedges or None, num_heads=cfg.hyperace_heads
        )
    return m.BSRoformerParams(
        chunk_size=(frames - 1) * cfg.stft_hop_length,
        output_stem_names=tuple(cfg.sources),
        dim=cfg.dim,
        depth=cfg.depth,
        band_config=bands,
        stft_hop_length=cfg.stft_hop_length,
        stereo=cfg.audio_channels == 2,
        time_transformer_depth=cfg.time_transformer_depth,
        freq_transformer_depth=cfg.freq_transformer_depth,
        linear_transformer_depth=getattr(cfg, "linear_transformer_depth", 0),
        dim_head=cfg.dim_head,
        heads=cfg.heads,
        norm_output=cfg.norm_output,
        # splifft counts Mel-Band mask MLP layers one higher (its documented off-by-one)
        mask_estimator_depth=cfg.mask_estimator_depth + (1 if mel else 0),
        mlp_expansion_factor=cfg.mlp_expansion_factor,
        mask_estimator=head,
        use_shared_bias=cfg.use_shared_bias,
        skip_connection=cfg.skip_connection,
        rms_norm_eps=cfg.rms_norm_eps or None,
        flash_attn=True,
    )


def splifft_roformer(cfg, frames: int) -> torch.nn.Module:
    m = splifft_bs_module()
    return m.BSRoformer(splifft_params(cfg, frames)).eval()


def load_reference_into(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    """splifft's weights into ours; splifft computes its rotary tables instead
    of storing ``rotary_embed.freqs``, which is the only thing ours has beyond."""
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected, unexpected[:3]
    assert all(k.endswith("rotary_embed.freqs") for k in missing), missing[:3]


def splifft_output(ref: torch.nn.Module, ours: torch.nn.Module, mix: torch.Tensor) -> torch.Tensor:
    """``(B, S, C, T)``: splifft's mask applied to the mixture STFT and inverted."""
    batch, channels, length = mix.shape
    spec = stft(mix, ours.n_fft, ours.hop_length, ours.window, ours.normalized)
    freqs, frames = spec.shape[-2], spec.shape[-1]
    spec_ri = (
        torch.view_as_real(spec).permute(0, 2, 1, 3, 4).reshape(batch, freqs * channels, frames, 2)
    )
    with torch.no_grad():
        mask = ref(spec_ri)  # (B, S, F * C, N, 2)
    out = torch.view_as_complex(spec_ri.contiguous()).unsqueeze(1) * torch.view_as_complex(
        mask.contiguous()
    )
    sources = out.shape[1]
    out = out.reshape(batch, sources, freqs, channels, frames).permute(0, 1, 3, 2, 4)
    return istft(out, ours.n_fft, ours.hop_length, length, ours.window, ours.normalized)


class SplifftWaveform(torch.nn.Module):
    """splifft's module on waveform chunks of ``chunk`` samples, as the inference of
    MSST and audio-separator runs its RoFormers: ``torch.stft`` (Hann, centred,
    reflect padding), the mask times the mixture spectrogram in splifft's layout,
    ``torch.istft`` to ``chunk`` samples; ``(B, C, chunk) -> (B, S, C, chunk)``.
    No sepcli code on this path.

    Not splifft's own ``Stft`` (a DFT as 1-D convolutions): its float32 rounding
    differs from the FFT's in the near-silent bins of real music (above a lossy
    codec's low-pass), which each band's RMSNorm scales up to unit size, so a
    random-weight network's outputs differ by far more than rounding (41.5 dB at
    one chunk where the FFT on both sides gives 123 dB;
    tests/test_cli_separate_shapes.py)."""

    def __init__(self, ref: torch.nn.Module, cfg, chunk: int) -> None:
        super().__init__()
        self.model = ref
        self.n_fft, self.hop_length = cfg.stft_n_fft, cfg.stft_hop_length
        self.register_buffer("window", torch.hann_window(cfg.stft_win_length))
        self.chunk = chunk

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        batch, channels, _ = mix.shape
        args = {"n_fft": self.n_fft, "hop_length": self.hop_length, "window": self.window}
        spec = torch.stft(mix.reshape(batch * channels, -1), **args, return_complex=True)
        freqs, frames = spec.shape[-2:]
        spec = torch.view_as_real(spec).reshape(batch, channels, freqs, frames, 2)
        spec = spec.permute(0, 2, 1, 3, 4).reshape(batch, freqs * channels, frames, 2)
        mask = self.model(spec)  # (B, S, F * C, N, 2)
        out = torch.view_as_complex(spec.unsqueeze(1).contiguous()) * torch.view_as_complex(
            mask.contiguous()
        )
        sources = out.shape[1]
        out = out.reshape(batch * sources, freqs, channels, frames).transpose(1, 2)
        wave = torch.istft(out.reshape(-1, freqs, frames), **args, length=self.chunk)
        return wave.reshape(batch, sources, channels, self.chunk)
