"""HTTP plumbing shared by registry fetches and model downloads.

Policy in one place: HTTPS only (plain HTTP is allowed for loopback hosts, which
tests and local mirrors use); redirects are followed by hand so that every hop
is checked against that policy; timeouts are ``(connect, read)`` pairs; proxy
environment variables (``HTTPS_PROXY``, ``NO_PROXY``...) are honoured because
``requests`` reads them by default.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from sepcli import __version__
from sepcli.errors import DownloadError, RegistryError, UsageError

__all__ = [
    "HttpSettings",
    "is_loopback_host",
    "check_url",
    "redact",
    "open_url",
]

MAX_REDIRECTS = 10

#: Status codes worth another try: the server may be back in a moment.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def _env_number(name: str, default: float, kind: type = float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise UsageError(f"{name}={raw!r} must be >= 0")
    return value


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts and retry policy of one download.

    Attributes:
        connect_timeout: seconds to wait for a TCP/TLS connection.
        read_timeout: seconds to wait for the next bytes (a stalled server fails
            after this long).
        retries: extra attempts per URL after a transient failure (cut
            connection, timeout, 5xx).
        backoff: seconds before the first retry; doubled each time, capped at 30 s.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 4
    backoff: float = 1.0

    @classmethod
    def from_env(cls, timeout: float | None = None, retries: int | None = None) -> HttpSettings:
        """Settings from arguments, else ``SEPCLI_TIMEOUT`` (read timeout, seconds;
        the connect timeout is the same capped at 10 s), ``SEPCLI_RETRIES`` and
        ``SEPCLI_BACKOFF``, else the defaults."""
        read = timeout if timeout is not None else _env_number("SEPCLI_TIMEOUT", cls.read_timeout)
        tries = (
            retries if retries is not None else int(_env_number("SEPCLI_RETRIES", cls.retries, int))
        )
        backoff = _env_number("SEPCLI_BACKOFF", cls.backoff)
        if read <= 0:
            raise UsageError(f"timeout must be positive, got {read}")
        return cls(min(read, cls.connect_timeout), read, max(tries, 0), backoff)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def delay(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), 30.0)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, error: type[Exception] = RegistryError, where: str = "") -> str:
    """Return ``url`` if it is ``https://host/...`` or ``http://`` on a loopback host.

    Raises ``error`` (a :class:`RegistryError` by default) naming ``where``.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(url, str) or not url:
        raise error(f"{prefix}URL must be a non-empty string, got {url!r}")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise error(f"{prefix}malformed URL {redact(url)!r}") from None
    if not host:
        raise error(f"{prefix}URL {redact(url)!r} has no host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and is_loopback_host(host):
        return url
    raise error(
        f"{prefix}refusing non-HTTPS URL {redact(url)!r} (only https://, or http:// on loopback)"
    )


def redact(url: str) -> str:
    """``url`` without user:password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"sepcli/{__version__}"
    # Transfer encodings like gzip would break byte counts and Range offsets.
    session.headers["Accept-Encoding"] = "identity"
    return session


def open_url(
    session: requests.Session,
    url: str,
    settings: HttpSettings,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """GET ``url`` streaming, following redirects only to URLs :func:`check_url` accepts.

    Returns the final response (any status; the caller decides). Raises
    :class:`DownloadError` for a redirect to a refused URL or too many redirects;
    ``requests`` exceptions (timeouts, refused connections) propagate so the
    caller can retry.
    """
    current = check_url(url, DownloadError)
    for _ in range(MAX_REDIRECTS + 1):
        # Loopback never goes through a proxy; other hosts honour HTTPS_PROXY/NO_PROXY.
        direct = is_loopback_host(urlsplit(current).hostname or "")
        response = session.get(
            current, headers=headers, stream=True, timeout=settings.timeout,
            allow_redirects=False, proxies={"http": None, "https": None} if direct else None,
        )  # fmt: skip
        if response.is_redirect:
            location = response.headers.get("Location", "")
            response.close()
            target = urljoin(current, location)
            check_url(target, DownloadError, where=f"{redact(url)} redirects to {redact(target)}")
            current = target
            continue
        return response
    raise DownloadError(f"{redact(url)}: more than {MAX_REDIRECTS} redirects")
