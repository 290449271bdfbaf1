"""Hyper-parameters of the model families, as frozen dataclasses.

Every config round-trips through JSON (``to_dict`` / ``from_dict``) and is
stored as ``metadata.config`` in the archive. :func:`reference_config` gives the
sizes that ``docs/models.md`` and ``bench/bench_models.py`` report; tests use
tiny sizes (``hidden_size=16, num_layers=1``...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sepcli.dsp import ENSEMBLE_ALGORITHMS
from sepcli.errors import ConfigError
from sepcli.models.families import FAMILIES, config_class, config_from_dict, reference_config

__all__ = [
    "UMXConfig",
    "TFCTDFConfig",
    "WaveformConfig",
    "EnsembleMember",
    "EnsembleConfig",
    "BLEND_MODES",
    "config_from_dict",
    "reference_config",
    "reference_ensemble",
    "bandwidth_to_max_bin",
]

FOUR_STEMS = ("vocals", "drums", "bass", "other")
#: How an ensemble combines its members for a stem (:class:`EnsembleConfig`):
#: sepcli's own four, then audio-separator's algorithms (:mod:`sepcli.dsp.ensemble`).
BLEND_MODES = ("mean", "max", "min", "median") + ENSEMBLE_ALGORITHMS


def bandwidth_to_max_bin(sample_rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins whose centre frequency is <= ``bandwidth`` Hz.

    Same rule as ``openunmix.utils.bandwidth_to_max_bin`` (bins are
    ``linspace(0, sample_rate / 2, n_fft // 2 + 1)``).
    """
    nbins = n_fft // 2 + 1
    if bandwidth <= 0 or bandwidth >= sample_rate / 2:
        return nbins
    step = (sample_rate / 2) / (nbins - 1)
    # +1e-9 guards against bandwidth exactly on a bin centre rounding down
    return min(nbins, int(math.floor(bandwidth / step + 1e-9)) + 1)


class _Config:
    """JSON round trip shared by the config dataclasses."""

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{cls.family} config must be a JSON object, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.family} config has unknown keys {unknown}")
        kwargs = dict(data)
        if "sources" in kwargs:
            kwargs["sources"] = tuple(kwargs["sources"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{cls.family} config is incomplete: {exc}") from None

    def _check_common(self) -> list[str]:
        out: list[str] = []
        sources = getattr(self, "sources", ())
        if not sources or len(set(sources)) != len(sources):
            out.append(f"sources must be non-empty and unique, got {list(sources)}")
        if getattr(self, "sample_rate", 1) <= 0:
            out.append("sample_rate must be positive")
        if getattr(self, "audio_channels", 1) not in (1, 2):
            out.append("audio_channels must be 1 or 2")
        return out

    def _raise(self, problems: list[str]) -> None:
        if problems:
            raise ConfigError(f"invalid {self.family} config: " + "; ".join(problems))


def _to_json(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class UMXConfig(_Config):
    """Open-Unmix (Stöter et al., JOSS 2019): one BiLSTM mask network per source.

    Attributes:
        sources: target names, one network each, in output order.
        sample_rate: Hz. audio_channels: 1 or 2.
        n_fft, hop_length: STFT in samples (:mod:`sepcli.dsp.stft`).
        hidden_size: width of the dimensionality-reduced representation.
        num_layers: LSTM layers (3 in the paper).
        unidirectional: causal LSTM (hidden_size units) for low latency instead
            of a BiLSTM (hidden_size // 2 units per direction).
        bandwidth: Hz; bins above it are not fed to the network (0 = all).
        max_bin: explicit input bin count overriding ``bandwidth`` (0 = derive).
        lstm_dropout: dropout between LSTM layers when training.
    """

    family: ClassVar[str] = "umx"
    sources: tuple[str, ...] = FOUR_STEMS
    sample_rate: int = 44100
    audio_channels: int = 2
    n_fft: int = 4096
    hop_length: int = 1024
    hidden_size: int = 512
    num_layers: int = 3
    unidirectional: bool = False
    bandwidth: float = 16000.0
    max_bin: int = 0
    lstm_dropout: float = 0.4

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        p = self._check_common()
        if self.n_fft <= 0 or self.hop_length <= 0 or self.hop_length > self.n_fft:
            p.append(f"bad STFT n_fft={self.n_fft} hop_length={self.hop_length}")
        if self.hidden_size < 2 or (not self.unidirectional and self.hidden_size % 2):
            p.append("hidden_size must be >= 2 (and even for a BiLSTM)")
        if self.num_layers < 1:
            p.append("num_layers must be >= 1")
        if not 0 <= self.max_bin <= self.n_fft // 2 + 1:
            p.append(f"max_bin must be in [0, {self.n_fft // 2 + 1}]")
        if not 0.0 <= self.lstm_dropout < 1.0:
            p.append("lstm_dropout must be in [0, 1)")
        self._raise(p)

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def nb_bins(self) -> int:
        """Bins of the STFT (``n_fft // 2 + 1``)."""
        return self.n_fft // 2 + 1

    @property
    def input_bins(self) -> int:
        """Bins the network sees (bandwidth cut-off)."""
        if self.max_bin:
            return self.max_bin
        return bandwidth_to_max_bin(self.sample_rate, self.n_fft, self.bandwidth)


@dataclass(frozen=True)
class TFCTDFConfig(_Config):
    """TFC-TDF U-Net (Choi et al., ISMIR 2020; the KUIELab MDX 2021 variant).

    The complex spectrogram of the mixture, cut to its ``dim_f`` lowest bins, is
    mapped as ``2 * audio_channels`` real channels to ``2 * audio_channels *
    num_sources`` channels (the complex spectrograms of the sources).

    Attributes:
        dim_f: bins the network sees; a multiple of ``2 ** num_levels``; bins
            above it are output as zero.
        num_levels: down-sampling steps of the U-Net (encoder blocks); the net has
            ``2 * num_levels + 1`` TFC-TDF blocks.
        channels: channels after the first 1x1 convolution.
        growth: channels added at each down-sampling step.
        tfc_layers: densely connected convolutions per TFC block.
        kernel_size: of the TFC convolutions (time and frequency).
        bottleneck_factor: TDF hidden units = bins // bottleneck_factor (>= 16).
        min_bottleneck: lower bound on TDF hidden units.
        segment_frames: frames of a training/inference segment (context of the
            exported archive); any length works at inference.
    """

    family: ClassVar[str] = "tfc-tdf"
    sources: tuple[str, ...] = FOUR_STEMS
    sample_rate: int = 44100
    audio_channels: int = 2
    n_fft: int = 4096
    hop_length: int = 1024
    dim_f: int = 1536
    num_levels: int = 4
    channels: int = 32
    growth: int = 32
    tfc_layers: int = 2
    kernel_size: int = 3
    bottleneck_factor: int = 16
    min_bottleneck: int = 16
    segment_frames: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        p = self._check_common()
        if self.n_fft <= 0 or self.hop_length <= 0 or self.hop_length > self.n_fft:
            p.append(f"bad STFT n_fft={self.n_fft} hop_length={self.hop_length}")
        if self.num_levels < 0:
            p.append("num_levels must be >= 0")
        if self.dim_f <= 0 or self.dim_f > self.n_fft // 2 + 1 or self.dim_f % (2**self.num_levels):
            p.append(f"dim_f={self.dim_f} must be <= n_fft//2+1 and a multiple of 2**num_levels")
        if self.channels < 1 or self.growth < 0 or self.tfc_layers < 1:
            p.append("channels >= 1, growth >= 0 and tfc_layers >= 1 are required")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            p.append("kernel_size must be odd")
        if self.bottleneck_factor < 1 or self.min_bottleneck < 1:
            p.append("bottleneck_factor and min_bottleneck must be >= 1")
        if self.segment_frames < 1:
            p.append("segment_frames must be >= 1")
        self._raise(p)

    @property
    def num_sources(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class WaveformConfig(_Config):
    """Demucs-family waveform U-Net (Défossez et al. 2019, arXiv:1911.13254).

    Attributes:
        channels: channels of the first encoder layer, times ``growth`` per layer.
        depth: encoder/decoder layers; the input is zero-padded to a multiple of
            ``stride ** depth`` samples.
        kernel_size, stride: of the strided encoder convolutions.
        bottleneck: ``"lstm"`` (bidirectional, 2 layers) or ``"attention"``
            (``attention_layers`` transformer-encoder layers) or ``"none"``.
        shared_decoder: one decoder for all sources (``True``) or one per source.
        normalize: standardize the input by its mean/std and undo it on output.
        segment: seconds of a training/inference segment.
    """

    family: ClassVar[str] = "waveform"
    sources: tuple[str, ...] = FOUR_STEMS
    sample_rate: int = 44100
    audio_channels: int = 2
    channels: int = 48
    growth: float = 2.0
    depth: int = 5
    kernel_size: int = 8
    stride: int = 4
    bottleneck: str = "lstm"
    lstm_layers: int = 2
    attention_layers: int = 2
    attention_heads: int = 4
    shared_decoder: bool = True
    normalize: bool = True
    segment: float = 6.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        p = self._check_common()
        if self.channels < 1 or self.depth < 1 or self.growth < 1:
            p.append("channels >= 1, depth >= 1 and growth >= 1 are required")
        if (
            self.stride < 1
            or self.kernel_size < self.stride
            or (self.kernel_size - self.stride) % 2
        ):
            p.append("kernel_size must be >= stride with an even difference")
        if self.bottleneck not in ("lstm", "attention", "none"):
            p.append(f"bottleneck must be 'lstm', 'attention' or 'none', got {self.bottleneck!r}")
        if self.lstm_layers < 1 or self.attention_layers < 1 or self.attention_heads < 1:
            p.append("lstm_layers, attention_layers and attention_heads must be >= 1")
        if self.bottleneck == "attention" and self.layer_channels()[-1] % self.attention_heads:
            p.append("the bottleneck width must be divisible by attention_heads")
        if self.segment <= 0:
            p.append("segment must be positive")
        self._raise(p)

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def layer_channels(self) -> list[int]:
        """Output channels of each encoder layer."""
        return [int(round(self.channels * self.growth**i)) for i in range(self.depth)]


@dataclass(frozen=True)
class EnsembleMember(_Config):
    """One member of an ensemble: a family, its config, and its phase step.

    Attributes:
        family: one of the families (not ``"ensemble"``).
        config: that family's config as a dict.
        wiener_iterations: for spectrogram members, Wiener EM iterations before
            the blend (0 = mixture phase / the member's own complex output).
    """

    family: ClassVar[str] = "ensemble-member"
    member_family: str = "umx"
    config: Mapping[str, Any] = field(default_factory=dict)
    wiener_iterations: int = 0

    def __post_init__(self) -> None:
        if self.member_family not in FAMILIES or self.member_family == "ensemble":
            raise ConfigError(f"unknown ensemble member family {self.member_family!r}")
        if self.wiener_iterations < 0:
            raise ConfigError("wiener_iterations must be >= 0")
        cfg = config_class(self.member_family).from_dict(self.config)
        object.__setattr__(self, "config", cfg.to_dict())

    def member_config(self) -> Any:
        return config_class(self.member_family).from_dict(self.config)


@dataclass(frozen=True)
class EnsembleConfig(_Config):
    """A blend of members (MDX 2021 style): stem ``s`` is
    ``sum_m w[s][m] * est_m[s] / sum_m w[s][m]`` over the members that output ``s``.

    Attributes:
        sources: output stems, in order.
        members: the members.
        modes: per stem, how members are combined (:data:`BLEND_MODES`): ``mean``
            (the weighted mean of waveforms) or, in the spectrogram domain, per
            time-frequency bin the member whose magnitude is the ``max``, ``min``
            or ``median`` (weights then only say which members take part), or one
            of audio-separator's algorithms (``avg_wave`` ... ``uvr_max_spec``,
            :mod:`sepcli.dsp.ensemble`; only ``avg_*`` use the weights' values).
            Empty = ``mean`` for every stem.
        weights: ``len(sources)`` rows of ``len(members)`` non-negative weights;
            a member that does not output a stem must have weight 0 for it.
    """

    family: ClassVar[str] = "ensemble"
    sources: tuple[str, ...] = FOUR_STEMS
    members: tuple[EnsembleMember, ...] = ()
    weights: tuple[tuple[float, ...], ...] = ()
    modes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        members = tuple(
            m if isinstance(m, EnsembleMember) else EnsembleMember.from_dict(m)
            for m in self.members
        )
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(
            self, "weights", tuple(tuple(float(w) for w in row) for row in self.weights)
        )
        object.__setattr__(self, "modes", tuple(self.modes) or ("mean",) * len(self.sources))
        p = self._check_common()
        if len(self.modes) != len(self.sources) or set(self.modes) - set(BLEND_MODES):
            p.append(
                f"modes must be one of {', '.join(BLEND_MODES)} per stem, got {list(self.modes)}"
            )
        if not members:
            p.append("an ensemble needs at least one member")
        cfgs = [m.member_config() for m in members]
        if len({c.audio_channels for c in cfgs}) > 1:
            p.append("members must share audio_channels")
        if len(self.weights) != len(self.sources) or any(
            len(r) != len(members) for r in self.weights
        ):
            p.append(f"weights must be {len(self.sources)} rows of {len(members)} values")
        else:
            for s, row in zip(self.sources, self.weights, strict=True):
                if any(w < 0 or not math.isfinite(w) for w in row):
                    p.append(f"weights for {s} must be finite and >= 0")
                total = 0.0
                for w, cfg in zip(row, cfgs, strict=True):
                    if w > 0 and s not in cfg.sources:
                        p.append(f"a member without {s!r} has weight {w} for it")
                    if s in cfg.sources:
                        total += w
                if total <= 0:
                    p.append(f"no member contributes to {s!r}")
        self._raise(p)

    @property
    def sample_rate(self) -> int:
        return self.members[0].member_config().sample_rate if self.members else 0

    @property
    def audio_channels(self) -> int:
        return self.members[0].member_config().audio_channels if self.members else 0

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "members": [m.to_dict() for m in self.members],
            "weights": [list(r) for r in self.weights],
            # only when used, so that the configs of mean-only blends stay as they were
            **({"modes": list(self.modes)} if set(self.modes) != {"mean"} else {}),
        }


def reference_ensemble() -> EnsembleConfig:
    """The ``ensemble`` family's reference: the three trainable families at their
    reference sizes, blended with the MDX 2021 vocals weights 0.2/0.4/0.4
    (UMX / TFC-TDF / waveform) and equal weights elsewhere."""
    members = (
        EnsembleMember("umx", UMXConfig().to_dict(), wiener_iterations=1),
        EnsembleMember("tfc-tdf", TFCTDFConfig().to_dict()),
        EnsembleMember("waveform", WaveformConfig().to_dict()),
    )
    weights = ((0.2, 0.4, 0.4), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    return EnsembleConfig(FOUR_STEMS, members, weights)
