"""Test-only access to the model code vendored in ``audio-separator`` 0.47.1.

Installed without dependencies, plus only what the vendored modules import::

    pip install --no-deps audio-separator==0.47.1
    pip install "einops>=0.7" "rotary-embedding-torch>=0.6.1,<0.7.0" \
        "beartype>=0.18.5,<0.19.0" "librosa>=0.10" ml_collections
    pip install --no-deps pydub==0.25.1   # imported by common_separator (MDXC demix)

The package's ``__init__`` imports its whole ``Separator`` (onnxruntime and
more), so it is never run: :func:`reference_module` puts empty stand-ins for
the parent packages in ``sys.modules`` whose ``__path__`` points at the real
folders, then imports only the submodule asked for. Nothing here is copied
into sepcli.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import ModuleType

import pytest

_PARENTS = (
    "audio_separator",
    "audio_separator.separator",
    "audio_separator.separator.uvr_lib_v5",
    "audio_separator.separator.uvr_lib_v5.roformer",
    "audio_separator.separator.architectures",
)


def _stub_parents() -> None:
    if all(name in sys.modules for name in _PARENTS):
        return
    spec = importlib.util.find_spec("audio_separator")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("audio-separator 0.47.1 is not installed (test-only reference)")
    root = list(spec.submodule_search_locations)[0]
    for name in _PARENTS:
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__path__ = [root + name[len("audio_separator") :].replace(".", "/")]
        sys.modules[name] = module


def reference_module(name: str) -> ModuleType:
    """Import ``audio_separator.separator.<name>`` without its packages' ``__init__``.

    Skips the calling test when the reference or one of its imports is missing.
    """
    for dep in ("einops", "rotary_embedding_torch", "beartype"):
        pytest.importorskip(dep)
    _stub_parents()
    try:
        return importlib.import_module("audio_separator.separator." + name)
    except ImportError as exc:
        pytest.skip(f"audio-separator reference module {name} cannot be imported: {exc}")
