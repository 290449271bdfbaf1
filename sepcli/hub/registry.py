"""The model registry: a JSON manifest that maps names to verified files.

The built-in manifest is ``sepcli/hub/registry.json`` (package data). Extra
manifests, named by ``SEPCLI_REGISTRY`` or the ``registry`` argument (a local
file or an HTTPS URL; several separated by commas), add entries or override
built-in ones with the same name: mirrors and private models.

Manifest layout::

    {"version": 1, "models": [
      {"name": "my-model", "format": "sepcli",
       "urls": ["https://a.example/m.sepcli", "https://mirror.example/m.sepcli"],
       "sha256": "<64 hex>", "size": 1234, "description": "...", ...},
      {"name": "umxhq", "format": "openunmix", "preset": {...},
       "files": [{"target": "vocals", "urls": [...], "sha256": "...", "size": ...}, ...]},
      {"name": "default", "format": "sepcli", "builtin": "default.sepcli"},
      {"name": "htdemucs_ft", "format": "demucs", "bag": {"weights": [[...], ...]},
       "files": [{"target": "<signature>", "urls": [".../f7e0c4bc-ba3fe64a.th"], ...}, ...]}
    ]}

An ``msst`` entry is a Music-Source-Separation-Training checkpoint with its
config: a YAML file (``files`` targets ``config`` and ``checkpoint``) or the
config inline (``"config": {"audio": ..., "model": ..., "training": ...}``, one
file ``checkpoint``), converted once by :mod:`sepcli.models.importers.msst`.
``sepcli/hub/community.json`` holds such entries generated from public
registries by ``scripts/gen_registry.py``; it is built in like this file.

A ``demucs`` entry lists Demucs checkpoints (``target`` = the model signature,
in bag order) and optionally the bag's ``weights`` (one row per file) and
``segment``; the files are converted once into an archive
(:mod:`sepcli.models.importers.demucs`).

Every entry is validated before use (:func:`parse_entry`): safe names, https
URLs (http only on loopback), full SHA-256 and positive sizes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from sepcli import atomic
from sepcli.errors import DownloadError, ModelNotFoundError, OfflineError, RegistryError
from sepcli.hub.cache import cache_root as default_cache_root
from sepcli.hub.transport import HttpSettings, check_url, new_session, open_url, redact

__all__ = [
    "FORMATS",
    "FileSpec",
    "ModelEntry",
    "Registry",
    "parse_entry",
    "parse_manifest",
    "load_registry",
    "registry_sources",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
FORMATS = ("sepcli", "openunmix", "demucs", "msst", "bag")
#: MSST model types an ``msst`` entry may name (``model_type``).
MSST_MODEL_TYPES = ("bs_roformer", "mel_band_roformer", "mdx23c")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
PREFIX_RE = re.compile(r"[0-9a-f]{8,63}")
#: Largest registry manifest we read (a manifest is text; bigger is an error).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileSpec:
    """One file of a model: where to get it and what its bytes must be.

    Attributes:
        urls: download URLs, first preferred, the rest mirrors.
        sha256: full SHA-256 (lowercase hex), or ``None`` when no trustworthy
            hash is known; such a file is never downloaded.
        size: size in bytes, or ``None`` together with ``sha256``.
        filename: the name the file gets in the cache.
        target: for foreign formats, which source this file holds.
        sha256_prefix: a published prefix of the hash (e.g. the 8 hex digits in
            torch.hub file names), informative only.
    """

    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    filename: str
    target: str | None = None
    sha256_prefix: str | None = None

    @property
    def verifiable(self) -> bool:
        return self.sha256 is not None and self.size is not None


@dataclass(frozen=True)
class ModelEntry:
    """A validated registry entry (see the module docstring for the JSON)."""

    name: str
    format: str
    files: tuple[FileSpec, ...] = ()
    builtin: str | None = None
    description: str = ""
    sources: tuple[str, ...] = ()
    sample_rate: int | None = None
    parameters: int | None = None
    licence: str = "unknown"
    training_data: str = "unknown"
    scores: Mapping[str, Any] = field(default_factory=dict)
    preset: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "built-in"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: for a ``bag``: its parts, each a registry entry and the stems taken from it
    #: (resolved by :class:`Registry`, which knows the other entries).
    parts: tuple[tuple[ModelEntry, tuple[str, ...]], ...] = field(default=(), compare=False)

    @property
    def verifiable(self) -> bool:
        """True when every file (of every part, for a bag) carries a full SHA-256 and size."""
        if self.format == "bag":
            return bool(self.parts) and all(part.verifiable for part, _ in self.parts)
        return self.builtin is not None or (
            bool(self.files) and all(f.verifiable for f in self.files)
        )

    @property
    def size(self) -> int | None:
        """Total download size in bytes (``None`` when unknown or built in)."""
        if self.builtin is not None or not self.verifiable:
            return None
        if self.format == "bag":
            return sum(part.size or 0 for part, _ in self.parts)
        return sum(f.size or 0 for f in self.files)

    @property
    def cache_key(self) -> str:
        """16 hex digits derived from the files' hashes: a changed hash never
        reuses a stale cached file."""
        if self.format == "bag":
            joined = ";".join(f"{p.name}:{p.cache_key}:{','.join(s)}" for p, s in self.parts)
            return hashlib.sha256(f"bag|{joined}".encode()).hexdigest()[:16]
        if len(self.files) == 1 and self.files[0].sha256:
            return self.files[0].sha256[:16]
        joined = ",".join(f"{f.target}:{f.sha256}" for f in self.files)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """The entry as registry JSON, plus ``origin``."""
        return {**self.raw, "origin": self.origin}


def _fail(where: str, message: str) -> RegistryError:
    return RegistryError(f"{where}: {message}")


def _opt_int(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(where, f"{key} must be a positive integer, got {value!r}")
    return value


def _str_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _parse_file(data: Mapping[str, Any], where: str, default_filename: str) -> FileSpec:
    urls = _str_list(data.get("urls", data.get("url")), "urls", where)
    if not urls:
        raise _fail(where, "urls is empty")
    for url in urls:
        check_url(url, RegistryError, where)
    sha = data.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
            raise _fail(where, f"sha256 must be 64 hex digits, got {sha!r}")
        sha = sha.lower()
    size = _opt_int(data.get("size"), "size", where)
    if sha is not None and size is None:
        raise _fail(where, "an entry with sha256 also needs its size in bytes")
    prefix = data.get("sha256_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix)):
        raise _fail(where, f"sha256_prefix must be 8 to 63 lowercase hex digits, got {prefix!r}")
    if sha is not None and prefix is not None and not sha.startswith(prefix):
        raise _fail(where, f"sha256 {sha} does not start with its published prefix {prefix}")
    filename = data.get("filename")
    if filename is None:
        last = unquote(urlsplit(urls[0]).path.rsplit("/", 1)[-1])
        filename = (
            last if FILENAME_RE.fullmatch(last) and last not in (".", "..") else default_filename
        )
    if not isinstance(filename, str) or not FILENAME_RE.fullmatch(filename):
        raise _fail(where, f"filename {filename!r} must be a plain file name ([A-Za-z0-9._-])")
    target = data.get("target")
    if target is not None and (not isinstance(target, str) or not NAME_RE.fullmatch(target)):
        raise _fail(where, f"target {target!r} must match [a-z0-9][a-z0-9._-]*")
    return FileSpec(urls, sha, size, filename, target, prefix)


def parse_entry(data: Any, origin: str = "built-in") -> ModelEntry:
    """Validate one manifest entry; raise :class:`RegistryError` naming ``origin``."""
    if not isinstance(data, Mapping):
        raise _fail(origin, f"a model entry must be a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise _fail(
            origin, f"model name {name!r} is not allowed (use [a-z0-9][a-z0-9._-]*, at most 64)"
        )
    where = f"{origin}: model {name!r}"
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise _fail(where, f"format must be one of {list(FORMATS)}, got {fmt!r}")
    builtin = data.get("builtin")
    files: tuple[FileSpec, ...] = ()
    if builtin is not None:
        if fmt != "sepcli" or not isinstance(builtin, str) or not FILENAME_RE.fullmatch(builtin):
            raise _fail(
                where,
                f"builtin must be a plain file name of a packaged sepcli archive, got {builtin!r}",
            )
        if any(k in data for k in ("urls", "url", "files")):
            raise _fail(where, "a builtin entry has no URLs")
    elif fmt == "sepcli":
        files = (_parse_file(data, where, f"{name}.sepcli"),)
    elif fmt == "bag":
        _check_bag(data, where)
    else:
        raw_files = data.get("files")
        if not isinstance(raw_files, list) or not raw_files:
            raise _fail(where, f"format {fmt!r} needs a non-empty 'files' list")
        parsed = []
        for i, item in enumerate(raw_files):
            if not isinstance(item, Mapping):
                raise _fail(where, f"files[{i}] must be an object")
            spec = _parse_file(item, f"{where} files[{i}]", f"{item.get('target', i)}.pth")
            if spec.target is None:
                raise _fail(where, f"files[{i}] needs a 'target' (the source it holds)")
            parsed.append(spec)
        files = tuple(parsed)
        for key in ("filename", "target"):
            names = [getattr(f, key) for f in files]
            if len(set(names)) != len(names):
                raise _fail(where, f"files have duplicate {key}s: {names}")
        if fmt == "msst":
            _check_msst(data, files, where)
    _check_card(data, where)
    preset = data.get("preset", {})
    scores = data.get("scores", {})
    if not isinstance(preset, Mapping) or not isinstance(scores, Mapping):
        raise _fail(where, "preset and scores must be JSON objects")
    sources = _str_list(data.get("sources", []), "sources", where)
    sample_rate = _opt_int(data.get("sample_rate"), "sample_rate", where)
    parameters = _opt_int(data.get("parameters"), "parameters", where)
    texts = {
        k: data.get(k, d)
        for k, d in (("description", ""), ("licence", "unknown"), ("training_data", "unknown"))
    }
    for key, value in texts.items():
        if not isinstance(value, str):
            raise _fail(where, f"{key} must be a string")
    return ModelEntry(
        name=name, format=fmt, files=files, builtin=builtin, sources=sources,
        sample_rate=sample_rate, parameters=parameters, scores=dict(scores), preset=dict(preset),
        origin=origin, raw=dict(data), **texts,
    )  # fmt: skip


def _check_msst(data: Mapping[str, Any], files: tuple[FileSpec, ...], where: str) -> None:
    """An ``msst`` entry: files ``config`` (the YAML) and ``checkpoint``, or only
    ``checkpoint`` with the config inline as ``config`` (MSST's sections ``audio``,
    ``model``, ``training``, ``inference``), so nothing unverified is downloaded."""
    targets = sorted(f.target or "" for f in files)
    inline = data.get("config")
    if inline is not None:
        if not isinstance(inline, Mapping) or not isinstance(inline.get("model"), Mapping):
            raise _fail(where, "an inline 'config' must be an object with a 'model' section")
        if targets != ["checkpoint"]:
            raise _fail(
                where,
                f"an msst entry with an inline config has one file 'checkpoint', got {targets}",
            )
    elif targets != ["checkpoint", "config"]:
        raise _fail(where, f"an msst entry has files 'config' and 'checkpoint', got {targets}")
    model_type = data.get("model_type")
    if model_type is not None and model_type not in MSST_MODEL_TYPES:
        raise _fail(
            where,
            f"model_type {model_type!r} is not one sepcli runs (it runs {', '.join(MSST_MODEL_TYPES)})",
        )


#: Optional card fields: a list of words, a list of texts, or stem -> published name.
_WORD_LISTS = ("purpose",)
_TEXT_LISTS = ("authors", "notes")


def _check_card(data: Mapping[str, Any], where: str) -> None:
    """Optional fields that ``models list`` filters on: ``purpose`` (words such as
    ``vocals``, ``karaoke``, ``dereverb``), ``authors``, ``notes``, ``stem_names``
    (sepcli stem -> the name its publisher gave it, for display), ``score_sources``
    (dataset -> who published those scores) and ``hash_source`` (where the pinned
    hashes were found)."""
    for key in _WORD_LISTS:
        if key in data:
            words = _str_list(data[key], key, where)
            if not all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", w) for w in words):
                raise _fail(where, f"{key} words must match [a-z0-9-]+, got {list(words)}")
    for key in _TEXT_LISTS:
        if key in data:
            _str_list(data[key], key, where)
    for key in ("stem_names", "score_sources"):
        value = data.get(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _fail(where, f"{key} must map names to strings")
    for key in ("hash_source", "config_source"):
        if key in data and not isinstance(data[key], str):
            raise _fail(where, f"{key} must be a string")


def _check_bag(data: Mapping[str, Any], where: str) -> None:
    """A ``bag`` entry: ``parts`` = ``[{"model": NAME, "stems": [...]}, ...]``, each stem
    taken from one part, and an optional ``accompaniment`` rule."""
    from sepcli.inference.stems import ACCOMPANIMENT_RULES

    if any(k in data for k in ("urls", "url", "files")):
        raise _fail(where, "a bag has no files of its own (its parts have)")
    parts = data.get("parts")
    if not isinstance(parts, list) or len(parts) < 2:
        raise _fail(where, "a bag needs a 'parts' list of at least two {model, stems}")
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if not isinstance(part, Mapping) or set(part) != {"model", "stems"}:
            raise _fail(where, f"parts[{i}] must be an object with 'model' and 'stems'")
        if not isinstance(part["model"], str) or not NAME_RE.fullmatch(part["model"]):
            raise _fail(where, f"parts[{i}]: bad model name {part['model']!r}")
        stems = _str_list(part["stems"], f"parts[{i}].stems", where)
        if not stems or seen & set(stems):
            raise _fail(where, f"parts[{i}]: each stem must come from exactly one part")
        seen |= set(stems)
    rule = data.get("accompaniment", "auto")
    if rule not in ACCOMPANIMENT_RULES:
        raise _fail(where, f"accompaniment must be one of {list(ACCOMPANIMENT_RULES)}")


def parse_manifest(data: Any, origin: str) -> list[ModelEntry]:
    """Validate a whole manifest (``{"version": 1, "models": [...]}``)."""
    if not isinstance(data, Mapping):
        raise _fail(origin, "a registry must be a JSON object with 'version' and 'models'")
    version = data.get("version")
    if version != MANIFEST_VERSION:
        raise _fail(
            origin,
            f"unsupported registry version {version!r} (this sepcli reads {MANIFEST_VERSION})",
        )
    models = data.get("models")
    if not isinstance(models, list):
        raise _fail(origin, "'models' must be a list")
    entries = [parse_entry(item, origin) for item in models]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(origin, f"duplicate model names {dupes}")
    return entries


def _decode(raw: bytes, origin: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(origin, f"not valid JSON ({exc})") from None


#: The built-in manifests: the hand-written one, then the one
#: ``scripts/gen_registry.py`` generates from public registries (never edited by hand).
BUILTIN_MANIFESTS = ("registry.json", "community.json")


def _builtin_manifest() -> list[ModelEntry]:
    entries: list[ModelEntry] = []
    supplements: dict[str, Any] = {}
    for filename in BUILTIN_MANIFESTS:
        resource = resources.files("sepcli.hub").joinpath(filename)
        if not resource.is_file():
            continue
        data = _decode(resource.read_bytes(), f"built-in {filename}")
        entries += parse_manifest(data, "built-in")
        supplements.update(data.get("score_supplements") or {})
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail("built-in", f"duplicate model names across {list(BUILTIN_MANIFESTS)}: {dupes}")
    return [_supplement(e, supplements.get(e.name)) for e in entries]


def _supplement(entry: ModelEntry, extra: Any) -> ModelEntry:
    """``entry`` with the generated manifest's scores for it added
    (``{"scores": {dataset: ...}, "score_sources": {dataset: source}}``): published
    figures for hand-written entries, read from public tables, not typed."""
    if not extra:
        return entry
    if not isinstance(extra, Mapping) or set(extra) != {"scores", "score_sources"}:
        raise _fail("built-in", f"score_supplements for {entry.name!r}: scores and score_sources")
    scores = {**entry.scores, **extra["scores"]}
    sources = {**(entry.raw.get("score_sources") or {}), **extra["score_sources"]}
    raw = {**entry.raw, "scores": scores, "score_sources": sources}
    return dataclasses.replace(entry, scores=scores, raw=raw)


def _is_url(source: str) -> bool:
    return "://" in source


def _fetch_manifest(url: str, cache_root: Path, offline: bool, settings: HttpSettings) -> bytes:
    """Bytes of a remote manifest; a copy is kept so offline runs still know it."""
    check_url(url, RegistryError, "registry")
    copy = cache_root / "registries" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".json")
    if offline:
        if copy.is_file():
            return copy.read_bytes()
        raise OfflineError(f"registry {redact(url)} has never been fetched and offline mode is on")
    try:
        with new_session() as session, open_url(session, url, settings) as response:
            if response.status_code != 200:
                raise DownloadError(f"registry {redact(url)}: HTTP {response.status_code}")
            body = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
    except (requests.RequestException, DownloadError) as exc:
        if copy.is_file():
            log.warning(
                "registry %s unreachable (%s); using the copy from %s", redact(url), exc, copy
            )
            return copy.read_bytes()
        if isinstance(exc, DownloadError):
            raise
        raise DownloadError(f"registry {redact(url)}: {type(exc).__name__}") from None
    if len(body) > MAX_MANIFEST_BYTES:
        raise _fail(redact(url), f"registry is larger than {MAX_MANIFEST_BYTES} bytes")
    parse_manifest(_decode(body, redact(url)), redact(url))  # validate before keeping a copy
    atomic.write_bytes(copy, body)
    return body


def registry_sources(registry: str | Sequence[str] | None = None) -> list[str]:
    """Extra registries: ``registry`` if given, else ``SEPCLI_REGISTRY``; commas separate."""
    if registry is None:
        registry = os.environ.get("SEPCLI_REGISTRY", "")
    items = [registry] if isinstance(registry, str) else list(registry)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


class Registry:
    """Name -> :class:`ModelEntry`, built-in entries overridden by extra registries."""

    def __init__(self, entries: Sequence[ModelEntry]):
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self._entries[entry.name] = entry
        for entry in list(self._entries.values()):
            if entry.format == "bag":
                self._entries[entry.name] = self._resolve_bag(entry)

    def _resolve_bag(self, entry: ModelEntry) -> ModelEntry:
        """``entry`` with its parts looked up (a part may not be a bag itself)."""
        parts = []
        for part in entry.raw["parts"]:
            member = self._entries.get(part["model"])
            if member is None or member.format == "bag":
                what = "is not in the registry" if member is None else "is a bag itself"
                raise RegistryError(
                    f"{entry.origin}: bag {entry.name!r}: part {part['model']!r} {what}"
                )
            parts.append((member, tuple(part["stems"])))
        return dataclasses.replace(entry, parts=tuple(parts))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; :class:`ModelNotFoundError` lists close matches."""
        try:
            return self._entries[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name.lower(), self.names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a file and not in the registry; {hint}"
            f"'sepcli models list' shows all {len(self)} (filter with --purpose, --stem, --arch)"
        )


def load_registry(
    registry: str | Sequence[str] | None = None,
    *,
    cache_root: Path | None = None,
    offline: bool = False,
    settings: HttpSettings | None = None,
) -> Registry:
    """The built-in registry plus extra registries (see :func:`registry_sources`).

    A local manifest is read from disk; a URL is fetched (HTTPS, or http on
    loopback) and a copy kept under ``cache_root/registries`` for offline use.
    """
    entries = _builtin_manifest()
    for source in registry_sources(registry):
        if _is_url(source):
            root = cache_root if cache_root is not None else default_cache_root()
            raw = _fetch_manifest(source, root, offline, settings or HttpSettings.from_env())
            origin = redact(source)
        else:
            path = Path(source).expanduser()
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise RegistryError(
                    f"{path}: cannot read registry ({exc.strerror or exc})"
                ) from None
            origin = str(path)
        entries += parse_manifest(_decode(raw, origin), origin)
    return Registry(entries)
