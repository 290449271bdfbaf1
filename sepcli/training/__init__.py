"""Training: from a folder of stems to an exported model archive (``sepcli train``).

Modules: ``config`` (TrainConfig, TOML, ``--set``), ``cache`` (decode once,
memory-map), ``augment``/``sampling`` (seeded chunks), ``losses``, ``loop``
(Trainer), ``checkpoint`` (atomic, bit-for-bit resume), ``validate``,
``export``, ``distributed`` (torchrun/DDP), ``plot`` (curves.svg) and ``run``
(:func:`train`, the whole pipeline).
"""

from __future__ import annotations

from sepcli.training.config import TrainConfig, apply_overrides, load_config, load_toml, parse_set
from sepcli.training.run import TrainResult, build_run_model, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_run_model",
    "load_config",
    "load_toml",
    "parse_set",
    "train",
]
