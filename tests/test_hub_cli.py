# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""``sepcli models`` in-process with CliRunner, plus one race of two real CLI processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_hub_server import (  # noqa: F401 - fixtures
    cached_files,
    file_server,
    hub_env,
    payload,
    sepcli_entry,
    write_registry,
)

from sepcli.cli import main

pytestmark = pytest.mark.network

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(file_server, hub_env, tmp_path):
    """A registry file with one served model ``tiny`` (40 kB); returns (registry, data)."""
    data = payload(40_000, seed=3)
    url = file_server.add("/tiny.sepcli", data)
    reg = write_registry(
        tmp_path / "reg.json", [sepcli_entry("tiny", url, data, description="test model")]
    )
    return str(reg), data


def run(*args: str):
    return CliRunner().invoke(main, ["models", *args], catch_exceptions=False)


def test_list_json_shows_registry_and_local_state(served, hub_env):
    reg, data = served
    result = run("list", "--json", "--registry", reg)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"default", "umxhq", "umxl", "tiny"} <= set(rows)
    assert rows["tiny"]["local_path"] is None and rows["tiny"]["origin"] == reg
    assert rows["umxhq"]["licence"] == "MIT"
    assert run("download", "tiny", "--registry", reg).exit_code == 0
    rows = {row["name"]: row for row in json.loads(run("list", "--json", "--registry", reg).stdout)}
    assert Path(rows["tiny"]["local_path"]).read_bytes() == data


def test_list_table_and_info(served):
    reg, _ = served
    result = run("--registry", reg, "list")  # group-level option
    assert result.exit_code == 0 and "tiny" in result.stdout and "umxhq" in result.stdout
    info = run("info", "tiny", "--registry", reg)
    assert info.exit_code == 0 and "test model" in info.stdout and "not downloaded" in info.stdout
    data = json.loads(run("info", "umxhq", "--json").stdout)
    assert data["format"] == "openunmix" and len(data["files"]) == 4


def test_download_then_path_prints_the_file_on_the_last_line(served, file_server):
    reg, data = served
    result = run("download", "tiny", "--registry", reg)
    assert result.exit_code == 0, result.output
    name, path = result.stdout.strip().split(" ", 1)
    assert name == "tiny" and Path(path).read_bytes() == data
    again = run("path", "tiny", "--registry", reg, "--offline")
    assert again.exit_code == 0
    assert again.stdout.strip().splitlines()[-1] == path
    assert file_server.gets["/tiny.sepcli"] == 1


def test_verify_reports_and_repairs_corruption(served, hub_env):
    reg, data = served
    path = Path(run("path", "tiny", "--registry", reg).stdout.strip().splitlines()[-1])
    ok = run("verify", "--registry", reg)
    assert ok.exit_code == 0 and "ok" in ok.stdout and "tiny" in ok.stdout
    path.write_bytes(data[:100] + b"!" + data[101:])
    bad = run("verify", "tiny", "--no-fix", "--registry", reg)
    assert (
        bad.exit_code == 5
        and "corrupt" in bad.stdout
        and "corrupt and not repaired: tiny" in bad.stderr
    )
    assert path.read_bytes()[100:101] == b"!"  # --no-fix reports and never deletes
    used = run("path", "tiny", "--registry", reg)  # and using it is refused, naming the file
    assert used.exit_code == 5 and str(path) in used.stderr.replace("\n", "")
    path.write_bytes(b"x" * len(data))
    fixed = run("verify", "--json", "--registry", reg)
    assert fixed.exit_code == 0
    statuses = {r["name"]: r["status"] for r in json.loads(fixed.stdout)}
    assert statuses["tiny"] == "repaired"  # the packaged default is listed too, as "builtin"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_remove_then_offline_names_the_missing_model(served, hub_env):
    reg, _ = served
    run("download", "tiny", "--registry", reg)
    removed = run("remove", "tiny", "--registry", reg)
    assert removed.exit_code == 0 and "removed tiny" in removed.stderr
    assert cached_files(hub_env) == []
    again = run("remove", "tiny", "--registry", reg)
    assert again.exit_code == 0 and "not in the cache" in again.stderr
    offline = run("path", "tiny", "--registry", reg, "--offline")
    assert offline.exit_code == 5
    assert "'tiny'" in offline.stderr and "sepcli models download tiny" in offline.stderr
    assert offline.stdout == ""


def test_errors_are_one_line_with_exit_codes(served, tmp_path):
    reg, _ = served
    unknown = run("path", "tinny", "--registry", reg)
    assert unknown.exit_code == 4 and "did you mean tiny" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert run("remove", "../../x").exit_code == 4
    evil = write_registry(
        tmp_path / "evil.json", [sepcli_entry("ok", "http://example.com/x", b"1")]
    )
    refused = run("list", "--registry", str(evil))
    assert refused.exit_code == 5 and "refusing non-HTTPS URL" in refused.stderr
    assert run("remove", "default").exit_code == 4


def test_cache_dir_option_beats_the_environment(served, tmp_path, hub_env):
    reg, data = served
    other = tmp_path / "other-cache"
    result = run("--cache-dir", str(other), "download", "tiny", "--registry", reg)
    assert result.exit_code == 0
    assert Path(result.stdout.split(" ", 1)[1].strip()).is_relative_to(other)
    assert cached_files(hub_env) == []


@pytest.mark.slow
def test_two_cli_processes_racing_produce_one_correct_file(file_server, hub_env, tmp_path):
    data = payload(400_000, seed=9)
    url = file_server.add("/race.sepcli", data, "slow")
    reg = write_registry(tmp_path / "reg.json", [sepcli_entry("race", url, data)])
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEPCLI_TIMEOUT": "10"}
    cmd = [sys.executable, "-m", "sepcli", "models", "download", "race", "--registry", str(reg)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip().split(" ", 1)[1] for out, _ in outs}
    assert len(paths) == 1
    assert (
        hashlib.sha256(Path(paths.pop()).read_bytes()).hexdigest()
        == hashlib.sha256(data).hexdigest()
    )
    assert file_server.gets["/race.sepcli"] == 1


def test_separate_downloads_a_registry_model_on_first_use(
    file_server, hub_env, tmp_path, monkeypatch, identity_archive, tone_wav
):
    data = identity_archive.read_bytes()
    url = file_server.add("/identity.sepcli", data)
    reg = write_registry(tmp_path / "reg.json", [sepcli_entry("ident", url, data)])
    monkeypatch.setenv("SEPCLI_REGISTRY", str(reg))
    args = ["separate", str(tone_wav), "--model", "ident", "-o", str(tmp_path / "out"), "-q"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tone" / "vocals.wav").is_file()
    assert file_server.gets["/identity.sepcli"] == 1
    again = CliRunner().invoke(main, [*args, "--offline", "-f"], catch_exceptions=False)
    assert again.exit_code == 0 and file_server.gets["/identity.sepcli"] == 1


def test_blend_downloads_a_member_named_in_a_registry(file_server, hub_env, tmp_path):
    from sepcli.models import WaveformConfig, build_model, export_archive

    config = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0, sources=("vocals",))
    local = export_archive(build_model("waveform", config), tmp_path / "w.sepcli", name="w")
    data = local.read_bytes()
    url = file_server.add("/wave.sepcli", data)
    reg = write_registry(tmp_path / "reg.json", [sepcli_entry("wave", url, data)])
    out = tmp_path / "bag.sepcli"
    result = run("blend", "wave", str(local), "--registry", str(reg), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert file_server.gets["/wave.sepcli"] == 1
    from sepcli.models.archive import read_metadata

    blend = read_metadata(out).extra["blend"]["members"]
    assert [m["sha256"] for m in blend] == [hashlib.sha256(data).hexdigest()] * 2
    args = ["blend", "wave", "wave", "-o", str(out), "--force", "--registry", str(reg)]
    offline = run("--offline", "--cache-dir", str(tmp_path / "empty"), *args)  # group options
    assert (
        offline.exit_code != 0
        and "wave" in offline.output
        and file_server.gets["/wave.sepcli"] == 1
    )


def test_unresolvable_host_is_one_error_line_without_a_bar(hub_env, tmp_path, monkeypatch):
    monkeypatch.delenv("SEPCLI_RETRIES")
    data = payload(1_000)
    reg = write_registry(
        tmp_path / "reg.json",
        [sepcli_entry("nowhere", "https://nonexistent.invalid/m.sepcli", data)],
    )
    result = run("download", "nowhere", "--registry", str(reg))
    assert result.exit_code == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "host not found" in lines[0], result.stderr
    assert "downloading" not in result.stderr
    assert not (hub_env / "models").exists()


def test_the_packaged_default_shows_no_download_bar(
    tmp_path, monkeypatch, tone_wav, terminal_screen
):
    # before: "downloading default ━━━ 0/? bytes" was drawn while the archive loaded
    from sepcli.models import archive

    monkeypatch.setenv("SEPCLI_OFFLINE", "1")
    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEPCLI_DEFAULT_MODEL", raising=False)
    screen = terminal_screen
    real_load = archive.load_archive

    def slow_load(*args, **kwargs):
        time.sleep(0.4)  # a cold disk: long enough for the bar to be drawn
        return real_load(*args, **kwargs)

    monkeypatch.setattr(archive, "load_archive", slow_load)
    args = ["separate", str(tone_wav), "-o", str(tmp_path / "out"), "--stems", "vocals"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "downloading" not in screen.getvalue()
    assert "separated" in screen.getvalue()  # the console was the one drawn on


def test_info_takes_an_archive_path_relative_home_or_a_name_that_is_also_a_file(
    served, tmp_path, monkeypatch
):
    reg, _ = served
    archive = REPO / "sepcli" / "assets" / "default.sepcli"
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.sepcli").write_bytes(archive.read_bytes())
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    for spelling in (
        "./model.sepcli",
        "model.sepcli",
        "~/model.sepcli",
        str(work / "model.sepcli"),
    ):
        result = run("info", spelling, "--json")
        assert result.exit_code == 0, (spelling, result.output)
        data = json.loads(result.stdout)
        assert data["sha256"] == sha and data["path"] == str(work / "model.sepcli")
        assert data["family"] and data["sources"]
    table = run("info", "./model.sepcli")
    assert table.exit_code == 0 and sha[:16] in table.stdout and "sources" in table.stdout
    missing = run("info", "./absent.sepcli")
    assert missing.exit_code == 4 and "./absent.sepcli: no such model file" in missing.stderr
    # a file in the current folder called like a registry entry: the file, as --model does
    (work / "tiny").write_bytes(archive.read_bytes())
    both = run("info", "tiny", "--json", "--registry", reg)
    assert both.exit_code == 0 and json.loads(both.stdout)["sha256"] == sha
    assert "also a registry name" in both.stderr
    (work / "tiny").unlink()
    assert "test model" in run("info", "tiny", "--registry", reg).stdout
