"""The sepcli model archive: one TorchScript file with JSON metadata inside.

An archive is what ``torch.jit.save`` writes (a zip), holding the scripted
module and an extra file ``sepcli.json`` with :class:`ArchiveMetadata`. No
pickled Python classes are involved: the CLI runs an archive without the
model's Python code.

The scripted module must follow this contract:

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
from sepcli.dsp import CHUNKING_RECIPES, PHASE_METHODS
from sepcli.errors import ArchiveError

__all__ = [
    "ARCHIVE_FORMAT",
    "FORMAT_VERSION",
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
]

ARCHIVE_FORMAT = "sepcli-archive"
FORMAT_VERSION = 1
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
    """Script ``module`` (if needed), check it against ``metadata`` and write an archive.

    The file is written to a temporary name in the same folder and renamed into
    place, so an existing archive is never half-overwritten.
    """
    path = Path(path)
    ctx = _quiet_jit()
    try:
        if not isinstance(module, torch.jit.ScriptModule):
            module = torch.jit.script(module.eval())
        module = module.eval()
        if metadata.num_parameters == 0:
            metadata = metadata.replace(num_parameters=count_parameters(module))
        check_module(module, metadata, metadata.name)
        if probe:
            probe_archive(Archive(module, metadata))
        with atomic.atomic_path(path) as tmp:
            torch.jit.save(module, str(tmp), _extra_files={METADATA_FILE: metadata.to_json()})
    finally:
        ctx.__exit__(None, None, None)
    return path


def read_metadata(path: str | os.PathLike[str]) -> ArchiveMetadata:
    """Read only the metadata of an archive (fast: no module is loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/extra/" + METADATA_FILE)]
            if not names:
                raise ArchiveError(
                    f"{path}: not a sepcli model archive (no {METADATA_FILE} inside)"
                )
            text = zf.read(names[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a sepcli model archive ({exc})") from None
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
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArchiveError(f"{path}: damaged archive ({exc})") from None
    if bad is not None:
        member = bad.split("/", 1)[-1]
        raise ArchiveError(
            f"{path}: damaged archive (member {member} fails its CRC check); "
            "download or copy it again"
        )


def load_archive(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", probe: bool = False
) -> Archive:
    """Load an archive written by :func:`save_archive`.

    Raises :class:`ArchiveError` for a file that is not an archive, a damaged
    one (a zip member that fails its CRC), metadata that is invalid, or a module
    that does not match its metadata.
    """
    path = Path(path)
    metadata = read_metadata(path)
    check_integrity(path)
    extra = {METADATA_FILE: ""}
    ctx = _quiet_jit()
    try:
        module = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError with a long C++ trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"{path}: not a loadable TorchScript archive ({first})") from None
    finally:
        ctx.__exit__(None, None, None)
    module.eval()
    check_module(module, metadata, str(path))
    archive = Archive(module, metadata, path)
    if probe:
        probe_archive(archive)
    return archive
