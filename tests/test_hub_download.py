"""Downloads against a real HTTP server on 127.0.0.1: resume, verify, fail cleanly, lock."""

# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_hub_server import (  # noqa: F401 - fixtures
    cached_files,
    file_server,
    hub_env,
    payload,
    sepcli_entry,
    write_registry,
)

from sepcli.errors import DownloadError, IntegrityError, OfflineError, RegistryError
from sepcli.hub import load_model, resolve_model, verify_models
from sepcli.hub.cache import part_path, read_stamp, stamp_path
from sepcli.progress import Progress

pytestmark = pytest.mark.network

REPO = Path(__file__).resolve().parents[1]


def _registry(tmp_path: Path, *entries: dict) -> str:
    return str(write_registry(tmp_path / "registry.json", list(entries)))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _with_stamp(path: Path, cache: Path) -> list[str]:
    """``path`` and its verification stamp, as :func:`cached_files` lists them."""
    return [str(p.relative_to(cache / "models")) for p in (path, stamp_path(path))]


def test_cut_download_resumes_from_part_file_on_next_call(file_server, hub_env, tmp_path):
    data = payload(300_000)
    url = file_server.add("/m.sepcli", data, "cut-once")
    reg = _registry(tmp_path, sepcli_entry("cutme", url, data))

    with pytest.raises(DownloadError, match="cut"):
        resolve_model("cutme", registry=reg)
    parts = [p for p in hub_env.rglob("*.part")]
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(data)
    assert cached_files(hub_env) == [str(parts[0].relative_to(hub_env / "models"))]

    offset = parts[0].stat().st_size
    path = resolve_model("cutme", registry=reg)
    assert _sha(path) == hashlib.sha256(data).hexdigest()
    assert file_server.ranges == [None, f"bytes={offset}-"]
    assert file_server.bytes_sent < 1.3 * len(data)
    assert not part_path(path).exists()
    assert cached_files(hub_env) == _with_stamp(path, hub_env)


def test_cut_download_resumes_within_one_call_when_retrying(file_server, hub_env, tmp_path):
    data = payload(300_000)
    url = file_server.add("/m.sepcli", data, "cut-once")
    reg = _registry(tmp_path, sepcli_entry("cutme", url, data))
    path = resolve_model("cutme", registry=reg, retries=2)
    assert _sha(path) == hashlib.sha256(data).hexdigest()
    assert file_server.gets["/m.sepcli"] == 2
    assert file_server.ranges[1] is not None and file_server.ranges[1] != "bytes=0-"
    assert file_server.bytes_sent < 1.3 * len(data)


def test_server_without_range_support_restarts_cleanly(file_server, hub_env, tmp_path):
    data = payload(50_000)
    url = file_server.add("/m.sepcli", data, "no-range")
    reg = _registry(tmp_path, sepcli_entry("norange", url, data))
    part = hub_env / "models" / "norange" / hashlib.sha256(data).hexdigest()[:16] / "m.sepcli.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])  # left by an earlier cut: the server will send 200 + all
    path = resolve_model("norange", registry=reg)
    assert path.read_bytes() == data


def test_hash_mismatch_is_rejected_and_never_used(file_server, hub_env, tmp_path):
    data = payload(20_000)
    url = file_server.add("/bad.sepcli", data, "corrupt")
    reg = _registry(tmp_path, sepcli_entry("bad", url, data))
    with pytest.raises(IntegrityError) as info:
        resolve_model("bad", registry=reg)
    message = str(info.value)
    assert "\n" not in message and "'bad'" in message and "SHA-256 mismatch" in message
    assert cached_files(hub_env) == []
    with pytest.raises(OfflineError):  # nothing usable was kept
        resolve_model("bad", registry=reg, offline=True)


def test_verify_catches_corruption_and_downloads_again(file_server, hub_env, tmp_path):
    data = payload(20_000)
    url = file_server.add("/v.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("vv", url, data))
    path = resolve_model("vv", registry=reg)
    # every model is verified; the packaged default reports "builtin"
    assert [(r.name, r.status) for r in verify_models(registry=reg) if r.status != "builtin"] == [
        ("vv", "ok")
    ]

    path.write_bytes(b"\x00" + data[1:])  # corrupted on disk, same size
    results = verify_models(["vv"], registry=reg, fix=False)
    assert results[0].status == "corrupt" and "SHA-256" in results[0].detail
    assert str(path) in results[0].detail and results[0].path == path
    assert path.read_bytes()[:1] == b"\x00"  # fix=False reports and leaves the file
    path.write_bytes(data)  # put back by hand: verify says ok again
    assert verify_models(["vv"], registry=reg, fix=False)[0].status == "ok"
    path.write_bytes(data[:-1] + b"\x00")
    results = [r for r in verify_models(registry=reg) if r.status != "builtin"]
    assert [(r.name, r.status) for r in results] == [("vv", "repaired")]
    assert _sha(path) == hashlib.sha256(data).hexdigest()
    assert file_server.gets["/v.sepcli"] == 2


def _tamper_in_place(path: Path, keep_mtime: bool) -> None:
    """Change one byte without changing the size, inode or (``keep_mtime``) mtime."""
    st = path.stat()
    with open(path, "r+b") as fh:
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino) == (st.st_size, st.st_ino)
    assert not keep_mtime or after.st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_cached_file_changed_since_it_was_verified_is_hashed_again(
    file_server, hub_env, tmp_path, monkeypatch, keep_mtime
):
    import sepcli.hub.load as load_module

    data = payload(20_000)
    url = file_server.add("/t.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("tt", url, data))
    path = resolve_model("tt", registry=reg)
    stamp = read_stamp(path)
    assert stamp is not None and stamp["sha256"] == hashlib.sha256(data).hexdigest()
    assert stamp["size"] == len(data) and stamp["inode"] == path.stat().st_ino

    hashed: list[Path] = []
    real = load_module.sha256_file
    monkeypatch.setattr(load_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert resolve_model("tt", registry=reg) == path and hashed == []  # unchanged: no hashing

    os.utime(path)  # touched, bytes unchanged: hashed once, then trusted again
    assert resolve_model("tt", registry=reg) == path and hashed == [path]
    assert resolve_model("tt", registry=reg) == path and hashed == [path]

    # same size and inode; with keep_mtime the mtime is put back too, and only ctime
    # (which no one can set) tells: the file is hashed again and refused
    _tamper_in_place(path, keep_mtime)
    with pytest.raises(IntegrityError) as err:
        resolve_model("tt", registry=reg, offline=True)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'tt'" in message
    assert "changed since it was verified" in message and "sepcli models verify tt" in message
    assert len(hashed) == 2 and path.is_file()  # left for verify to repair
    assert file_server.gets["/t.sepcli"] == 1


def test_a_converted_archive_with_only_the_old_sidecar_is_checked_and_stamped(
    file_server, hub_env, tmp_path
):
    """Caches written before stamps (a ``.sha256`` sidecar) still work, and are
    hashed once, then stamped."""
    from sepcli.hub import open_registry
    from sepcli.hub.load import _check_cached

    data = payload(5_000)
    reg = open_registry(_registry(tmp_path, sepcli_entry("old", "https://x.test/o.sepcli", data)))
    entry = reg.get("old")
    object.__setattr__(entry, "format", "demucs")  # a converted entry, minus the conversion
    path = tmp_path / "old.sepcli"
    path.write_bytes(data)
    (tmp_path / "old.sepcli.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    _check_cached(entry, path)
    assert read_stamp(path)["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (tmp_path / "old.sepcli.sha256").exists()
    path.write_bytes(data[::-1])
    with pytest.raises(IntegrityError, match="changed since it was verified"):
        _check_cached(entry, path)


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/m.sepcli"


@pytest.mark.parametrize(
    "mode, words",
    [
        ("404", "HTTP 404"),
        ("500", "HTTP 500"),
        ("refused", "connection refused"),
        ("stall", "timed out"),
        ("redirect-http", "refusing non-HTTPS URL"),
        ("oversize", "registry says"),
        ("oversize-undeclared", "more than the registry"),
    ],
)
def test_failures_give_one_line_and_leave_nothing(file_server, hub_env, tmp_path, mode, words):
    data = payload(30_000)
    url = _refused_url() if mode == "refused" else file_server.add("/m.sepcli", data, mode)
    reg = _registry(tmp_path, sepcli_entry("broken", url, data))
    with pytest.raises(DownloadError) as info:
        resolve_model("broken", registry=reg)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and "'broken'" in message
    assert cached_files(hub_env) == []


def test_retry_with_backoff_gets_past_a_transient_500(file_server, hub_env, tmp_path):
    data = payload(10_000)
    url = file_server.add("/m.sepcli", data, "500-once")
    reg = _registry(tmp_path, sepcli_entry("flaky", url, data))
    assert resolve_model("flaky", registry=reg, retries=1).read_bytes() == data
    assert file_server.gets["/m.sepcli"] == 2


def test_mirror_is_used_when_the_first_url_fails(file_server, hub_env, tmp_path):
    data = payload(10_000)
    dead = file_server.add("/dead.sepcli", data, "404")
    good = file_server.add("/good.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("mirrored", [dead, good], data))
    path = resolve_model("mirrored", registry=reg)
    assert path.name == "dead.sepcli"  # the cache name comes from the first URL
    assert path.read_bytes() == data


def test_redirect_within_loopback_is_followed(file_server, hub_env, tmp_path):
    data = payload(10_000)
    url = file_server.add("/m.sepcli", data, "redirect")
    reg = _registry(tmp_path, sepcli_entry("redir", url, data))
    assert resolve_model("redir", registry=reg).read_bytes() == data
    assert file_server.gets["/target/m.sepcli"] == 1


def test_progress_reports_bytes_up_to_the_total(file_server, hub_env, tmp_path):
    data = payload(200_000)
    url = file_server.add("/m.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("prog", url, data))
    events: list[Progress] = []
    resolve_model("prog", registry=reg, progress=events.append)
    assert {(e.task, e.unit, e.item) for e in events} == {("download", "bytes", "prog")}
    seen = [(e.done, e.total) for e in events]
    assert seen[-1] == (len(data), len(data))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_offline_never_touches_the_network(file_server, hub_env, tmp_path, monkeypatch):
    data = payload(10_000)
    url = file_server.add("/m.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("later", url, data))
    monkeypatch.setenv("SEPCLI_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"'later'.*sepcli models download later"):
        resolve_model("later", registry=reg)
    assert file_server.gets["/m.sepcli"] == 0
    path = resolve_model("later", registry=reg, offline=False)  # the argument wins over the env
    file_server.stop()
    assert resolve_model("later", registry=reg) == path  # cached: offline works


def test_entry_without_full_hash_is_refused_before_any_request(file_server, hub_env, tmp_path):
    data = payload(1000)
    url = file_server.add("/m.sepcli", data)
    entry = {"name": "nohash", "format": "sepcli", "urls": [url], "sha256_prefix": "abcdef12"}
    reg = _registry(tmp_path, entry)
    with pytest.raises(RegistryError, match="no full SHA-256"):
        resolve_model("nohash", registry=reg)
    assert file_server.gets["/m.sepcli"] == 0


def test_load_model_downloads_and_loads_a_served_archive(
    file_server, hub_env, tmp_path, identity_archive
):
    data = identity_archive.read_bytes()
    url = file_server.add("/identity.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("ident", url, data))
    archive = load_model("ident", registry=reg)
    assert archive.metadata.name == "identity" and archive.path.parent.parent.name == "ident"


def test_two_processes_downloading_the_same_model_share_one_download(
    file_server, hub_env, tmp_path
):
    data = payload(400_000)
    url = file_server.add("/big.sepcli", data, "slow")
    reg = _registry(tmp_path, sepcli_entry("shared", url, data))
    script = textwrap.dedent(
        f"""
        import sys
        from sepcli.hub import resolve_model
        print(resolve_model("shared", registry={reg!r}, timeout=10))
        """
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert _sha(path) == hashlib.sha256(data).hexdigest()
    assert file_server.gets["/big.sepcli"] == 1  # the second process waited and reused it
    assert cached_files(hub_env) == _with_stamp(path, hub_env)


UNRESOLVABLE = "https://nonexistent.invalid/m.sepcli"  # RFC 6761: .invalid never resolves


def _everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_unresolvable_host_fails_fast_in_one_line_and_leaves_no_trace(
    hub_env, tmp_path, monkeypatch
):
    # the default retry policy (4 retries, back-off from 1 s) took 31 s before
    monkeypatch.delenv("SEPCLI_RETRIES")
    monkeypatch.delenv("SEPCLI_BACKOFF")
    data = payload(1_000)
    reg = _registry(tmp_path, sepcli_entry("nowhere", UNRESOLVABLE, data))
    events: list[Progress] = []
    start = time.perf_counter()
    with pytest.raises(
        DownloadError, match="'nowhere'.*nonexistent.invalid.*host not found"
    ) as err:
        resolve_model("nowhere", registry=reg, progress=events.append)
    assert time.perf_counter() - start < 5.0
    assert "\n" not in str(err.value) and events == []
    assert _everything_under(hub_env) == []  # no empty cache folder, no stray .lock


def test_unresolvable_mirror_falls_through_to_the_next_url(file_server, hub_env, tmp_path):
    data = payload(20_000)
    url = file_server.add("/m.sepcli", data)
    reg = _registry(tmp_path, sepcli_entry("mirrored", [UNRESOLVABLE, url], data))
    path = resolve_model("mirrored", registry=reg)
    assert _sha(path) == hashlib.sha256(data).hexdigest() and file_server.gets["/m.sepcli"] == 1


def test_a_failed_download_keeps_other_cached_models(file_server, hub_env, tmp_path):
    data = payload(20_000)
    url = file_server.add("/m.sepcli", data)
    reg = _registry(
        tmp_path,
        sepcli_entry("here", url, data),
        sepcli_entry("gone", UNRESOLVABLE, payload(1_000)),
    )
    kept = resolve_model("here", registry=reg)
    before = _everything_under(hub_env)
    with pytest.raises(DownloadError, match="host not found"):
        resolve_model("gone", registry=reg)
    assert _everything_under(hub_env) == before and kept.is_file()
