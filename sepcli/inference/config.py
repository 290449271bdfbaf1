"""The separator's options: one frozen :class:`SeparatorConfig`, validated once.

``sepcli separate``, ``sepcli evaluate`` and Python users build one (the CLI
with the :func:`sepcli.cli.common.separator_options` decorator) and hand it to
:class:`~sepcli.inference.separator.Separator`. ``None`` means "what the model
archive recommends"; names carry their unit (``_seconds``; overlap is a fraction).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sepcli.dsp import PHASE_METHODS
from sepcli.errors import ConfigError

__all__ = [
    "SeparatorConfig",
    "MAX_OVERLAP",
    "MAX_SEGMENT_SECONDS",
    "MAX_SHIFTS",
    "GL_INITS",
    "PRECISIONS",
]

#: Largest overlap between consecutive chunks (beyond it, chunks repeat work 10x).
MAX_OVERLAP = 0.9
#: Longest chunk accepted, in seconds: ten minutes. A chunk's memory grows with its
#: length (the default model: about 10 MB per second; ``--segment 600`` peaked at
#: 6 GB, ``--segment 100000`` at 18 GB before failing); a track shorter than a
#: chunk runs at its own length, so a longer segment only costs memory.
MAX_SEGMENT_SECONDS = 600.0
#: Most random time-shift passes.
MAX_SHIFTS = 100
GL_INITS = ("mixture", "random")
#: ``precision`` values (the network forward's dtype under autocast).
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SeparatorConfig:
    """How a :class:`~sepcli.inference.separator.Separator` runs a model.

    Attributes:
        segment_seconds: chunk length in seconds (``None``: the archive's).
        overlap: fraction of a chunk shared with the next, in ``[0, 0.9]``
            (``None``: the archive's).
        shifts: random time-shift passes averaged (0 = none).
        seed: seed of the shifts and of random phase initialisation.
        context_seconds: real neighbouring audio each chunk sees on both sides
            (``None``: the archive's, at least one STFT window for spectrogram
            models).
        batch_size: chunks per forward pass; ``0`` = auto (1 on the CPU, on a
            GPU the largest power of two up to 16 that fits, found by halving on
            out-of-memory errors).
        precision: dtype of the network forward, ``fp32``, ``fp16`` or ``bf16``
            (autocast; the STFT, inverse STFT and phase steps stay float32).
        phase: phase method for ``magnitude`` archives (``None``: the archive's).
        wiener_iters: EM iterations of the ``wiener`` phase method.
        gl_iters: iterations of ``griffin-lim`` and ``misi``.
        gl_init: their starting phase, ``mixture`` or ``random``.
    """

    segment_seconds: float | None = None
    overlap: float | None = None
    shifts: int = 0
    seed: int = 0
    context_seconds: float | None = None
    batch_size: int = 0
    phase: str | None = None
    wiener_iters: int = 1
    gl_iters: int = 32
    gl_init: str = "mixture"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        problems = []
        if self.segment_seconds is not None and not (
            math.isfinite(self.segment_seconds) and self.segment_seconds > 0
        ):
            problems.append(
                f"segment must be a positive number of seconds, got {self.segment_seconds}"
            )
        elif self.segment_seconds is not None and self.segment_seconds > MAX_SEGMENT_SECONDS:
            problems.append(
                f"segment {self.segment_seconds:g} s is longer than the {MAX_SEGMENT_SECONDS:g} s "
                "allowed (a chunk's memory grows with its length; longer tracks are processed "
                "in several chunks anyway)"
            )
        if self.overlap is not None and not 0.0 <= self.overlap <= MAX_OVERLAP:
            problems.append(f"overlap must be between 0 and {MAX_OVERLAP}, got {self.overlap}")
        if not 0 <= self.shifts <= MAX_SHIFTS:
            problems.append(f"shifts must be between 0 and {MAX_SHIFTS}, got {self.shifts}")
        if self.context_seconds is not None and not (
            math.isfinite(self.context_seconds) and self.context_seconds >= 0
        ):
            problems.append(f"context must be >= 0 seconds, got {self.context_seconds}")
        if self.batch_size < 0:
            problems.append(f"batch size must be >= 1 (or 0 = auto), got {self.batch_size}")
        if self.phase is not None and self.phase not in PHASE_METHODS:
            problems.append(
                f"unknown phase method {self.phase!r}; choose from {', '.join(PHASE_METHODS)}"
            )
        if not 0 <= self.wiener_iters <= 10:
            problems.append(f"Wiener iterations must be between 0 and 10, got {self.wiener_iters}")
        if not 1 <= self.gl_iters <= 1000:
            problems.append(
                f"Griffin-Lim iterations must be between 1 and 1000, got {self.gl_iters}"
            )
        if self.gl_init not in GL_INITS:
            problems.append(f"gl_init must be 'mixture' or 'random', got {self.gl_init!r}")
        if self.precision not in PRECISIONS:
            problems.append(
                f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    def replace(self, **changes: Any) -> SeparatorConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
