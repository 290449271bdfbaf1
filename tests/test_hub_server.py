"""A real HTTP server on 127.0.0.1 for the hub tests, and tests of the server itself.

:class:`FileServer` serves byte strings and can misbehave per path: cut the
connection halfway, stall, answer 404/500, redirect (to another path or to a
plain-http host), send more bytes than the registry says, or corrupt a byte. It
honours ``Range`` and counts the body bytes it sends. Other hub test modules
import it (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.network

MODES = (
    "ok",
    "cut",  # every response stops halfway through what it promised
    "cut-once",  # only the first response is cut
    "stall",  # headers, then no body
    "404",
    "500",
    "500-once",
    "redirect",  # 302 to /target/<path>
    "redirect-http",  # 302 to a plain-http, non-loopback URL
    "oversize",  # the body has more bytes than the registry's size (declared)
    "oversize-undeclared",  # same without Content-Length, connection closes at the end
    "corrupt",  # one byte flipped
    "no-range",  # ignores Range and always sends 200 + everything
    "slow",  # the body in 8 pieces, 0.15 s apart
)


class FileServer:
    """``ThreadingHTTPServer`` on an ephemeral 127.0.0.1 port, run in a thread."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.bytes_sent = 0
        self.gets: Counter[str] = Counter()
        self.ranges: list[str | None] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes, mode: str = "ok") -> str:
        assert mode in MODES, mode
        self.files[path] = data
        self.modes[path] = mode
        return self.url(path)

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, body: bytes, status: int = 200, headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}) and not (headers or {}).get("X-No-Length"):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with server.lock:  # counted before sending: the client may finish first
                server.bytes_sent += len(body)
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path
            target = path.removeprefix("/target")
            with server.lock:
                server.gets[path] += 1
                count = server.gets[path]
                server.ranges.append(self.headers.get("Range"))
            if target not in server.files:
                self._send(b"not found", 404)
                return
            data = server.files[target]
            mode = server.modes[target] if path == target else "ok"
            if mode == "404":
                self._send(b"gone", 404)
            elif mode == "500" or (mode == "500-once" and count == 1):
                self._send(b"boom", 500)
            elif mode == "redirect":
                self._send(b"", 302, {"Location": "/target" + path})
            elif mode == "redirect-http":
                self._send(b"", 302, {"Location": "http://example.com" + path})
            elif mode == "stall":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                server.release.wait(10)
                self.close_connection = True
            elif mode == "oversize":
                self._send(data + b"x" * 4096)
            elif mode == "oversize-undeclared":
                self.close_connection = True
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                body = data + b"x" * 4096
                with server.lock:  # counted before sending: the client may finish first
                    server.bytes_sent += len(body)
                self.wfile.write(body)
            elif mode == "corrupt":
                self._send(bytes([data[0] ^ 0xFF]) + data[1:])
            elif mode == "slow":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = -(-len(data) // 8)
                for i in range(0, len(data), step):
                    with server.lock:  # counted before sending: the client may finish first
                        server.bytes_sent += len(data[i : i + step])
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()
                    server.release.wait(0.15)
            else:
                self._send_range(data, cut=mode == "cut" or (mode == "cut-once" and count == 1),
                                 honour_range=mode != "no-range")  # fmt: skip

        def _send_range(self, data: bytes, cut: bool, honour_range: bool) -> None:
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
            if match and honour_range:
                start = int(match.group(1))
                if start >= len(data):
                    self._send(b"", 416, {"Content-Range": f"bytes */{len(data)}"})
                    return
            body = data[start:]
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if cut:
                half = body[: len(body) // 2]
                with server.lock:  # counted before sending: the client may finish first
                    server.bytes_sent += len(half)
                self.wfile.write(half)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            with server.lock:  # counted before sending: the client may finish first
                server.bytes_sent += len(body)
            self.wfile.write(body)

    return Handler


@pytest.fixture
def file_server():
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """A fresh cache and short network settings; returns the cache root."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEPCLI_CACHE", str(cache))
    monkeypatch.setenv("SEPCLI_TIMEOUT", "1")
    monkeypatch.setenv("SEPCLI_RETRIES", "0")
    monkeypatch.setenv("SEPCLI_BACKOFF", "0.01")
    for name in ("SEPCLI_REGISTRY", "SEPCLI_OFFLINE", "SEPCLI_DEFAULT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return cache


def payload(size: int = 200_000, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    out = bytearray()
    block = str(seed).encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def sepcli_entry(name: str, urls: list[str] | str, data: bytes, **extra) -> dict:
    """A registry entry for a ``sepcli``-format file with ``data``'s hash and size."""
    return {
        "name": name,
        "format": "sepcli",
        "urls": [urls] if isinstance(urls, str) else urls,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


def write_registry(path: Path, entries: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "models": entries}))
    return path


def cached_files(cache: Path) -> list[str]:
    """Every file under ``cache/models`` except lock files, relative, sorted."""
    root = cache / "models"
    if not root.is_dir():
        return []
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    )


# --- tests of the server itself: the other tests are only as good as it is ---------


def test_server_honours_range_and_counts_bytes(file_server):
    data = payload(10_000)
    url = file_server.add("/a.bin", data)
    whole = requests.get(url, timeout=5)
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(url, headers={"Range": "bytes=4000-"}, timeout=5)
    assert part.status_code == 206 and part.content == data[4000:]
    assert part.headers["Content-Range"] == "bytes 4000-9999/10000"
    assert file_server.bytes_sent == 16_000
    assert file_server.gets["/a.bin"] == 2


def test_server_cut_sends_half_then_closes(file_server):
    data = payload(100_000)
    url = file_server.add("/c.bin", data, "cut")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=5).content  # noqa: B018
    assert file_server.bytes_sent == 50_000


def test_server_redirects(file_server):
    data = payload(1000)
    url = file_server.add("/r.bin", data, "redirect")
    response = requests.get(url, timeout=5)
    assert response.content == data and response.history[0].status_code == 302
    assert os.path.basename(response.url) == "r.bin" and "/target/" in response.url
