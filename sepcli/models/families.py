"""The family table: every model family sepcli knows, declared once.

A family is one row of :data:`FAMILY_TABLE` — its config class, the module that
builds it, the kind of output it gives (``waveform``, ``magnitude`` or
``complex``, see :mod:`sepcli.models.archive`), the phase step the separator
applies by default, its reference size and the chunking recipe it recommends.
``build_model``, the config parser, training, the importers, the separator and
the docs all read this table; nothing else lists family names.

Classes are named as ``"module:attribute"`` strings and imported on first use,
so reading the table never imports a family's code. To add a family, write its
module (a frozen config dataclass and an ``nn.Module`` with the archive contract)
and add one row here (docs/design.md, "Adding a model family").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sepcli.errors import ConfigError

__all__ = [
    "Family",
    "FAMILY_TABLE",
    "FAMILIES",
    "TRAINABLE_FAMILIES",
    "family",
    "config_class",
    "config_from_dict",
    "reference_config",
]


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: the family's name in archives (``metadata.family``) and on the CLI.
        config: ``"module:Class"`` of its frozen config dataclass.
        model: ``"module:Class"`` of the ``nn.Module`` built from that config
            (``Class(config)``), or of a ``from_config`` classmethod owner.
        output: ``"waveform"``, ``"magnitude"`` or ``"complex"``.
        phase: default phase method for spectrogram output
            (:data:`sepcli.dsp.PHASE_METHODS`); ``"mixture"`` for the others.
        reference: ``"module:function"`` returning the reference-size config
            (the sizes ``docs/models.md`` reports), or ``""`` for the config
            class's defaults.
        recipe: chunking recipe the archive recommends
            (:data:`sepcli.inference.recipes.RECIPES`): ``"overlap-add"``
            (context on both sides, trapezoid crossfade) unless the family
            needs its published one.
        trainable: ``sepcli train --model NAME`` can train it.
        summary: one line for ``--help`` and the docs.
    """

    name: str
    config: str
    model: str
    output: str
    phase: str = "mixture"
    reference: str = ""
    recipe: str = "overlap-add"
    trainable: bool = False
    summary: str = ""

    def config_class(self) -> type:
        return _resolve(self.config)

    def build(self, config: Any) -> Any:
        """A randomly initialised model of this family from a config dataclass."""
        owner = _resolve(self.model)
        factory = getattr(owner, "from_config", None)
        return factory(config) if callable(factory) else owner(config)

    def reference_config(self) -> Any:
        if self.reference:
            return _resolve(self.reference)()
        return self.config_class()()


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_CONFIGS = "sepcli.models.configs"

#: Every family, in the order ``docs/models.md`` presents them.
FAMILY_TABLE: tuple[Family, ...] = (
    Family(
        "umx",
        f"{_CONFIGS}:UMXConfig",
        "sepcli.models.nets.umx:UMX",
        output="magnitude",
        phase="wiener",
        trainable=True,
        summary="Open-Unmix: a BiLSTM magnitude mask per source (Stöter et al., JOSS 2019)",
    ),
    Family(
        "tfc-tdf",
        f"{_CONFIGS}:TFCTDFConfig",
        "sepcli.models.nets.tfc_tdf:TFCTDF",
        output="complex",
        trainable=True,
        summary="TFC-TDF U-Net on the complex spectrogram (Choi et al., ISMIR 2020)",
    ),
    Family(
        "waveform",
        f"{_CONFIGS}:WaveformConfig",
        "sepcli.models.nets.waveform:WaveformUNet",
        output="waveform",
        trainable=True,
        summary="Demucs-style waveform U-Net (Défossez et al., 2019)",
    ),
    Family(
        "htdemucs",
        "sepcli.models.nets.htdemucs:HTDemucsConfig",
        "sepcli.models.nets.htdemucs:HTDemucs",
        output="waveform",
        reference="sepcli.models.nets.htdemucs:reference_config",
        recipe="demucs",
        summary="Hybrid Transformer Demucs, Demucs v4 (Rouard et al., ICASSP 2023)",
    ),
    Family(
        "bs-roformer",
        "sepcli.models.nets.bs_roformer:BSRoformerConfig",
        "sepcli.models.nets.bs_roformer:BSRoformer",
        output="waveform",
        reference="sepcli.models.nets.bs_roformer:reference_config",
        recipe="mdxc",
        summary="BS-RoFormer: band-split RoPE transformer (Lu et al., ICASSP 2024)",
    ),
    Family(
        "mel-roformer",
        "sepcli.models.nets.mel_roformer:MelRoformerConfig",
        "sepcli.models.nets.mel_roformer:MelRoformer",
        output="waveform",
        reference="sepcli.models.nets.mel_roformer:reference_config",
        recipe="mdxc",
        summary="Mel-Band RoFormer: RoFormer on overlapping mel bands (Wang et al., 2023)",
    ),
    Family(
        "mdx23c",
        "sepcli.models.nets.mdx23c:MDX23CConfig",
        "sepcli.models.nets.mdx23c:MDX23C",
        output="waveform",
        reference="sepcli.models.nets.mdx23c:reference_config",
        recipe="mdxc",
        summary="MDX23C: TFC-TDF v3 U-Net of the SDX 2023 entry (Kim et al., 2023)",
    ),
    Family(
        "scnet",
        "sepcli.models.nets.scnet:SCNetConfig",
        "sepcli.models.nets.scnet:SCNet",
        output="waveform",
        reference="sepcli.models.nets.scnet:reference_config",
        recipe="msst",
        summary="SCNet: sparse compression network, band-wise down-sampling and dual-path "
        "LSTMs (Tong et al., ICASSP 2024)",
    ),
    Family(
        "ensemble",
        f"{_CONFIGS}:EnsembleConfig",
        "sepcli.models.bags.ensemble:Ensemble",
        output="waveform",
        reference=f"{_CONFIGS}:reference_ensemble",
        summary="per-stem weighted blend of member models, each run with its own chunking",
    ),
)

_BY_NAME: Mapping[str, Family] = {f.name: f for f in FAMILY_TABLE}

#: Names of every family, in table order.
FAMILIES: tuple[str, ...] = tuple(_BY_NAME)
#: Families ``sepcli train`` can train.
TRAINABLE_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILY_TABLE if f.trainable)


def family(name: str) -> Family:
    """The row of family ``name``; :class:`ConfigError` naming the known ones otherwise."""
    row = _BY_NAME.get(str(name))
    if row is None:
        raise ConfigError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return row


def config_class(name: str) -> type:
    """The config dataclass of family ``name``."""
    return family(name).config_class()


def config_from_dict(name: str, data: Mapping[str, Any] | Any) -> Any:
    """The config dataclass of family ``name`` from a dict (or the dataclass itself)."""
    cls = config_class(name)
    if hasattr(data, "to_dict") and not isinstance(data, cls):
        raise ConfigError(f"a {type(data).__name__} is not a config of family {name!r}")
    return cls.from_dict(data)


def reference_config(name: str) -> Any:
    """The reference size of family ``name`` (reported in ``docs/models.md``)."""
    return family(name).reference_config()


def family_rows(predicate: Callable[[Family], bool] | None = None) -> list[Family]:
    """Rows of the table, optionally filtered (for docs and ``--help``)."""
    return [f for f in FAMILY_TABLE if predicate is None or predicate(f)]
