"""Turn a model name or path into a local archive: resolve, download, verify, remove.

Public entry points (re-exported by :mod:`sepcli.hub`): :func:`resolve_model`,
:func:`load_model`, :func:`list_models`, :func:`verify_models`,
:func:`remove_model`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sepcli.errors import (
    DownloadError,
    IntegrityError,
    ModelNotFoundError,
    OfflineError,
    RegistryError,
)
from sepcli.hashing import sha256_file
from sepcli.hub.cache import (
    cache_root,
    entry_dir,
    entry_path,
    file_lock,
    model_root,
    read_stamp,
    stamp_is_current,
    stamp_path,
    write_stamp,
)
from sepcli.hub.download import download_file
from sepcli.hub.registry import NAME_RE, ModelEntry, Registry, load_registry
from sepcli.hub.transport import HttpSettings
from sepcli.progress import Progress, ProgressFn

if TYPE_CHECKING:
    from sepcli.models.archive import Archive

__all__ = [
    "ModelStatus",
    "VerifyResult",
    "resolve_model",
    "local_model_file",
    "load_model",
    "open_registry",
    "ensure_model",
    "list_models",
    "verify_models",
    "remove_model",
    "offline_mode",
]

log = logging.getLogger(__name__)

#: Testing/deployment override: what ``default`` resolves to (an archive path or
#: another registry name) instead of the archive packaged in ``sepcli/assets``.
DEFAULT_ENV = "SEPCLI_DEFAULT_MODEL"
_TRUE = {"1", "true", "yes", "on"}
_MODEL_SUFFIXES = (".sepcli", ".pt", ".pth", ".th", ".ts", ".zip")


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``SEPCLI_OFFLINE`` is 1/true/yes/on."""
    if offline is not None:
        return offline
    return os.environ.get("SEPCLI_OFFLINE", "").strip().lower() in _TRUE


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith((".", "~"))
        or text.lower().endswith(_MODEL_SUFFIXES)
    )


def local_model_file(name_or_path: str) -> Path | None:
    """The file ``name_or_path`` names on disk (``~`` expanded), or None for a
    registry name. An existing file wins over a registry name of the same
    spelling; text that looks like a path (a separator, a leading ``.`` or
    ``~``, a model suffix) but is no file raises :class:`ModelNotFoundError`."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if _looks_like_path(text):
        what = (
            "is a folder, not a model file" if path.is_dir() else "no such model file or model name"
        )
        raise ModelNotFoundError(f"{text}: {what}")
    return None


def packaged_asset(filename: str) -> Path:
    """Path of ``sepcli/assets/<filename>`` inside the installed package (may not exist)."""
    return Path(str(resources.files("sepcli").joinpath("assets", filename)))


def _builtin_path(entry: ModelEntry) -> Path:
    assert entry.builtin is not None
    path = packaged_asset(entry.builtin)
    if not path.is_file():
        raise ModelNotFoundError(
            f"model {entry.name!r}: the packaged archive sepcli/assets/{entry.builtin} is missing "
            f"from this installation; pass --model with another name or a path, or set {DEFAULT_ENV}"
        )
    return path


def _is_cached(entry: ModelEntry, path: Path) -> bool:
    """Cheap check (no hashing): the file is there with the expected size, or for a
    converted archive, its recorded hash is next to it."""
    if not path.is_file():
        return False
    if entry.format == "sepcli":
        return path.stat().st_size == entry.files[0].size
    return _expected_sha256(entry, path) != ""


def _legacy_sidecar(path: Path) -> Path:
    """``<archive>.sha256``: where sepcli before stamps recorded a converted archive's hash."""
    return path.with_name(path.name + ".sha256")


def _expected_sha256(entry: ModelEntry, path: Path) -> str:
    """What ``path`` must hash to: the registry's SHA-256 for a ``sepcli`` entry,
    else the hash recorded when sepcli converted (or composed) the archive; ``""``
    when nothing was recorded."""
    if entry.format == "sepcli":
        return entry.files[0].sha256 or ""
    stamp = read_stamp(path)
    if stamp is not None:
        return str(stamp["sha256"])
    try:
        return _legacy_sidecar(path).read_text().strip()
    except OSError:
        return ""


def _record(path: Path, sha256: str, st: os.stat_result | None = None) -> None:
    """Stamp ``path`` as hashing to ``sha256`` (replacing a legacy ``.sha256`` sidecar)."""
    write_stamp(path, sha256, st)
    _legacy_sidecar(path).unlink(missing_ok=True)


def _forget(path: Path) -> None:
    """Delete a cached file and what was recorded about it."""
    for p in (path, stamp_path(path), _legacy_sidecar(path)):
        p.unlink(missing_ok=True)


def _check_cached(entry: ModelEntry, path: Path) -> None:
    """Hash ``path`` again unless its stamp says it is unchanged since it was last
    verified; raise :class:`IntegrityError` naming the file when it no longer
    matches (the file is left for ``sepcli models verify`` to repair)."""
    expected = _expected_sha256(entry, path)
    if stamp_is_current(path, expected):
        return
    st = path.stat()
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(
            f"model {entry.name!r}: {path} changed since it was verified (SHA-256 {actual[:16]}... "
            f"is not {expected[:16]}...); run 'sepcli models verify {entry.name}' to download it again"
        )
    log.info(
        "model %r: %s changed on disk since its last check; hash still matches", entry.name, path
    )
    _record(path, actual, st)


def _convert_openunmix(entry: ModelEntry, files: dict[str, Path], dest: Path) -> None:
    """Build our archive at ``dest`` from verified Open-Unmix per-target state dicts
    (``{target: path}`` in output order) and the entry's preset."""
    from sepcli.models.archive import save_archive  # torch loads only when a model does
    from sepcli.models.importers.openunmix import convert_files

    module, metadata = convert_files(
        files, dict(entry.preset), name=entry.name, licence=entry.licence,
        training_data=entry.training_data, description=entry.description, scores=dict(entry.scores),
        extra={"registry": {"format": entry.format, "files": {f.target: f.sha256 for f in entry.files}}},
    )  # fmt: skip
    save_archive(module, metadata, dest)


def _convert_demucs(entry: ModelEntry, files: dict[str, Path], dest: Path) -> None:
    """Build our archive at ``dest`` from verified Demucs checkpoints (``{signature:
    path}`` in bag order): one file is one model, several a bag with the entry's
    ``bag.weights`` / ``bag.segment``."""
    import json

    from sepcli.models.archive import save_archive
    from sepcli.models.importers.demucs import import_demucs

    bag = entry.raw.get("bag") or {}
    if not isinstance(bag, dict) or set(bag) - {"weights", "segment"}:
        raise RegistryError(f"registry entry {entry.name!r}: 'bag' may hold weights and segment")
    if len(files) == 1 and not bag:
        source = next(iter(files.values()))
    else:
        folder = next(iter(files.values())).parent
        lines = [f"models: {json.dumps(list(files))}"]
        for key in ("weights", "segment"):
            if bag.get(key) is not None:
                lines.append(f"{key}: {json.dumps(bag[key])}")
        source = folder / f"{entry.name}.yaml"
        source.write_text("\n".join(lines) + "\n")
    module, metadata = import_demucs(source, name=entry.name)
    registry = {"format": entry.format, "files": {f.target: f.sha256 for f in entry.files}}
    metadata = metadata.replace(
        licence=entry.licence, training_data=entry.training_data,
        description=entry.description or metadata.description, scores=dict(entry.scores),
        extra={**metadata.extra, "registry": registry},
    )  # fmt: skip
    save_archive(module, metadata, dest)


def _convert_msst(entry: ModelEntry, files: dict[str, Path], dest: Path) -> None:
    """Build our archive at ``dest`` from a verified MSST YAML (``config``) and
    checkpoint (``checkpoint``), of the entry's ``model_type`` (or the YAML's)."""
    from sepcli.models.archive import save_archive
    from sepcli.models.importers.msst import import_msst

    config = files.get("config")
    if config is None:  # the config is inline in the entry (JSON is YAML)
        config = files["checkpoint"].with_name(f"{entry.name}.config.json")
        config.write_text(json.dumps(entry.raw["config"], indent=1) + "\n", encoding="utf-8")
    module, metadata = import_msst(
        config, files["checkpoint"], model_type=entry.raw.get("model_type"),
        name=entry.name, licence=entry.licence, training_data=entry.training_data,
        description=entry.description or None, scores=dict(entry.scores),
    )  # fmt: skip
    registry = {"format": entry.format, "files": {f.target: f.sha256 for f in entry.files}}
    metadata = metadata.replace(extra={**metadata.extra, "registry": registry})
    save_archive(module, metadata, dest)


_CONVERTERS = {"openunmix": _convert_openunmix, "demucs": _convert_demucs, "msst": _convert_msst}


def _fill(
    entry: ModelEntry, root: Path, settings: HttpSettings, progress: ProgressFn | None
) -> Path:
    """Download (and convert) ``entry`` into the cache; the caller holds the lock."""
    dest = entry_path(root, entry)
    if entry.format == "bag":
        return _fill_bag(entry, root, settings, progress)
    total = entry.size or None

    def files_progress(base: int) -> ProgressFn | None:
        if progress is None:
            return None
        # bytes of the whole entry, named by the model (an entry may have several files)
        return lambda p: progress(Progress("download", base + p.done, total, "bytes", entry.name))

    if entry.format == "sepcli":
        download_file(
            entry.files[0], dest, settings, files_progress(0), label=f"model {entry.name!r}"
        )
        _record(dest, entry.files[0].sha256 or "")  # download_file hashed it
        return dest
    src = entry_dir(root, entry) / "src"
    paths: dict[str, Path] = {}
    base = 0
    for spec in entry.files:
        path = src / spec.filename
        if not (path.is_file() and path.stat().st_size == spec.size):
            download_file(spec, path, settings, files_progress(base), label=f"model {entry.name!r}")
        base += spec.size or 0
        assert spec.target is not None
        paths[spec.target] = path
    _CONVERTERS[entry.format](entry, paths, dest)
    st = dest.stat()
    _record(dest, sha256_file(dest), st)
    shutil.rmtree(src, ignore_errors=True)  # the converted archive is what we keep
    return dest


def _fill_bag(
    entry: ModelEntry, root: Path, settings: HttpSettings, progress: ProgressFn | None
) -> Path:
    """Each part downloaded and converted once (into its own cache entry), then the
    bag composed from them: every stem from the part that the entry names for it,
    each member keeping its own chunking (:func:`sepcli.models.bags.blend.compose_bag`)."""
    from sepcli.models.archive import load_archive  # torch loads only when a model does
    from sepcli.models.bags.blend import export_bag

    offline = all(_local_path(part, root) is not None for part, _ in entry.parts)
    parts = []
    for part, stems in entry.parts:
        try:
            path = ensure_model(part, root, offline=offline, settings=settings, progress=progress)
        except IntegrityError:
            raise  # the part's bytes are wrong: that part is the news
        except DownloadError as exc:  # no network, a server down: say what the bag needs
            raise DownloadError(
                f"{_bag_needs(entry, root)}; downloading {part.name!r} failed "
                f"({str(exc).removeprefix(f'model {part.name!r}: ')}); "
                f"run 'sepcli models download {entry.name}' when online to fetch them all"
            ) from None
        parts.append((load_archive(path), stems))
    dest = entry_path(root, entry)
    export_bag(
        parts,
        dest,
        name=entry.name,
        accompaniment=str(entry.raw.get("accompaniment", "auto")),
        description=entry.description,
        scores=dict(entry.scores),
        registry={"format": "bag", "parts": [dict(p) for p in entry.raw["parts"]]},
        part_names=[part.name for part, _ in entry.parts],
        licences=[
            part.licence if part.licence not in ("", "unknown") else archive.metadata.licence
            for (part, _), (archive, _) in zip(entry.parts, parts, strict=True)
        ],
    )
    st = dest.stat()
    _record(dest, sha256_file(dest), st)
    return dest


def _megabytes(num: int | None) -> str:
    return "size unknown" if num is None else f"{num / 1e6:.1f} MB"


def _bag_needs(entry: ModelEntry, root: Path) -> str:
    """``model 'best' is a bag of 2 models; not in the cache: a (1.0 MB), b (2.0 MB)``."""
    missing = [part for part, _ in entry.parts if _local_path(part, root) is None]
    listed = ", ".join(f"{part.name} ({_megabytes(part.size)})" for part in missing)
    total = sum(part.size or 0 for part in missing)
    return (
        f"model {entry.name!r} is a bag of {len(entry.parts)} models; not in the cache: "
        f"{listed} ({_megabytes(total)} in all)"
    )


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folder: Path, new_folders: list[Path]) -> None:
    """After a failed download (lock held): leave the cache as it was found.

    When ``folder`` holds nothing but its lock file (and an empty ``src/``), the
    lock file is deleted, then ``folder`` and the parents this call created, as
    long as they are empty. A partial download (``.part`` with bytes) is kept for
    resuming, and with it the folder and the lock.
    """
    src = folder / "src"
    with contextlib.suppress(OSError):
        src.rmdir()
    try:
        left = {p.name for p in folder.iterdir()}
    except OSError:
        return
    if left - {".lock"}:
        return
    (folder / ".lock").unlink(missing_ok=True)  # waiters see the unlinked file and retry
    for path in [folder, *new_folders]:
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: another model lives there
            break


def ensure_model(
    entry: ModelEntry,
    root: Path,
    *,
    offline: bool = False,
    settings: HttpSettings | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Local path of ``entry``, downloading it first when missing (unless offline)."""
    if entry.builtin is not None:
        return _builtin_path(entry)
    dest = entry_path(root, entry)
    if _is_cached(entry, dest):
        _check_cached(entry, dest)
        return dest
    parts_local = entry.format == "bag" and all(
        _local_path(part, root) is not None for part, _ in entry.parts
    )
    if offline and entry.format == "bag" and not parts_local:
        raise OfflineError(
            f"{_bag_needs(entry, root)}; offline mode is on; run "
            f"'sepcli models download {entry.name}' while online to fetch them all"
        )
    if offline and not parts_local:  # a bag of cached parts is composed offline
        raise OfflineError(
            f"model {entry.name!r} is not in the cache ({root}) and offline mode is on; "
            f"run 'sepcli models download {entry.name}' while online"
        )
    if not entry.verifiable:
        files = [f for part, _ in entry.parts for f in part.files] or list(entry.files)
        missing = ", ".join(f.filename for f in files if not f.verifiable)
        raise RegistryError(
            f"model {entry.name!r}: the registry has no full SHA-256 for {missing}; refusing an "
            "unverifiable download (add the hashes with an extra registry, see docs/pretrained.md)"
        )
    folder = entry_dir(root, entry)
    new_folders = _missing_folders(folder)
    with file_lock(folder / ".lock"):
        if _is_cached(entry, dest):  # another process finished it while we waited
            _check_cached(entry, dest)
            return dest
        try:
            return _fill(entry, root, settings or HttpSettings.from_env(), progress)
        except BaseException:
            _remove_if_empty(folder, new_folders)
            raise


def open_registry(
    registry: str | Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> Registry:
    """The built-in registry plus extras, honouring the same options as :func:`resolve_model`."""
    return load_registry(registry, cache_root=cache_root(cache_dir), offline=offline_mode(offline))


def resolve_model(
    name_or_path: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    registry: str | Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> Path:
    """Local file of a model given by path or registry name.

    * an existing file is returned as is;
    * ``default`` is the archive packaged in ``sepcli/assets`` (or what
      ``SEPCLI_DEFAULT_MODEL`` names: a path or another registry name);
    * any other name is looked up in the registry and downloaded into the cache
      on first use (never when ``offline``, or ``SEPCLI_OFFLINE=1``).

    ``progress`` gets :class:`~sepcli.progress.Progress` events (task ``download``,
    bytes, ``item`` the model name) while downloading, none for a file that is
    already local (a path, the packaged default, a cached model);
    ``timeout`` (seconds without data) and ``retries`` default to
    ``SEPCLI_TIMEOUT`` / ``SEPCLI_RETRIES``.

    Raises :class:`ModelNotFoundError` (unknown name, with close matches),
    :class:`OfflineError`, :class:`DownloadError`, :class:`IntegrityError` or
    :class:`RegistryError`.
    """
    text = os.fspath(name_or_path)
    path = local_model_file(text)
    if path is not None:
        return path
    override = os.environ.get(DEFAULT_ENV, "").strip()
    if text == "default" and override and override != "default":
        return resolve_model(
            override, cache_dir=cache_dir, offline=offline, registry=registry,
            progress=progress, timeout=timeout, retries=retries,
        )  # fmt: skip
    offline = offline_mode(offline)
    root = cache_root(cache_dir)
    settings = HttpSettings.from_env(timeout, retries)
    entry = load_registry(registry, cache_root=root, offline=offline, settings=settings).get(text)
    return ensure_model(entry, root, offline=offline, settings=settings, progress=progress)


def load_model(name_or_path: str, device: Any = "cpu", **resolve_kwargs: Any) -> Archive:
    """:func:`resolve_model`, then :func:`sepcli.models.archive.load_archive`."""
    from sepcli.models.archive import load_archive  # torch loads only when a model does

    return load_archive(resolve_model(name_or_path, **resolve_kwargs), device)


@dataclass(frozen=True)
class ModelStatus:
    """A registry entry and where it is on disk (``path`` is None when not local)."""

    entry: ModelEntry
    path: Path | None

    @property
    def local(self) -> bool:
        return self.path is not None


def _local_path(entry: ModelEntry, root: Path) -> Path | None:
    if entry.builtin is not None:
        try:
            return _builtin_path(entry)
        except ModelNotFoundError:
            return None
    path = entry_path(root, entry)
    return path if _is_cached(entry, path) else None


def list_models(
    registry: str | Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> list[ModelStatus]:
    """Every registry entry, sorted by name, with its local file if present."""
    root = cache_root(cache_dir)
    reg = load_registry(registry, cache_root=root, offline=offline_mode(offline))
    return [ModelStatus(e, _local_path(e, root)) for e in sorted(reg, key=lambda e: e.name)]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one model.

    ``status`` is ``"ok"``, ``"repaired"`` (was corrupt, downloaded again),
    ``"corrupt"`` (not repaired: left in place with ``fix=False``, deleted when
    offline), ``"missing"`` (not in the cache) or ``"builtin"`` (packaged with
    sepcli; nothing to verify).
    """

    name: str
    status: str
    path: Path | None
    detail: str = ""


def _check(entry: ModelEntry, path: Path) -> str:
    """Empty string when ``path`` matches what the registry (or the recorded hash
    of a converted archive) says, and then its stamp is renewed; else what is
    wrong. Always hashes; never deletes."""
    expected = _expected_sha256(entry, path)
    st = path.stat()
    if entry.format == "sepcli" and st.st_size != entry.files[0].size:
        return f"size {st.st_size} != {entry.files[0].size}"
    actual = sha256_file(path)
    if actual != expected:
        recorded = "" if entry.format == "sepcli" else "recorded "
        return f"SHA-256 {actual} != {recorded}{expected or '(none)'}"
    _record(path, actual, st)
    return ""


def verify_models(
    names: Sequence[str] | None = None,
    *,
    fix: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    registry: str | Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> list[VerifyResult]:
    """Re-hash cached models (``names``, or every cached one) against the registry.

    With ``fix`` a corrupt file is deleted and (unless offline) downloaded again;
    without, it is only reported and left where it is.
    """
    offline = offline_mode(offline)
    root = cache_root(cache_dir)
    settings = HttpSettings.from_env()
    reg = load_registry(registry, cache_root=root, offline=offline, settings=settings)
    entries = [reg.get(n) for n in names] if names else [e for e in reg if _local_path(e, root)]
    results = []
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.builtin is not None:
            results.append(VerifyResult(entry.name, "builtin", _local_path(entry, root)))
            continue
        path = entry_path(root, entry)
        with file_lock(entry_dir(root, entry) / ".lock"):
            if not path.is_file():
                results.append(VerifyResult(entry.name, "missing", None, "not in the cache"))
                continue
            problem = _check(entry, path)
            if problem and fix:
                _forget(path)
        if not problem:
            results.append(VerifyResult(entry.name, "ok", path))
        elif not fix:
            results.append(
                VerifyResult(entry.name, "corrupt", path, f"{problem} in {path}; left as is")
            )
        elif not offline:
            log.warning("model %r: %s in %s; downloading again", entry.name, problem, path)
            fixed = ensure_model(entry, root, settings=settings, progress=progress)
            results.append(VerifyResult(entry.name, "repaired", fixed, problem))
        else:
            results.append(VerifyResult(entry.name, "corrupt", None, f"{problem}; deleted {path}"))
    return results


def remove_model(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete every cached version of ``name``; returns what was deleted (may be empty).

    Works for names no longer in the registry; refuses unsafe names.
    """
    if not NAME_RE.fullmatch(name):
        raise ModelNotFoundError(f"{name!r} is not a model name")
    folder = model_root(cache_root(cache_dir), name)
    if not folder.is_dir():
        return []
    removed = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock")
    shutil.rmtree(folder)
    return removed
