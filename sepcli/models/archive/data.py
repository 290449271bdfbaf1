"""Format 2 of ``.sepcli``: an archive that is data, never code.

A zip (members stored, each with its CRC-32) holding:

* ``sepcli.json``: the :class:`~sepcli.models.archive.format.ArchiveMetadata`
  (family, config, stems, chunking recipe, card), ``format_version`` 2;
* ``weights.safetensors``: the module's state dict (safetensors: a JSON header
  and raw tensor bytes; nothing in it can run);
* ``members.json`` (ensembles only): per member, its chunking and phase step
  (:data:`sepcli.models.bags.ensemble.MEMBER_LAYOUT`); each member's family and
  config are in the ensemble's config, its tensors under ``members.N.model.``.

Loading builds the module from sepcli's own family code (the family table) on
the meta device first and compares its tensors' names and shapes with the
weights' header (a config asking for a huge module costs nothing before it is
refused), then builds it for real, loads the weights strictly (a missing, extra
or reshaped tensor is named) and scripts it; the scripted module is cached per
archive SHA-256 in the user's cache (:mod:`.scriptcache`), so only the first
load of an archive pays for scripting.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from sepcli.errors import ArchiveError, SepcliError

__all__ = [
    "WEIGHTS_FILE",
    "MEMBERS_FILE",
    "write_data_archive",
    "read_stable",
    "open_data_archive",
    "read_weights",
    "load_tensors",
    "load_strict",
    "check_shapes",
    "weights_header",
    "build_for_weights",
    "build_from_data",
    "state_for_data",
]

WEIGHTS_FILE = "weights.safetensors"
MEMBERS_FILE = "members.json"
_METADATA_FILE = "sepcli.json"  # same name as format 1's extra file
_DATA_MEMBERS = {_METADATA_FILE, WEIGHTS_FILE, MEMBERS_FILE}


def build_from_data(family: str, config: Any, layout: Any = None) -> torch.nn.Module:
    """A randomly initialised module of ``family`` (an ensemble with its member
    ``layout``), built by sepcli's own family code."""
    from sepcli.models.build import build_model
    from sepcli.models.families import config_from_dict

    if family == "ensemble":
        from sepcli.models.bags.ensemble import Ensemble

        return Ensemble.from_layout(config_from_dict("ensemble", config), layout)
    if layout is not None:
        raise ArchiveError(f"a {family} archive has no {MEMBERS_FILE}")
    return build_model(family, config)


def state_for_data(module: torch.nn.Module, reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s tensors under the names of ``reference``'s state dict, as CPU
    contiguous copies (safetensors stores no shared or strided storage).

    ``module`` may be a scripted module of the same family, whose state dict
    also lists buffers the eager module keeps out of its own (non-persistent).
    """
    state = module.state_dict()
    wanted = reference.state_dict()
    transient = {name for name, _ in reference.named_buffers()} - set(wanted)
    extra = [k for k in state if k not in wanted and k not in transient]
    if extra:
        raise ArchiveError(f"tensor {extra[0]!r} is not part of a {reference.family} module")
    return {k: state[k].detach().to("cpu").contiguous().clone() for k in wanted if k in state}


def check_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    """Every name of ``expected`` (the module's state dict) in ``found`` (the
    weights), no other, same shapes; otherwise one line naming the first
    offending tensor in the module's order (with both shapes for a reshaped one)."""
    for name, want in expected.items():
        if name not in found:
            missing = sum(1 for k in expected if k not in found)
            raise ArchiveError(f"{where}: weights lack tensor {name!r} ({missing} missing)")
        if found[name] != want:
            raise ArchiveError(
                f"{where}: tensor {name!r} has shape {found[name]}, the config gives {want}"
            )
    for name in found:
        if name not in expected:
            raise ArchiveError(f"{where}: weights hold tensor {name!r}, unknown to the family")


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load ``tensors`` into ``module``: every name present, no other, same shapes
    and dtypes; otherwise one line naming the first offending tensor."""
    expected = module.state_dict()
    check_shapes(
        {k: tuple(v.shape) for k, v in expected.items()},
        {k: tuple(t.shape) for k, t in tensors.items()},
        where,
    )
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.dtype != want.dtype:
            raise ArchiveError(
                f"{where}: tensor {name!r} is {tensor.dtype}, the module holds {want.dtype}"
            )
    module.load_state_dict(tensors, strict=True)


def build_for_weights(
    family: str, config: Any, layout: Any, weights: bytes, where: str
) -> torch.nn.Module:
    """The module of ``family`` and ``config`` (an ensemble with its member
    ``layout``) with the safetensors blob ``weights`` loaded strictly.

    The module is first built on the meta device (no memory for its tensors) and
    its state dict compared, name by name and shape by shape, with the weights'
    header: a config that asks for a module the weights do not fill (a crafted
    archive asking for a huge one) is refused in one line before anything is
    allocated; only then are the tensors read and the module built for real.

    Raises:
        ArchiveError: the config cannot be built, or the weights do not fit it.
    """
    shapes = weights_header(weights, where)
    try:
        with torch.device("meta"):
            skeleton = build_from_data(family, config, layout)
    except SepcliError as exc:
        raise ArchiveError(f"{where}: cannot build the {family} module ({exc})") from None
    check_shapes({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes, where)
    del skeleton
    tensors = load_tensors(weights, where)
    module = build_from_data(family, config, layout)
    load_strict(module, tensors, where)
    return module


def write_data_archive(
    module: torch.nn.Module, metadata_json: str, family: str, config: Any, path: Path
) -> torch.nn.Module:
    """Write ``module`` as data to ``path`` (a temporary file the caller renames).

    Returns the module rebuilt from what was written (eager, weights loaded), so
    the caller checks and scripts exactly what a reader will get.
    """
    from safetensors.torch import save as save_tensors

    layout = None
    if family == "ensemble":
        from sepcli.models.bags.ensemble import Ensemble

        layout = Ensemble.layout(module)
    rebuilt = build_from_data(family, config, layout)
    tensors = state_for_data(module, rebuilt)
    load_strict(rebuilt, tensors, str(path))
    members = [(_METADATA_FILE, metadata_json.encode("utf-8"))]
    if layout is not None:
        members.append((MEMBERS_FILE, json.dumps(layout, indent=1, sort_keys=True).encode()))
    members.append((WEIGHTS_FILE, save_tensors(tensors, metadata={"format": "pt"})))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            # a fixed date: the same module and metadata give the same bytes (and hash)
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return rebuilt


def read_stable(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` and its ``stat`` from the descriptor they were read
    through; :class:`ArchiveError` if the file changed while it was read."""
    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            raw = fh.read()
            after = os.fstat(fh.fileno())
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size, after.st_mtime_ns, after.st_ctime_ns
    ) or len(raw) != before.st_size:  # fmt: skip
        raise ArchiveError(f"{path}: the file changed while it was read")
    return raw, before


def open_data_archive(path: Path, raw: bytes) -> tuple[str, Any]:
    """The metadata JSON and member layout (or ``None``) of a format-2 archive's
    bytes ``raw``, every member name checked.

    Raises:
        ArchiveError: one line, for anything that is not a well-formed archive.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            unknown = sorted(set(names) - _DATA_MEMBERS)
            if unknown:
                raise ArchiveError(f"{path}: unexpected member {unknown[0]!r} in a data archive")
            if WEIGHTS_FILE not in names:
                raise ArchiveError(f"{path}: damaged archive (no {WEIGHTS_FILE})")
            text = zf.read(_METADATA_FILE).decode("utf-8")
            layout = json.loads(zf.read(MEMBERS_FILE)) if MEMBERS_FILE in names else None
    except SepcliError:
        raise
    except Exception as exc:  # zipfile, zlib, UnicodeDecodeError, JSON: a damaged file
        raise ArchiveError(f"{path}: damaged archive ({_first_line(exc)})") from None
    return text, layout


def read_weights(raw: bytes, where: str) -> bytes:
    """The safetensors bytes of an archive's ``raw`` bytes, checked against their CRC."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return zf.read(WEIGHTS_FILE)
    except Exception as exc:
        raise ArchiveError(f"{where}: damaged archive ({_first_line(exc)})") from None


def weights_header(weights: bytes, where: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a safetensors blob declares, from its header
    alone (an 8-byte little-endian length, then JSON); no tensor is read."""
    size = int.from_bytes(weights[:8], "little") if len(weights) >= 8 else -1
    if not 0 < size <= len(weights) - 8:
        raise ArchiveError(f"{where}: damaged weights (no safetensors header)")
    try:
        header = json.loads(weights[8 : 8 + size])
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ArchiveError(f"{where}: damaged weights ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise ArchiveError(f"{where}: damaged weights (the header is not a JSON object)")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):  # fmt: skip
            raise ArchiveError(f"{where}: damaged weights (tensor {name!r} has no valid shape)")
        shapes[name] = tuple(shape)
    return shapes


def load_tensors(weights: bytes, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors blob; :class:`ArchiveError` if it is not one."""
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(weights)
    except Exception as exc:  # SafetensorError and kin
        raise ArchiveError(f"{where}: damaged weights ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
