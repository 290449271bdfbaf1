"""Pretrained models: registry, verified resumable downloads, cache, offline use.

>>> from sepcli.hub import resolve_model, load_model
>>> path = resolve_model("umxhq")          # downloads once, then from the cache
>>> archive = load_model("default")        # the archive packaged with sepcli

See ``docs/pretrained.md`` for the registry format and environment variables.
"""

from __future__ import annotations

from sepcli.hub.cache import cache_root
from sepcli.hub.download import download_file
from sepcli.hub.load import (
    ModelStatus,
    VerifyResult,
    ensure_model,
    list_models,
    load_model,
    local_model_file,
    offline_mode,
    open_registry,
    remove_model,
    resolve_model,
    verify_models,
)
from sepcli.hub.registry import (
    FileSpec,
    ModelEntry,
    Registry,
    load_registry,
    parse_entry,
    parse_manifest,
)
from sepcli.hub.transport import HttpSettings
from sepcli.progress import Progress, ProgressFn  # re-exported: the events of progress=

__all__ = [
    "resolve_model",
    "load_model",
    "local_model_file",
    "list_models",
    "verify_models",
    "remove_model",
    "ensure_model",
    "open_registry",
    "offline_mode",
    "cache_root",
    "download_file",
    "load_registry",
    "parse_entry",
    "parse_manifest",
    "ModelStatus",
    "VerifyResult",
    "ModelEntry",
    "FileSpec",
    "Registry",
    "HttpSettings",
    "Progress",
    "ProgressFn",
]
