"""Verified, resumable download of one file.

Bytes stream into ``<dest>.part``; a cut connection or timeout leaves the
``.part`` file and the next attempt (in this call, after a back-off, or in a
later call) asks for the rest with an HTTP ``Range`` header. Only when the size
and SHA-256 match the registry is the file renamed to ``dest``; a mismatch, or a
body larger than the registry's size, deletes the ``.part`` file. Callers hold
the cache lock (:func:`sepcli.hub.cache.file_lock`) around this.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path

import requests

from sepcli.errors import DownloadError, IntegrityError, RegistryError
from sepcli.hashing import sha256_file
from sepcli.hub.cache import part_path
from sepcli.hub.registry import FileSpec
from sepcli.hub.space import check_free_space
from sepcli.hub.transport import RETRYABLE_STATUS, HttpSettings, new_session, open_url, redact
from sepcli.progress import Progress, ProgressFn

__all__ = ["download_file"]

log = logging.getLogger(__name__)

CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


def _describe(exc: BaseException, settings: HttpSettings) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return f"connection timed out after {settings.connect_timeout:g} s"
    if isinstance(exc, requests.ReadTimeout) or "timed out" in str(exc).lower():
        return f"no data for {settings.read_timeout:g} s (timed out)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection cut during the transfer"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "resolve" in text or "getaddrinfo" in text:
            return "host not found"
        return "connection failed"
    return f"{type(exc).__name__}"


def _host_not_found(exc: BaseException) -> bool:
    """True when ``exc`` comes from a host name that could not be resolved.

    requests wraps urllib3's ``NameResolutionError`` (itself raised from
    ``socket.gaierror``) in a ``ConnectionError``; the chain is walked rather
    than the message read.
    """
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError":
            return True
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return False


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)


def _attempt(
    session: requests.Session,
    url: str,
    spec: FileSpec,
    part: Path,
    settings: HttpSettings,
    progress: ProgressFn | None,
    label: str,
) -> None:
    """One GET of ``url`` into ``part``; returns when ``part`` has ``spec.size`` bytes."""
    assert spec.size is not None
    size = spec.size
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        _discard(part)
        offset = 0
    if offset == size:
        return
    headers = {"Range": f"bytes={offset}-"} if offset else None
    with open_url(session, url, settings, headers) as response:
        status = response.status_code
        if status == 416 and offset:
            _discard(part)  # the server will not resume: start again from zero
            raise _Transient("server refused to resume (HTTP 416)")
        if status == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                _discard(part)
                raise _Transient("server answered a resume with the wrong byte range")
            mode = "ab"
        elif status == 200:
            offset, mode = 0, "wb"
        elif status in RETRYABLE_STATUS:
            raise _Transient(f"HTTP {status}")
        else:
            raise DownloadError(f"HTTP {status}")
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and offset + int(declared) > size:
            _discard(part)
            raise IntegrityError(
                f"server sends {offset + int(declared)} bytes but the registry says {size}"
            )
        if progress:
            progress(Progress("download", offset, size, "bytes", label))
        done = offset
        try:
            with open(part, mode) as fh:
                for chunk in response.raw.stream(CHUNK, decode_content=False):
                    done += len(chunk)
                    if done > size:
                        raise IntegrityError(f"server sent more than the registry's {size} bytes")
                    fh.write(chunk)
                    if progress:
                        progress(Progress("download", done, size, "bytes", label))
        except IntegrityError:
            _discard(part)
            raise
        except Exception as exc:  # urllib3 errors: cut connection, read timeout
            raise _Transient(_describe(_as_requests_error(exc), settings)) from None
        if done < size:
            raise _Transient(f"connection closed after {done} of {size} bytes")


def _as_requests_error(exc: BaseException) -> BaseException:
    """urllib3 raises its own classes from ``raw.stream``; map the ones we word."""
    import urllib3.exceptions as u3

    if isinstance(exc, u3.ReadTimeoutError):
        return requests.ReadTimeout(str(exc))
    if isinstance(exc, u3.ProtocolError | u3.IncompleteRead | ConnectionError):
        return requests.exceptions.ChunkedEncodingError(str(exc))
    return exc


def download_file(
    spec: FileSpec,
    dest: Path,
    settings: HttpSettings | None = None,
    progress: ProgressFn | None = None,
    label: str | None = None,
) -> Path:
    """Download ``spec`` to ``dest``: resume, retry with back-off, try mirrors, verify.

    ``progress`` gets ``download`` events in bytes of this file, ``item`` = ``label``.
    Returns ``dest``. Raises :class:`DownloadError` (one line, naming ``label``
    and the URL) when every URL failed, :class:`IntegrityError` when the bytes
    do not match the registry, :class:`RegistryError` for an entry without a
    full SHA-256, :class:`~sepcli.hub.space.DiskSpaceError` (before any byte is
    written) when the disk lacks the bytes still to come.
    """
    label = label or spec.filename
    if not spec.verifiable:
        raise RegistryError(
            f"{label}: the registry has no full SHA-256 and size for {spec.filename}; "
            "refusing an unverifiable download (add them with an extra registry)"
        )
    settings = settings or HttpSettings.from_env()
    part = part_path(dest)
    have = part.stat().st_size if part.is_file() else 0
    check_free_space(dest.parent, (spec.size or 0) - have, label)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failure: DownloadError | None = None
    with new_session() as session:
        for url in spec.urls:
            for attempt in range(settings.retries + 1):
                if attempt:
                    time.sleep(settings.delay(attempt))
                try:
                    _attempt(session, url, spec, part, settings, progress, label)
                except _Transient as exc:
                    failure = DownloadError(f"{label}: {redact(url)}: {exc}")
                    log.info("%s (attempt %d of %d)", failure, attempt + 1, settings.retries + 1)
                    continue
                except requests.RequestException as exc:
                    failure = DownloadError(f"{label}: {redact(url)}: {_describe(exc, settings)}")
                    if _host_not_found(exc):  # no network, or a wrong host: waiting will not help
                        failure = DownloadError(
                            f"{label}: {redact(url)}: host not found (no network, or a wrong URL)"
                        )
                        break
                    log.info("%s (attempt %d of %d)", failure, attempt + 1, settings.retries + 1)
                    continue
                except DownloadError as exc:  # permanent for this URL: try the next mirror
                    failure = type(exc)(f"{label}: {redact(url)}: {exc}")
                    break
                actual = sha256_file(part)
                if actual != spec.sha256:
                    _discard(part)
                    failure = IntegrityError(
                        f"{label}: SHA-256 mismatch for {redact(url)}: expected {spec.sha256}, "
                        f"got {actual}; the file was discarded"
                    )
                    break
                os.replace(part, dest)
                return dest
    if part.exists() and part.stat().st_size == 0:
        _discard(part)
    assert failure is not None
    raise failure
