"""The sepcli model archive (``.sepcli``): what it says about its module, and
reading and writing it.

Format 2 (written by :func:`save_archive`) is data only: a zip of JSON
metadata and safetensors weights, from which sepcli builds the module with its
own family code (:mod:`sepcli.models.archive.data`). Format 1, a TorchScript
program (``torch.jit.save`` with ``sepcli.json`` as an extra file), is still
read, after every operation of its graphs passed the allow-list of
:mod:`sepcli.models.archive.audit`; ``sepcli models upgrade`` rewrites one as
format 2.

The module (built or loaded) follows this contract:

* attributes ``sample_rate: int``, ``audio_channels: int``, ``num_sources: int``
  (checked against the metadata on load);
* ``forward(mix)`` takes a waveform ``(batch, channel, time)`` float32 at
  ``sample_rate`` and returns, according to ``metadata.output``:

  - ``"waveform"``: ``(batch, source, channel, time)`` real, same ``time``;
  - ``"magnitude"``: ``(batch, source, channel, freq, frame)`` real, >= 0, on the
    STFT grid of :mod:`sepcli.dsp.stft` with ``metadata.stft`` parameters; the
    separator builds the phase (mixture phase, Wiener or Griffin-Lim);
  - ``"complex"``: ``(batch, source, channel, freq, frame)`` complex on that grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sepcli import atomic
from sepcli.dsp import CHUNKING_RECIPES, INPUT_NORMALIZATIONS, PHASE_METHODS
from sepcli.errors import ArchiveError

__all__ = [
    "ARCHIVE_FORMAT",
    "FORMAT_VERSION",
    "TORCHSCRIPT_VERSION",
    "METADATA_FILE",
    "OUTPUT_KINDS",
    "StftParams",
    "ArchiveMetadata",
    "Archive",
    "save_archive",
    "load_archive",
    "read_metadata",
    "probe_archive",
    "count_parameters",
    "check_module",
    "check_integrity",
    "upgrade_archive",
]

ARCHIVE_FORMAT = "sepcli-archive"
FORMAT_VERSION = 2
#: The TorchScript format, read after an audit of its graphs.
TORCHSCRIPT_VERSION = 1
METADATA_FILE = "sepcli.json"
OUTPUT_KINDS = ("waveform", "magnitude", "complex")


@dataclass(frozen=True)
class StftParams:
    """STFT parameters of a spectrogram model (see :mod:`sepcli.dsp.stft`)."""

    n_fft: int
    hop_length: int

    def __post_init__(self) -> None:
        if self.n_fft <= 0 or self.hop_length <= 0 or self.hop_length > self.n_fft:
            raise ArchiveError(
                f"invalid STFT parameters n_fft={self.n_fft} hop_length={self.hop_length}"
            )


@dataclass(frozen=True)
class ArchiveMetadata:
    """What an archive says about its module.

    Attributes:
        name: model name (``[A-Za-z0-9._-]``).
        sources: names of the stems the module outputs, in output order.
        sample_rate: rate the module runs at, in Hz.
        audio_channels: channels the module expects (1 or 2).
        output: ``"waveform"``, ``"magnitude"`` or ``"complex"`` (module docstring).
        family: model family (``"umx"``, ``"tfc-tdf"``, ``"waveform"``, ``"ensemble"``...).
        stft: STFT parameters; required unless ``output == "waveform"``.
        segment_seconds: recommended chunk length for inference, in seconds.
        context_seconds: real audio each chunk should see on each side, in seconds
            (the receptive field beyond which outputs stop depending on input).
        overlap: recommended fraction of a chunk shared with the next (the
            crossfade of overlap-add); 0.25 unless the family says less is enough.
        num_parameters: number of parameters of the module.
        licence: licence of the weights (and the data terms they inherit).
        training_data: what the weights were trained on.
        description: one-line description.
        config: hyper-parameters of the family (a JSON object; for ensembles the
            members and their weight matrix).
        scores: claimed scores, e.g. ``{"musdb18-valid": {"vocals": {"SDR": 5.1}}}``.
        phase: default phase method the separator should use for spectrogram
            output (``"mixture"``, ``"wiener"``, ``"griffin-lim"``).
        recipe: chunking recipe (:mod:`sepcli.inference.recipes`): how the
            separator cuts a track into the chunks this module sees and blends
            them back (``"overlap-add"``; ``"demucs"``, ``"mdxc"`` and ``"msst"``
            reproduce the published models' own chunking).
        extra: free-form JSON for anything else (training run, versions...).
        format_version: archive format version.
        input_normalization: ``None``, or how the separator must normalise the
            input around the module (:mod:`sepcli.inference.normalize`):
            ``"track"`` = MSST's ``inference.normalize`` (the whole track's mean
            and standard deviation; a file is read twice, a stream is refused).
            Written to ``sepcli.json`` only when set, so an archive without it
            has the bytes it had before the field existed, and a sepcli that does
            not know the field refuses an archive that needs it.
    """

    name: str
    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    output: str
    family: str
    stft: StftParams | None = None
    segment_seconds: float = 6.0
    context_seconds: float = 0.0
    overlap: float = 0.25
    num_parameters: int = 0
    licence: str = "unknown"
    training_data: str = "unknown"
    description: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, Any] = field(default_factory=dict)
    phase: str = "mixture"
    recipe: str = "overlap-add"
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    input_normalization: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if isinstance(self.stft, Mapping):
            object.__setattr__(self, "stft", StftParams(**self.stft))
        problems = self.problems()
        if problems:
            raise ArchiveError("invalid archive metadata: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.name or any(not (c.isalnum() or c in "._-") for c in self.name):
            out.append(
                f"name {self.name!r} must be non-empty and use letters, digits, '.', '_', '-'"
            )
        if not self.sources:
            out.append("sources is empty")
        if len(set(self.sources)) != len(self.sources):
            out.append(f"sources has duplicates: {list(self.sources)}")
        if self.sample_rate <= 0:
            out.append(f"sample_rate must be positive, got {self.sample_rate}")
        if self.audio_channels not in (1, 2):
            out.append(f"audio_channels must be 1 or 2, got {self.audio_channels}")
        if self.output not in OUTPUT_KINDS:
            out.append(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.output != "waveform" and self.stft is None:
            out.append(f"output {self.output!r} needs stft parameters")
        if self.segment_seconds <= 0:
            out.append("segment_seconds must be positive")
        if self.context_seconds < 0:
            out.append("context_seconds must be >= 0")
        if not 0.0 <= self.overlap <= 0.9:
            out.append(f"overlap must be between 0 and 0.9, got {self.overlap}")
        if self.phase not in PHASE_METHODS:
            out.append(f"unknown phase method {self.phase!r}")
        if self.recipe not in CHUNKING_RECIPES:
            out.append(
                f"unknown chunking recipe {self.recipe!r} (this sepcli knows "
                f"{', '.join(CHUNKING_RECIPES)}; a newer sepcli may read this archive)"
            )
        if self.input_normalization is not None and (
            self.input_normalization not in INPUT_NORMALIZATIONS
        ):
            out.append(
                f"unknown input normalization {self.input_normalization!r} (this sepcli knows "
                f"{', '.join(INPUT_NORMALIZATIONS)}; a newer sepcli may read this archive)"
            )
        if self.format_version > FORMAT_VERSION:
            out.append(
                f"format version {self.format_version} is newer than this sepcli understands "
                f"({FORMAT_VERSION}); upgrade sepcli"
            )
        return out

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        if data["input_normalization"] is None:
            del data["input_normalization"]  # archives without it keep their bytes
        return json.dumps({"format": ARCHIVE_FORMAT, **data}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ArchiveMetadata:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.pop("format", None) != ARCHIVE_FORMAT:
            raise ArchiveError("metadata does not declare format 'sepcli-archive'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ArchiveError(f"metadata has unknown fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ArchiveError(f"metadata is incomplete: {exc}") from None

    def replace(self, **changes: Any) -> ArchiveMetadata:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Archive:
    """A loaded archive: the scripted module and its metadata."""

    module: torch.jit.ScriptModule
    metadata: ArchiveMetadata
    path: Path | None = None


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def _quiet_jit():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.jit")
    return ctx


def check_module(module: torch.nn.Module, metadata: ArchiveMetadata, where: str) -> None:
    for attr, expected in (
        ("sample_rate", metadata.sample_rate),
        ("audio_channels", metadata.audio_channels),
        ("num_sources", metadata.num_sources),
    ):
        actual = getattr(module, attr, None)
        if actual is None:
            raise ArchiveError(f"{where}: module has no attribute {attr!r} (archive contract)")
        if int(actual) != int(expected):
            raise ArchiveError(
                f"{where}: metadata says {attr}={expected} but the module has {attr}={actual}"
            )
    # Family modules also carry what they were built with; foreign modules need not.
    family = getattr(module, "family", None)
    if family is not None and str(family) != metadata.family:
        raise ArchiveError(
            f"{where}: metadata family {metadata.family!r} != module family {family!r}"
        )
    config_json = getattr(module, "config_json", None)
    if config_json is not None:
        built = json.dumps(json.loads(str(config_json)), sort_keys=True)
        if built != json.dumps(dict(metadata.config), sort_keys=True):
            raise ArchiveError(f"{where}: metadata config does not match the module's config")
    if metadata.stft is not None and hasattr(module, "n_fft") and hasattr(module, "hop_length"):
        built_stft = (int(module.n_fft), int(module.hop_length))
        if built_stft != (metadata.stft.n_fft, metadata.stft.hop_length):
            raise ArchiveError(
                f"{where}: metadata STFT {metadata.stft.n_fft}/{metadata.stft.hop_length} != "
                f"module {built_stft[0]}/{built_stft[1]}"
            )


def probe_archive(archive: Archive, seconds: float = 0.25) -> None:
    """Run the module on a short silent input and check its output layout.

    Models whose recipe fixes the chunk length (``demucs``, ``mdxc``; they may be
    traced at it) are probed at ``segment_seconds``; an ensemble is probed member
    by member, each at its own rate (the separator never runs it whole).

    Raises :class:`ArchiveError` when the output shape or kind does not match
    the metadata.
    """
    meta = archive.metadata
    where = str(archive.path) if archive.path else meta.name
    device = next((p.device for p in archive.module.parameters()), torch.device("cpu"))
    members = getattr(archive.module, "members", None) if meta.family == "ensemble" else None
    if members is not None:
        for i, member in enumerate(members.children()):
            rate = int(member.sample_rate) if hasattr(member, "sample_rate") else meta.sample_rate
            fixed = str(getattr(member, "recipe", "overlap-add")) != "overlap-add"
            n = max(int((float(member.segment) if fixed else seconds) * rate), 1)
            with torch.no_grad():
                y = member(torch.zeros(1, meta.audio_channels, n, device=device))
            want = (1, int(member.blend.shape[1]), meta.audio_channels, n)
            if tuple(y.shape) != want:
                raise ArchiveError(f"{where}: member {i} output shape {tuple(y.shape)} != {want}")
        return
    if meta.recipe != "overlap-add":
        seconds = meta.segment_seconds
    length = max(int(round(seconds * meta.sample_rate)), 1)
    mix = torch.zeros(1, meta.audio_channels, length, device=device)
    with torch.no_grad():  # not inference_mode: scripted graphs that saw autograd fail there
        out = archive.module(mix)
    if not isinstance(out, torch.Tensor):
        raise ArchiveError(f"{where}: module returned {type(out).__name__}, not a tensor")
    if meta.output == "waveform":
        expected = (1, meta.num_sources, meta.audio_channels, length)
        if tuple(out.shape) != expected:
            raise ArchiveError(f"{where}: output shape {tuple(out.shape)} != expected {expected}")
    else:
        assert meta.stft is not None
        freq = meta.stft.n_fft // 2 + 1
        frames = 1 + length // meta.stft.hop_length
        expected = (1, meta.num_sources, meta.audio_channels, freq, frames)
        if tuple(out.shape) != expected:
            raise ArchiveError(f"{where}: output shape {tuple(out.shape)} != expected {expected}")
        if (meta.output == "complex") != out.is_complex():
            raise ArchiveError(f"{where}: output kind does not match metadata {meta.output!r}")


def save_archive(
    module: torch.nn.Module,
    metadata: ArchiveMetadata,
    path: str | os.PathLike[str],
    probe: bool = True,
) -> Path:
    """Write ``module`` as a data archive (format 2) with ``metadata``.

    ``module`` is a model of one of sepcli's families (eager, or scripted from an
    older archive): its weights are written as safetensors, its family and
    config as JSON. The module a reader will build from the file is built,
    loaded, scripted, checked against ``metadata`` and (``probe``) run on a
    short silence before the file is renamed into place, so an archive that
    would not load is never written; the scripted module is then cached for the
    file's hash (:mod:`.scriptcache`).

    Raises:
        ArchiveError: ``module`` is not a sepcli family (no family code to rebuild
            it from data), or does not match ``metadata``.
    """
    from sepcli.models.archive.data import write_data_archive
    from sepcli.models.families import FAMILIES

    path = Path(path)
    family = getattr(module, "family", None)
    if family is None or str(family) not in FAMILIES or metadata.family != str(family):
        raise ArchiveError(
            f"{metadata.name}: only modules of sepcli's families are written as archives "
            f"(family {metadata.family!r}: no family code rebuilds it from data)"
        )
    if metadata.num_parameters == 0:
        metadata = metadata.replace(num_parameters=count_parameters(module))
    metadata = metadata.replace(format_version=FORMAT_VERSION)
    check_module(module, metadata, metadata.name)
    ctx = _quiet_jit()
    try:
        with atomic.atomic_path(path) as tmp:
            rebuilt = write_data_archive(
                module, metadata.to_json(), metadata.family, dict(metadata.config), tmp
            )
            scripted = _script(rebuilt)
            check_module(scripted, metadata, metadata.name)
            if probe:
                probe_archive(Archive(scripted, metadata))
    finally:
        ctx.__exit__(None, None, None)
    from sepcli.hashing import sha256_file
    from sepcli.models.archive import scriptcache

    scriptcache.store(sha256_file(path), scripted)
    return path


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """The scripted, frozen (eval, no grad) ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return torch.jit.script(module)


def upgrade_archive(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Rewrite a format-1 (TorchScript) archive of a known family as data.

    The old archive is loaded (and so audited) first; its weights are the
    scripted module's parameters and buffers, its family and config those it
    was built with (``family``/``config_json`` attributes and the metadata).

    Raises:
        ArchiveError: the archive is already data, or its family is not one of
            sepcli's.
    """
    archive = load_archive(source)
    where = str(source)
    if archive.metadata.format_version >= FORMAT_VERSION:
        raise ArchiveError(f"{where}: already a data archive (format {FORMAT_VERSION})")
    family = getattr(archive.module, "family", None)
    if family is None or getattr(archive.module, "config_json", None) is None:
        raise ArchiveError(
            f"{where}: the module does not say which family built it; only archives of "
            "sepcli's families can be rewritten as data"
        )
    from sepcli.models.families import FAMILIES

    if str(family) not in FAMILIES:
        raise ArchiveError(f"{where}: family {str(family)!r} is not one of sepcli's")
    return save_archive(archive.module, archive.metadata, output)


def _member_names(path: Path, raw: bytes | None = None) -> list[str]:
    if raw is None and not path.is_file():
        raise ArchiveError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path if raw is None else io.BytesIO(raw)) as zf:
            return zf.namelist()
    except Exception as exc:  # BadZipFile, OSError, EOFError, ValueError...
        raise ArchiveError(f"{path}: not a sepcli model archive ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_metadata(path: str | os.PathLike[str]) -> ArchiveMetadata:
    """Read only the metadata of an archive (fast: no module is loaded)."""
    return _metadata_of(Path(path))


def _metadata_of(path: Path, raw: bytes | None = None) -> ArchiveMetadata:
    names = _member_names(path, raw)
    if METADATA_FILE in names:
        member = METADATA_FILE
    else:
        found = [n for n in names if n.endswith("/extra/" + METADATA_FILE)]
        if not found:
            raise ArchiveError(f"{path}: not a sepcli model archive (no {METADATA_FILE} inside)")
        member = found[0]
    try:
        with zipfile.ZipFile(path if raw is None else io.BytesIO(raw)) as zf:
            text = zf.read(member)
    except Exception as exc:
        raise ArchiveError(f"{path}: damaged archive ({_first_line(exc)})") from None
    try:
        return ArchiveMetadata.from_json(text)
    except ArchiveError as exc:
        raise ArchiveError(f"{path}: {exc}") from None


def check_integrity(path: str | os.PathLike[str]) -> None:
    """Check every zip member of an archive against its CRC-32.

    ``torch.jit.save`` stores weights uncompressed with a CRC per member, but
    ``torch.jit.load`` never checks them: an archive with flipped bytes in its
    weights loads and silently gives other stems. Reading every member costs
    about 2 ms per 5 MB.

    Raises:
        ArchiveError: a member's bytes do not match its CRC, or the zip is unreadable.
    """
    _check_crcs(Path(path))


def _check_crcs(path: Path, raw: bytes | None = None) -> None:
    try:
        with zipfile.ZipFile(path if raw is None else io.BytesIO(raw)) as zf:
            bad = zf.testzip()
    except Exception as exc:  # BadZipFile, OSError, EOFError, NotImplementedError, zlib...
        raise ArchiveError(f"{path}: damaged archive ({_first_line(exc)})") from None
    if bad is not None:
        member = bad.split("/", 1)[-1]
        raise ArchiveError(
            f"{path}: damaged archive (member {member} fails its CRC check); "
            "download or copy it again"
        )


def load_archive(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", probe: bool = False
) -> Archive:
    """Load an archive: format 2 built from data, format 1 after its audit.

    The file is read once; its SHA-256 (remembered per file identity, see
    :mod:`.scriptcache`) finds the scripted module of a format-2 archive or the
    audit verdict of a format-1 one in the user cache.

    Raises :class:`ArchiveError` (one line) for a file that is not an archive, a
    damaged one (a zip member that fails its CRC), metadata that is invalid,
    weights that do not fit the family's config, a format-1 archive whose
    graphs use an operation outside the allow-list, or a module that does not
    match its metadata.
    """
    from sepcli.models.archive import scriptcache
    from sepcli.models.archive.data import read_stable

    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such model file")
    raw, st = read_stable(path)
    known = scriptcache.known_digest(path, st)
    digest = known or hashlib.sha256(raw).hexdigest()
    names = _member_names(path, raw)
    if METADATA_FILE in names:
        module, metadata = _load_data(path, raw, digest, torch.device(device))
    else:
        module, metadata = _load_torchscript(path, raw, digest, torch.device(device))
    if known is None:
        scriptcache.remember_digest(path, st, digest)
    module.eval()
    check_module(module, metadata, str(path))
    archive = Archive(module, metadata, path)
    if probe:
        probe_archive(archive)
    return archive


def _load_data(
    path: Path, raw: bytes, digest: str, device: torch.device
) -> tuple[torch.jit.ScriptModule, ArchiveMetadata]:
    from sepcli.models.archive import scriptcache
    from sepcli.models.archive.data import build_for_weights, open_data_archive, read_weights
    from sepcli.models.families import FAMILIES

    text, layout = open_data_archive(path, raw)
    try:
        metadata = ArchiveMetadata.from_json(text)
    except ArchiveError as exc:
        raise ArchiveError(f"{path}: {exc}") from None
    if metadata.format_version != FORMAT_VERSION:
        raise ArchiveError(
            f"{path}: a data archive must say format_version {FORMAT_VERSION}, "
            f"not {metadata.format_version}"
        )
    if metadata.family not in FAMILIES:
        raise ArchiveError(f"{path}: family {metadata.family!r} is not one of sepcli's")
    cached = scriptcache.load_cached(digest, device)
    if cached is not None:
        return cached, metadata
    ctx = _quiet_jit()
    try:
        weights = read_weights(raw, str(path))
        module = build_for_weights(metadata.family, dict(metadata.config), layout, weights,
                                   str(path))  # fmt: skip
        scripted = _script(module)
    finally:
        ctx.__exit__(None, None, None)
    scriptcache.store(digest, scripted)
    return scripted.to(device), metadata


def _load_torchscript(
    path: Path, raw: bytes, digest: str, device: torch.device
) -> tuple[torch.jit.ScriptModule, ArchiveMetadata]:
    from sepcli.models.archive import scriptcache
    from sepcli.models.archive.audit import audit_module, scan_code

    # whatever version its metadata claims, a TorchScript archive is format 1
    metadata = _metadata_of(path, raw).replace(format_version=TORCHSCRIPT_VERSION)
    _check_crcs(path, raw)
    passed = scriptcache.audited(digest)  # these very bytes passed the audit before
    if not passed:
        scan_code(path, raw)
    extra = {METADATA_FILE: ""}
    ctx = _quiet_jit()
    try:
        module = torch.jit.load(io.BytesIO(raw), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError with a long C++ trace
        raise ArchiveError(
            f"{path}: not a loadable TorchScript archive ({_first_line(exc)})"
        ) from None
    finally:
        ctx.__exit__(None, None, None)
    if not passed:
        audit_module(module, str(path))
        scriptcache.remember_audit(digest)
    return module, metadata
