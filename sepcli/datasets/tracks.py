"""One track of a dataset: where its stems are and how to load them.

A :class:`Track` is a plain description (no audio in memory): either a MUSDB18
``.stem.mp4`` file with its stream indices, or a folder of ``<stem>.<ext>``
files (MUSDB18-HQ and plain folders). :meth:`Track.load` decodes through
:mod:`sepcli.audio` and derives ``mixture`` and ``accompaniment`` when they
are not stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sepcli import audio
from sepcli.errors import AudioError, DatasetError

__all__ = ["MUSDB_STREAMS", "MUSDB_SOURCES", "Track"]

logger = logging.getLogger(__name__)

#: Audio stream index of each stem in a MUSDB18 ``.stem.mp4`` file.
MUSDB_STREAMS: Mapping[str, int] = {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4}
#: The four MUSDB sources in stream order.
MUSDB_SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")
_ACCOMPANIMENT_PARTS = ("drums", "bass", "other")
_ORDER = ("mixture", *MUSDB_SOURCES, "accompaniment")


def _ordered(names: set[str] | Sequence[str]) -> tuple[str, ...]:
    known = [n for n in _ORDER if n in names]
    return tuple(known + sorted(n for n in names if n not in _ORDER))


@dataclass(frozen=True)
class Track:
    """A track of a dataset.

    Attributes:
        name: track name (file name without ``.stem.mp4``, or folder name).
        subset: ``"train"``, ``"valid"``, ``"test"`` or ``None`` (no split).
        layout: ``"musdb"``, ``"musdb-hq"`` or ``"folder"``.
        path: the ``.stem.mp4`` file or the track folder.
        files: stem name -> audio file (folder layouts); empty for ``musdb``.
        streams: stem name -> audio stream index in ``path`` (``musdb``).
    """

    name: str
    subset: str | None
    layout: str
    path: Path
    files: Mapping[str, Path] = field(default_factory=dict, hash=False)
    streams: Mapping[str, int] = field(default_factory=dict, hash=False)

    @property
    def stored(self) -> tuple[str, ...]:
        """Stems stored as such (a file or a stream), ``mixture`` included."""
        return _ordered(set(self.files) | set(self.streams))

    @property
    def sources(self) -> tuple[str, ...]:
        """Stored stems other than ``mixture``."""
        return tuple(s for s in self.stored if s != "mixture")

    def _has_parts(self) -> bool:
        return all(p in self.stored for p in _ACCOMPANIMENT_PARTS)

    @property
    def stems(self) -> tuple[str, ...]:
        """Every stem :meth:`load` can return: stored ones plus derived
        ``mixture`` (sum of the sources) and ``accompaniment`` (drums + bass +
        other, else mixture - vocals when a mixture is stored)."""
        names = set(self.stored)
        if self.sources:
            names.add("mixture")
        if self._has_parts() or ("vocals" in names and "mixture" in self.stored):
            names.add("accompaniment")
        return _ordered(names)

    def _mix_parts(self) -> list[str]:
        """Sources whose sum is the mixture when none is stored."""
        skip_acc = self._has_parts()
        return [s for s in self.sources if not (s == "accompaniment" and skip_acc)]

    def _source_of(self, stem: str) -> str:
        if stem in self.files:
            return self.files[stem].name
        return f"{stem} (stream {self.streams[stem]})"

    def _read(self, stem: str) -> tuple[np.ndarray, int]:
        try:
            if stem in self.files:
                return audio.load_audio(self.files[stem])
            return audio.load_audio(self.path, stream=self.streams[stem])
        except AudioError as exc:
            raise DatasetError(f"track {self.name!r}: cannot read {stem!r}: {exc}") from exc

    def probe(self) -> audio.AudioInfo:
        """What the decoder says about the first stored stem (no decoding): rate,
        channels and the declared (for lossy streams, estimated) frame count."""
        if not self.stored:
            raise DatasetError(f"track {self.name!r} has no stems ({self.path})")
        stem = self.stored[0]
        try:
            if stem in self.files:
                return audio.probe(self.files[stem])
            return audio.probe(self.path, stream=self.streams[stem])
        except AudioError as exc:
            raise DatasetError(f"track {self.name!r}: cannot read {stem!r}: {exc}") from exc

    def load(
        self, stems: Sequence[str] | None = None, sample_rate: int | None = None
    ) -> dict[str, np.ndarray]:
        """Decode stems.

        Args:
            stems: names to return (default: all of :attr:`stems`). ``mixture``
                and ``accompaniment`` are derived when not stored.
            sample_rate: resample to this rate in Hz (default: the files' rate).

        Returns:
            stem name -> float32 array ``(channel, time)``; all the same shape
            (mono stems are widened to the track's largest channel count).

        Raises:
            DatasetError: an unknown or missing stem, an unreadable file, or
                stems of different sample rates or lengths (the track is named).
        """
        wanted = list(stems) if stems is not None else list(self.stems)
        available = self.stems
        for stem in wanted:
            if stem not in available:
                have = ", ".join(available) or "none"
                raise DatasetError(
                    f"track {self.name!r} has no {stem!r} stem (has: {have}) in {self.path}"
                )

        raw_names: list[str] = []
        for stem in wanted:
            if stem in self.stored:
                need = [stem]
            elif stem == "mixture":
                need = self._mix_parts()
            elif self._has_parts():  # accompaniment
                need = list(_ACCOMPANIMENT_PARTS)
            else:
                need = ["mixture", "vocals"]
            raw_names += [n for n in need if n not in raw_names]

        raw: dict[str, np.ndarray] = {}
        rates: dict[str, int] = {}
        for stem in raw_names:
            raw[stem], rates[stem] = self._read(stem)
        self._check_consistent(raw, rates)
        rate = next(iter(rates.values()))
        channels = max(a.shape[0] for a in raw.values())
        for stem, data in raw.items():
            if data.shape[0] != channels:
                data = audio.convert_channels(data, channels)
            if sample_rate is not None and sample_rate != rate:
                data = audio.resample(data, rate, sample_rate)
            raw[stem] = np.ascontiguousarray(data, dtype=np.float32)

        out: dict[str, np.ndarray] = {}
        for stem in wanted:
            if stem in raw:
                out[stem] = raw[stem]
            elif stem == "mixture":
                out[stem] = np.sum([raw[s] for s in self._mix_parts()], axis=0, dtype=np.float32)
            elif self._has_parts():
                out[stem] = np.sum([raw[s] for s in _ACCOMPANIMENT_PARTS], axis=0, dtype=np.float32)
            else:
                out[stem] = (raw["mixture"] - raw["vocals"]).astype(np.float32)
        return out

    def _check_consistent(self, raw: Mapping[str, np.ndarray], rates: Mapping[str, int]) -> None:
        if len(set(rates.values())) > 1:
            detail = ", ".join(f"{self._source_of(s)}: {r} Hz" for s, r in rates.items())
            raise DatasetError(
                f"track {self.name!r} ({self.path}): stems have different sample rates ({detail})"
            )
        lengths = {s: a.shape[-1] for s, a in raw.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{self._source_of(s)}: {n} samples" for s, n in lengths.items())
            raise DatasetError(
                f"track {self.name!r} ({self.path}): stems have different lengths ({detail})"
            )
