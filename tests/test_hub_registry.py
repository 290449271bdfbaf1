"""Registry manifests: validation, extra registries, name resolution, the default model."""

# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
from __future__ import annotations

import hashlib
import json

import pytest
from test_hub_server import (  # noqa: F401 - fixtures
    file_server,
    hub_env,
    payload,
    sepcli_entry,
    write_registry,
)

from sepcli.errors import DownloadError, ModelNotFoundError, OfflineError, RegistryError
from sepcli.hub import load_registry, parse_entry, parse_manifest, resolve_model
from sepcli.hub.registry import registry_sources
from sepcli.hub.transport import check_url, is_loopback_host

SHA = "ab" * 32


def _entry(**changes) -> dict:
    base = {
        "name": "m",
        "format": "sepcli",
        "urls": ["https://example.com/m.sepcli"],
        "sha256": SHA,
        "size": 10,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    "name",
    ["../../x", "a/b", "a\\b", "/abs", "..", ".hidden", "UPPER", "", "a b", "x" * 65, 7, None],
)
def test_unsafe_or_malformed_names_are_refused(name):
    with pytest.raises(RegistryError, match="name"):
        parse_entry(_entry(name=name))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/m.sepcli",
        "ftp://example.com/m.sepcli",
        "file:///etc/passwd",
        "https:///no-host",
        "http://127.0.0.1.example.com/m",
        "//example.com/m",
        "",
    ],
)
def test_non_https_urls_are_refused(url):
    with pytest.raises(RegistryError, match="(?i)url"):
        parse_entry(_entry(urls=[url]))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/m", "http://127.9.9.9/m", "http://localhost/m", "http://[::1]:81/m"],
)
def test_plain_http_is_allowed_only_on_loopback(url):
    assert parse_entry(_entry(urls=[url])).files[0].urls == (url,)


def test_loopback_detection():
    assert (
        is_loopback_host("127.0.0.1")
        and is_loopback_host("[::1]")
        and is_loopback_host("LOCALHOST")
    )
    assert not is_loopback_host("10.0.0.1") and not is_loopback_host("example.com")
    assert check_url("https://user:secret@example.com/x")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sha256": "abc"}, "64 hex"),
        ({"sha256": "zz" * 32}, "64 hex"),
        ({"size": 0}, "positive"),
        ({"size": -5}, "positive"),
        ({"size": True}, "positive"),
        ({"size": "10"}, "positive"),
        ({"size": None}, "size"),
        ({"format": "pickle"}, "format"),
        ({"filename": "../evil"}, "filename"),
        ({"filename": "a/b"}, "filename"),
        ({"urls": []}, "empty"),
        ({"sha256_prefix": "cd" * 4}, "prefix"),
        ({"builtin": "../x.sepcli", "urls": None, "sha256": None, "size": None}, "builtin"),
    ],
)
def test_malformed_entries_are_refused(changes, words):
    with pytest.raises(RegistryError, match=words):
        parse_entry(_entry(**changes))


def test_manifest_level_checks():
    good = _entry()
    assert [e.name for e in parse_manifest({"version": 1, "models": [good]}, "t")] == ["m"]
    with pytest.raises(RegistryError, match="version"):
        parse_manifest({"version": 2, "models": [good]}, "t")
    with pytest.raises(RegistryError, match="duplicate"):
        parse_manifest({"version": 1, "models": [good, good]}, "t")
    with pytest.raises(RegistryError, match="JSON object"):
        parse_manifest([good], "t")


def test_filename_defaults_to_the_url_and_cache_key_follows_the_hash():
    entry = parse_entry(_entry(urls=["https://example.com/dir/weights-1.sepcli?download=1"]))
    assert entry.files[0].filename == "weights-1.sepcli"
    assert entry.cache_key == SHA[:16]
    other = parse_entry(_entry(sha256="cd" * 32))
    assert other.cache_key != entry.cache_key


def test_builtin_registry_is_valid_and_honest():
    reg = load_registry(registry=[])
    assert {"default", "umxhq", "umxl"} <= set(reg.names)
    assert reg.get("default").builtin == "default.sepcli"
    umxhq = reg.get("umxhq")
    assert umxhq.format == "openunmix" and umxhq.verifiable and umxhq.licence == "MIT"
    assert {f.target for f in umxhq.files} == {"vocals", "drums", "bass", "other"}
    for spec in umxhq.files:
        # the full hash must agree with the torch.hub prefix in the published file name
        assert spec.sha256.startswith(spec.filename.split("-")[1].split(".")[0])
        assert all(url.startswith("https://zenodo.org/") for url in spec.urls)
    umxl = reg.get("umxl")
    assert not umxl.verifiable and all(f.sha256 is None and f.sha256_prefix for f in umxl.files)


def test_unverifiable_builtin_entry_is_refused_without_network(hub_env):
    with pytest.raises(RegistryError, match="no full SHA-256"):
        resolve_model("umxl")


def test_unknown_name_lists_close_matches_and_known_names(hub_env):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("umxh")
    message = str(info.value)
    assert "did you mean umxhq" in message
    assert "'sepcli models list' shows all" in message and len(message.splitlines()) == 1
    with pytest.raises(ModelNotFoundError, match="did you mean mel_roformer-becruily-karaoke"):
        resolve_model("mel_roformer-becruily-karoke")
    with pytest.raises(ModelNotFoundError, match="did you mean umxhq"):
        resolve_model("UMXHQ")


def test_extra_registry_adds_and_overrides(hub_env, tmp_path, monkeypatch):
    mine = sepcli_entry("private-one", "https://models.example.com/p.sepcli", b"abc")
    override = sepcli_entry(
        "umxhq", "https://mirror.example.com/umxhq.sepcli", b"xyz", description="mirror"
    )
    path = write_registry(tmp_path / "extra.json", [mine, override])
    monkeypatch.setenv("SEPCLI_REGISTRY", str(path))
    reg = load_registry()
    assert reg.get("umxhq").format == "sepcli" and reg.get("umxhq").origin == str(path)
    assert reg.get("private-one").description == ""
    assert "default" in reg
    # the argument replaces the environment variable
    assert "private-one" not in load_registry(registry=[])


def test_registry_sources_split_on_commas(monkeypatch):
    monkeypatch.setenv("SEPCLI_REGISTRY", " a.json, https://x.example/r.json ,")
    assert registry_sources() == ["a.json", "https://x.example/r.json"]
    assert registry_sources(["b.json"]) == ["b.json"]


def test_bad_extra_registry_file_names_the_file(hub_env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match="bad.json"):
        load_registry(registry=str(bad))
    with pytest.raises(RegistryError, match="missing.json"):
        load_registry(registry=str(tmp_path / "missing.json"))
    evil = write_registry(tmp_path / "evil.json", [_entry(name="../../x")])
    with pytest.raises(RegistryError, match=r"evil\.json.*'\.\./\.\./x'"):
        load_registry(registry=str(evil))


@pytest.mark.network
def test_registry_url_is_fetched_and_kept_for_offline_use(file_server, hub_env):
    data = payload(5000)
    model_url = file_server.add("/r.sepcli", data)
    manifest = json.dumps(
        {"version": 1, "models": [sepcli_entry("remote", model_url, data)]}
    ).encode()
    reg_url = file_server.add("/registry.json", manifest)
    assert resolve_model("remote", registry=reg_url).read_bytes() == data
    file_server.stop()
    assert resolve_model("remote", registry=reg_url, offline=True).read_bytes() == data
    assert (
        load_registry(reg_url, cache_root=hub_env).get("remote").name == "remote"
    )  # stale copy, warned


@pytest.mark.network
def test_registry_url_failures(file_server, hub_env):
    with pytest.raises(RegistryError, match="non-HTTPS"):
        load_registry("http://example.com/registry.json", cache_root=hub_env)
    missing = file_server.url("/nope.json")
    with pytest.raises(DownloadError, match="HTTP 404"):
        load_registry(missing, cache_root=hub_env)
    with pytest.raises(OfflineError, match="never been fetched"):
        load_registry(missing, cache_root=hub_env, offline=True)


def test_existing_path_is_returned_as_is(identity_archive, hub_env):
    assert resolve_model(str(identity_archive)) == identity_archive


def test_missing_path_gives_a_clear_error(tmp_path, hub_env):
    with pytest.raises(ModelNotFoundError, match="no such model file"):
        resolve_model(str(tmp_path / "absent.sepcli"))
    with pytest.raises(ModelNotFoundError, match="folder"):
        resolve_model(str(tmp_path))


def test_default_without_packaged_archive_is_a_clear_error(hub_env, monkeypatch, tmp_path):
    import sepcli.hub.load as load

    monkeypatch.setattr(load, "packaged_asset", lambda filename: tmp_path / "assets" / filename)
    with pytest.raises(ModelNotFoundError, match="sepcli/assets/default.sepcli is missing"):
        resolve_model("default")


def test_default_resolves_to_the_packaged_archive(hub_env, monkeypatch, identity_archive):
    import sepcli.hub.load as load

    monkeypatch.setattr(load, "packaged_asset", lambda filename: identity_archive)
    assert resolve_model("default", offline=True) == identity_archive


def test_default_can_be_pointed_at_an_archive_or_a_name(
    hub_env, monkeypatch, identity_archive, tmp_path
):
    monkeypatch.setenv("SEPCLI_DEFAULT_MODEL", str(identity_archive))
    assert resolve_model("default") == identity_archive
    data = b"zz"
    reg = write_registry(
        tmp_path / "r.json", [sepcli_entry("house", "https://e.example/h.sepcli", data)]
    )
    monkeypatch.setenv("SEPCLI_DEFAULT_MODEL", "house")
    with pytest.raises(OfflineError, match="'house'"):
        resolve_model("default", registry=str(reg), offline=True)


def test_cache_dir_argument_beats_the_environment(tmp_path, monkeypatch):
    from sepcli.hub import cache_root

    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SEPCLI_CACHE")
    assert "sepcli" in str(cache_root())


def test_registry_hash_prefix_must_agree():
    prefix = hashlib.sha256(b"q").hexdigest()[:8]
    entry = parse_entry(_entry(sha256=hashlib.sha256(b"q").hexdigest(), sha256_prefix=prefix))
    assert entry.files[0].sha256_prefix == prefix
