"""Output planning for ``sepcli separate``: what to write, what to skip and why.

Rules (docs/usage.md, "Outputs"):

* an existing file is never overwritten without ``--force``; only the stems
  that are missing are separated;
* each output folder holds a small provenance file, :data:`PROVENANCE_FILE`,
  naming for every stem file written there the input, the model (name and
  SHA-256 of its archive) and the settings; a re-run tells "done with this
  model and settings" apart from "another model's file" or "a file sepcli did
  not write", and says which;
* while a process works on an output it holds a lock beside it, so two runs on
  one folder never write the same file twice, and any temp file of that output
  found then is a leftover of a killed run and is removed;
* folders scanned for inputs never yield our own outputs.

Locks are :class:`filelock.FileLock` (``flock`` on POSIX, ``msvcrt`` on
Windows, as the model cache uses) on short-lived hidden files beside the
outputs, removed on release so that none is left in the user's folders: the
holder unlinks its file before unlocking, and a waiter that then gets the lock
on the unlinked file notices (filelock checks the file is still linked) and
locks the path afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import string
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from sepcli import atomic, audio
from sepcli.errors import AudioEncodeError

__all__ = [
    "PROVENANCE_FILE",
    "Skip",
    "TrackPlan",
    "check_free_space",
    "check_writable",
    "drop_own_outputs",
    "locked_outputs",
    "plan_track",
    "read_provenance",
    "record_outputs",
    "remove_stale_temps",
    "suggest_template",
    "template_fields",
]

#: Hidden JSON file in each output folder: output file name -> how it was made.
PROVENANCE_FILE = ".sepcli-run.json"
_LOCK_SUFFIX = ".sepcli-lock"
#: Temp files our writers create beside a target ``NAME``:
#: ``.NAME.sepcli-<8 hex>[.f32].tmp`` (:func:`sepcli.atomic.create_temp`), and
#: ``.NAME.<8 hex or mkstemp chars>[.f32].tmp`` from sepcli 0.x before the mark.
_TEMP_TAIL = re.compile(r"\.(sepcli-)?[0-9a-z_]{8}(\.f32)?\.tmp$")


# ------------------------------------------------------------------ templates


def template_fields(path: Path, track: str, ext: str, model: str) -> dict[str, str]:
    """Values of the ``--filename`` placeholders for input ``path``."""
    return {
        "track": track,
        "ext": ext,
        "model": model,
        "parent": path.parent.name,
        "input_ext": path.suffix.lstrip(".").lower() or "noext",
    }


def _render(template: str, fields: Mapping[str, str], stem: str) -> str:
    return template.format(stem=stem, **fields)


def suggest_template(
    template: str,
    inputs: Sequence[Path],
    track_of: Any,
    ext: str,
    model: str,
) -> str | None:
    """A ``--filename`` template under which ``inputs`` get distinct outputs, or None.

    Tries, in order: ``{parent}/`` in front (same names in other folders),
    ``-{input_ext}`` after ``{track}`` (``song.mp3`` and ``song.wav`` in one
    folder), both. ``track_of`` maps an input path to its track name.
    """
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    candidates = []
    if "parent" not in names:
        candidates.append("{parent}/" + template)
    if "input_ext" not in names:
        with_ext = template.replace("{track}", "{track}-{input_ext}", 1)
        candidates.append(with_ext)
        if "parent" not in names:
            candidates.append("{parent}/" + with_ext)
    for candidate in candidates:
        seen: set[str] = set()
        for p in inputs:
            out = _render(candidate, template_fields(p, track_of(p), ext, model), "x")
            if out in seen:
                break
            seen.add(out)
        else:
            return candidate
    return None


# ------------------------------------------------------------------ discovery


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def drop_own_outputs(folder: Path, files: list[Path], out_dir: Path) -> tuple[list[Path], int]:
    """Remove our own outputs from the files found by scanning input ``folder``.

    Dropped: files under ``out_dir`` when it is a sub-folder of ``folder``
    (``separate album -r -o album/stems``), and files listed in the provenance
    file of their own folder (outputs of an earlier run with another ``-o``).
    Returns the kept files and how many were dropped.
    """
    root = folder.resolve()
    out = out_dir.resolve()
    skip_tree = out != root and _is_within(out, root)
    recorded: dict[Path, set[str]] = {}
    kept: list[Path] = []
    for f in files:
        parent = f.parent.resolve()
        if skip_tree and _is_within(parent, out):
            continue
        if parent not in recorded:
            recorded[parent] = set(read_provenance(parent))
        if f.name in recorded[parent]:
            continue
        kept.append(f)
    return kept, len(files) - len(kept)


# ------------------------------------------------------------------ provenance


def read_provenance(folder: Path) -> dict[str, dict[str, Any]]:
    """Output file name -> record, from ``folder``'s provenance file ({} if none/unreadable)."""
    try:
        data = json.loads((Path(folder) / PROVENANCE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return {k: v for k, v in outputs.items() if isinstance(v, dict)} if outputs else {}


def _folder_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the lock of ``folder``'s provenance file (a hidden file beside it)."""
    return _lock_file(_lock_path(folder / PROVENANCE_FILE))


def record_outputs(outputs: Mapping[str, Path], record: Mapping[str, Any]) -> None:
    """Add ``record`` (the run's identity) for each written file to its folder's
    provenance file, atomically, under a folder lock; entries whose file is
    gone are dropped."""
    by_folder: dict[Path, list[Path]] = {}
    for p in outputs.values():
        by_folder.setdefault(Path(p).parent, []).append(Path(p))
    for folder, files in by_folder.items():
        with _folder_lock(folder):
            remove_stale_temps([folder / PROVENANCE_FILE])  # its writers hold this lock
            entries = read_provenance(folder)
            for f in files:
                entries[f.name] = dict(record)
            entries = {k: v for k, v in entries.items() if (folder / k).exists()}
            atomic.write_text(
                folder / PROVENANCE_FILE,
                json.dumps({"version": 1, "outputs": entries}, indent=1, sort_keys=True) + "\n",
            )


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Skip:
    """Why an existing output is left alone: ``kind`` is ``"done"`` (same input,
    model and settings), ``"other"`` (written by sepcli differently) or
    ``"foreign"`` (no record: not written by sepcli)."""

    path: Path
    kind: str
    reason: str


@dataclass
class TrackPlan:
    """Outputs of one input: those to write and those skipped."""

    todo: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, Skip] = field(default_factory=dict)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diffs = []
    if old.get("input") != new.get("input"):
        diffs.append(f"made from {old.get('input')}")
    elif old.get("input_sha256") and new.get("input_sha256"):  # chain steps: the bytes read
        if old["input_sha256"] != new["input_sha256"]:
            diffs.append("the input changed since")
    elif old.get("input_size") != new.get("input_size") or old.get("input_mtime_ns") != new.get(
        "input_mtime_ns"
    ):
        diffs.append("the input changed since")
    if old.get("model") != new.get("model"):
        diffs.append(f"made by model {old.get('model')!r}, not {new.get('model')!r}")
    elif old.get("archive_sha256") != new.get("archive_sha256"):
        diffs.append(f"made by another archive of model {old.get('model')!r}")
    old_s, new_s = old.get("settings") or {}, new.get("settings") or {}
    # A setting the old record lacks came with a newer sepcli: the old run had
    # no choice there, so it is not a difference.
    changed = [
        f"{k} {old_s.get(k)!r} -> {new_s.get(k)!r}"
        for k in sorted(old_s)
        if old_s.get(k) != new_s.get(k)
    ]
    if changed:
        diffs.append("settings differ: " + ", ".join(changed))
    return diffs


def plan_track(outputs: Mapping[str, Path], record: Mapping[str, Any], force: bool) -> TrackPlan:
    """Split ``outputs`` (stem -> path) into those to write and those to skip.

    With ``force`` everything is written. Otherwise a missing file is written
    and an existing one is skipped, with the reason from its provenance record
    compared to ``record`` (this run's identity).
    """
    plan = TrackPlan()
    records: dict[Path, dict[str, dict[str, Any]]] = {}
    for stem, path in outputs.items():
        path = Path(path)
        if force or not (path.exists() or path.is_symlink()):
            plan.todo[stem] = path
            continue
        folder = path.parent
        if folder not in records:
            records[folder] = read_provenance(folder)
        old = records[folder].get(path.name)
        if old is None:
            plan.skipped[stem] = Skip(path, "foreign", "exists, not written by sepcli")
            continue
        diffs = _differences(old, record)
        if diffs:
            plan.skipped[stem] = Skip(path, "other", "exists, " + "; ".join(diffs))
        else:
            plan.skipped[stem] = Skip(path, "done", "done earlier with this model and settings")
    return plan


# ------------------------------------------------------------------ locks and leftovers


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}{_LOCK_SUFFIX}"


@contextlib.contextmanager
def _lock_file(path: Path, on_wait: Any = None) -> Iterator[None]:
    """Exclusive lock on a hidden file created for the purpose and removed on release.

    A waiter that locked a file already removed by its holder retries on the
    new one (filelock checks that the locked file is still linked), so removal
    never lets two holders in. On Windows an open file cannot be unlinked;
    filelock removes it there after unlocking.
    """
    lock = FileLock(path)
    waited = False
    for _ in range(100):
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if on_wait is not None and not waited:
                    on_wait(path)
                waited = True
                lock.acquire()
        except FileNotFoundError:  # another run removed the empty folder it had made
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        break
    else:
        raise OSError(f"{path}: could not lock (its folder keeps disappearing)")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        lock.release()


@contextlib.contextmanager
def locked_outputs(paths: Iterable[Path], on_wait: Any = None) -> Iterator[None]:
    """Hold a lock for each output path (folders created as needed), in a fixed
    order so that two runs never deadlock. ``on_wait(lock_path)`` is called
    once when another process holds one."""
    ordered = sorted({Path(p) for p in paths}, key=str)
    created: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            for p in ordered:
                try:
                    created.extend(_make_folders(p.parent))
                    stack.enter_context(_lock_file(_lock_path(p), on_wait))
                except OSError as exc:
                    raise AudioEncodeError(
                        f"{p}: cannot create or lock it ({exc.strerror or exc})"
                    ) from None
            yield
    finally:
        for folder in reversed(created):  # folders made for outputs never written
            with contextlib.suppress(OSError):
                folder.rmdir()


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; return the folders created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
    return list(reversed(missing))


def remove_stale_temps(paths: Iterable[Path]) -> list[Path]:
    """Remove temp files of ``paths`` left by a killed run; return what was removed.

    Call only while holding :func:`locked_outputs` for ``paths``: every sepcli
    process writing one of them holds that lock, so a temp file found then has
    no live writer.
    """
    removed: list[Path] = []
    for p in paths:
        p = Path(p)
        prefix = f".{p.name}."
        try:
            entries = list(os.scandir(p.parent))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(prefix) and _TEMP_TAIL.fullmatch(name[len(prefix) - 1 :]):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


# ------------------------------------------------------------------ writability


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folders: Iterable[Path], what: str) -> None:
    """Raise ``AudioEncodeError`` unless files can be created in each folder.

    A folder that does not exist yet is judged by its nearest existing
    ancestor. The check creates and removes a hidden probe file, so it also
    sees read-only mounts and root-squashed shares, where ``os.access`` can lie.
    """
    probed: dict[Path, str | None] = {}
    for folder in folders:
        base = _nearest_existing(Path(folder))
        if base not in probed:
            probed[base] = _probe(base)
        problem = probed[base]
        if problem is not None:
            shown = folder if base == Path(folder).absolute() else f"{folder} (in {base})"
            raise AudioEncodeError(f"{what} {shown}: cannot write there ({problem})")


def check_writable_file(path: Path, what: str) -> None:
    """Raise ``AudioEncodeError`` naming ``path`` unless it can be created (or
    replaced, as atomic writes do) where it is: its folder is probed as in
    :func:`check_writable`."""
    folder = Path(path).absolute().parent
    base = _nearest_existing(folder)
    problem = _probe(base)
    if problem is not None:
        where = "" if base == folder else f", in {base}"
        raise AudioEncodeError(f"{what} {path}: cannot write this file ({problem}{where})")


def _probe(folder: Path) -> str | None:
    if not folder.is_dir():
        return "not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".sepcli-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


# ------------------------------------------------------------------ free space

#: Smallest plausible encoded size, in bytes per second per channel (FLAC of
#: quiet material, MP3/Ogg at their lowest settings): the check refuses only a
#: track that cannot fit, never one that might.
_MIN_ENCODED_BPS = {"flac": 20_000, "mp3": 4_000, "ogg": 4_000}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free_space(
    source: Path,
    outputs: Mapping[str, Path],
    fmt: str,
    bit_depth: int | None,
    out_channels: int | None,
) -> None:
    """Refuse a track whose outputs cannot fit on their disk, before separating it.

    While a track is separated every stem is staged beside its target as raw
    32-bit float (the ``rescale`` clip policy needs the whole stem's peak
    before encoding); the encoded stems then appear one by one. The lower
    bound of that peak use (every stem's staging plus one encoded stem) is
    compared with the free space of each output file system; the input's
    length is the decoder's estimate. Inputs whose length is unknown pass.

    Raises:
        AudioEncodeError: one line naming the folder, the space needed and free.
    """
    try:
        info = audio.probe(source)
    except Exception:  # noqa: BLE001 - the separation itself reports unreadable inputs
        return
    if not info.frames:
        return
    channels = out_channels or (info.channels if info.channels <= 2 else 2)
    staged = info.frames * channels * 4
    if fmt == "wav":
        bits = audio.output_bit_depth(bit_depth, info.bit_depth, fmt)
        encoded = info.frames * channels * bits // 8
    else:
        encoded = int(info.frames / info.sample_rate * channels * _MIN_ENCODED_BPS[fmt])
    needs: dict[int, tuple[Path, int]] = {}
    for path in outputs.values():
        folder = _nearest_existing(Path(path).parent)
        try:
            device = os.stat(folder).st_dev
        except OSError:
            continue
        where, total = needs.get(device, (Path(path).parent, encoded))
        needs[device] = (where, total + staged)
    for where, need in needs.values():
        try:
            free = shutil.disk_usage(_nearest_existing(where)).free
        except OSError:
            continue
        if free < need:
            raise AudioEncodeError(
                f"{source}: needs at least {_mb(need)} free in {where} (its stems are staged "
                f"as 32-bit float until the track is done), only {_mb(free)} free"
            )
