"""The attributes every family module carries for the archive, set in one place.

A family's ``nn.Module`` calls :func:`set_contract` first thing in ``__init__``
(after ``super().__init__()``). The attributes are plain ``str``/``int`` so that
TorchScript scripts them as constants of the module, and
:func:`sepcli.models.archive.check_module` compares them with an archive's
metadata on save and load:

* ``family: str``, ``config_json: str`` (the config as sorted JSON): what the
  module was built from;
* ``sample_rate: int``, ``audio_channels: int``, ``num_sources: int``: the
  contract of :mod:`sepcli.models.archive.format`.

``config`` (the frozen config dataclass) is kept too, for the Python-only
``archive_timing``/``archive_overlap`` methods; TorchScript does not see it.
A family that runs in its published chunks takes those two methods from
:class:`PublishedChunks`.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

__all__ = ["set_contract", "PublishedChunks"]


def set_contract(
    module: nn.Module,
    config: Any,
    *,
    sample_rate: int | None = None,
    audio_channels: int | None = None,
) -> None:
    """Give ``module`` the archive-contract attributes of ``config``.

    Args:
        module: the family module, inside its ``__init__``.
        config: its frozen config dataclass (``family`` class attribute,
            ``to_dict()``, ``sample_rate``, ``audio_channels``, ``num_sources``).
        sample_rate, audio_channels: override the config's (an ensemble takes
            them from its first member's module).
    """
    module.config = config
    module.family = str(config.family)
    module.config_json = json.dumps(config.to_dict(), sort_keys=True)
    module.sample_rate = int(config.sample_rate if sample_rate is None else sample_rate)
    module.audio_channels = int(config.audio_channels if audio_channels is None else audio_channels)
    module.num_sources = int(config.num_sources)


class PublishedChunks:
    """``archive_timing``/``archive_overlap`` of a family run in the chunks it was
    published with: ``config.chunk_samples`` samples, ``config.num_overlap``
    chunks over each sample (MDX23C and the RoFormers, recipe ``mdxc``).

    A mixin before ``nn.Module`` (``class MDX23C(PublishedChunks, nn.Module)``);
    the methods are Python-only.
    """

    @torch.jit.unused
    def archive_timing(self) -> tuple[float, float]:
        """(segment, context) in seconds: one published chunk, no extra context."""
        return self.config.chunk_samples / self.sample_rate, 0.0

    @torch.jit.unused
    def archive_overlap(self) -> float:
        """Fraction of a chunk shared with the next: ``1 - 1 / num_overlap``."""
        return min(0.9, 1.0 - 1.0 / self.config.num_overlap)
