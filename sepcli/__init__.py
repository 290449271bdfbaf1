"""sepcli: music source separation from the command line and from Python.

>>> import sepcli
>>> sep = sepcli.Separator(sepcli.load_model("default"))
>>> stems = sep.separate(mix, sample_rate=44100, stems=["vocals", "accompaniment"])
>>> sepcli.separate_file("song.mp3", "out/", stems=["vocals"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "Separator",
    "SeparatorConfig",
    "load_model",
    "separate_file",
    "Archive",
    "ArchiveMetadata",
    "load_archive",
    "save_archive",
    "SepcliError",
]

if TYPE_CHECKING:
    from sepcli.errors import SepcliError
    from sepcli.hub import load_model
    from sepcli.inference.config import SeparatorConfig
    from sepcli.inference.separator import Separator
    from sepcli.models.archive import Archive, ArchiveMetadata, load_archive, save_archive

# Imported on first use, so that `import sepcli` (and `sepcli --help`) stay fast.
_LAZY = {
    "Separator": "sepcli.inference.separator",
    "SeparatorConfig": "sepcli.inference.config",
    "load_model": "sepcli.hub",
    "Archive": "sepcli.models.archive",
    "ArchiveMetadata": "sepcli.models.archive",
    "load_archive": "sepcli.models.archive",
    "save_archive": "sepcli.models.archive",
    "SepcliError": "sepcli.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sepcli' has no attribute {name!r}")


def separate_file(
    path: str,
    out_dir: str = "separated",
    stems: list[str] | None = None,
    model: str = "default",
    device: str = "auto",
    format: str = "wav",
    **separator_options: Any,
) -> dict[str, str]:
    """Separate one file into ``out_dir/<track>/<stem>.<format>``; returns stem -> path.

    ``separator_options`` are fields of :class:`sepcli.SeparatorConfig`
    (``segment_seconds=``, ``shifts=``...).
    """
    from pathlib import Path

    from sepcli.hub import load_model as _load
    from sepcli.inference.separator import Separator as _Separator
    from sepcli.inference.separator import resolve_device, track_name

    dev = resolve_device(device)
    sep = _Separator(_load(model, device=dev), device=dev, **separator_options)
    names = [r.name for r in sep.stems(stems)]
    outputs = {s: Path(out_dir) / track_name(path) / f"{s}.{format}" for s in names}
    result = sep.separate_file(path, outputs, format=format)
    return {k: str(v) for k, v in result.outputs.items()}
