"""One progress-event type for every long operation.

Downloads, the training data cache, the training loop and evaluation runs call
a :data:`ProgressFn` with a :class:`Progress` event; the CLI turns events into
bars and lines, and Python callers log or ignore them. The library never draws
anything itself.

Tasks and units sepcli emits:

========== ========= ==========================================================
task       unit      when
========== ========= ==========================================================
download   bytes     bytes of a model arrive (``item``: the model name)
decode     tracks    the training cache decodes a track (``item``: its name)
train      steps     an epoch starts (``done=0``) and after every step
                     (``item``: ``"epoch N"``; ``info``: ``epoch``, ``loss``)
validate   tracks    validation starts (``info``: ``epoch``)
epoch      epochs    an epoch ended (``info``: its log record)
evaluate   tracks    a track was scored, resumed or skipped (``item``: its
                     name; ``info``: ``status``, ``message``)
========== ========= ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Progress", "ProgressFn"]


@dataclass(frozen=True)
class Progress:
    """How far one long operation has come.

    Attributes:
        task: what runs (``"download"``, ``"decode"``, ``"train"``...; see the module).
        done: units finished so far, ``>= 0``.
        total: units in all; ``None`` when unknown (a stream of unknown length).
        unit: what is counted: ``"bytes"``, ``"tracks"``, ``"steps"``, ``"epochs"``.
        item: what is being worked on, for display (a model or track name, ``"epoch 3"``).
        info: further values of this task (a loss, a status); read-only.
    """

    task: str
    done: int
    total: int | None
    unit: str
    item: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], ``None`` when the total is unknown or zero."""
        if not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)


#: A progress callback: called with each :class:`Progress` event; its return value is ignored.
ProgressFn = Callable[[Progress], None]
