# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""Per-stem bags of published models: each stem from one part, each member with its own
chunking, composed once from registry parts (``format: bag``) and loaded offline."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_hub_server import cached_files, file_server, hub_env, write_registry  # noqa: F401

import sepcli.inference.separator as separator_module
from sepcli.errors import RegistryError, UsageError
from sepcli.hub import load_model, resolve_model
from sepcli.inference.separator import Separator
from sepcli.models import WaveformConfig, build_model, export_archive, load_verified
from sepcli.models.bags.blend import blend_archives, compose_bag, export_bag

torch.set_num_threads(2)
FOUR = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A vocal model (16 kHz, its own segment) and a two-member bag of four-stem models."""
    folder = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    wave = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=0.5)
    vocal_config = WaveformConfig(
        channels=4, depth=2, lstm_layers=1, segment=0.3, sample_rate=16000, sources=("vocals",)
    )
    vocal = export_archive(build_model("waveform", vocal_config), folder / "v.sepcli", name="v")
    members = [
        load_verified(
            export_archive(
                build_model("waveform", {**wave.to_dict(), "sources": list(FOUR)}),
                folder / f"m{i}.sepcli",
                name=f"m{i}",
                overlap=0.1 * (i + 1),
            )
        )
        for i in range(2)
    ]
    inner = blend_archives(members, list(FOUR), {"drums": [1.0, 0.0], "bass": [0.0, 1.0]})
    bag = export_archive(inner, folder / "four.sepcli", name="four")
    return load_verified(vocal), load_verified(bag)


def _separate(archive, x, stems=None):
    return Separator(archive, device="cpu").separate(x, 44100, stems)


def test_each_stem_comes_from_its_part(parts, tmp_path):
    vocal, four = parts
    path = export_bag([(vocal, ["vocals"]), (four, ["drums", "bass", "other"])],
                      tmp_path / "best.sepcli", name="best", accompaniment="mixture-minus-vocals")  # fmt: skip
    best = load_verified(path)
    meta = best.metadata
    assert meta.sources == ("vocals", "drums", "bass", "other")
    assert meta.extra["accompaniment"] == "mixture-minus-vocals"
    assert [p["stems"] for p in meta.extra["bag"]["parts"]] == [
        ["vocals"],
        ["drums", "bass", "other"],
    ]
    # the inner bag's members are flattened: both give drums/bass/other, the vocal model vocals
    assert len(meta.config["members"]) == 3
    x = np.random.default_rng(0).standard_normal((2, 40000)).astype(np.float32) * 0.1
    got = _separate(best, x)
    alone_v, alone_f = _separate(vocal, x), _separate(four, x)
    torch.testing.assert_close(got["vocals"], alone_v["vocals"], rtol=1e-5, atol=1e-6)
    for stem in ("drums", "bass", "other"):
        torch.testing.assert_close(got[stem], alone_f[stem], rtol=1e-5, atol=1e-6)
    acc = _separate(best, x, ["accompaniment"])["accompaniment"]
    torch.testing.assert_close(acc, torch.from_numpy(x) - got["vocals"], rtol=1e-5, atol=1e-6)


def test_only_the_parts_the_stems_need_run(parts, tmp_path, monkeypatch):
    vocal, four = parts
    best = load_verified(export_bag([(vocal, ["vocals"]), (four, ["drums", "bass", "other"])],
                                    tmp_path / "b.sepcli", name="b", accompaniment="mixture-minus-vocals"))  # fmt: skip
    ran = []
    original = separator_module._UnitStream.__init__

    def spy(self, unit, *args, **kwargs):
        ran.append(unit.sample_rate)
        original(self, unit, *args, **kwargs)

    monkeypatch.setattr(separator_module._UnitStream, "__init__", spy)
    x = np.zeros((2, 8000), np.float32)
    sep = Separator(best, device="cpu")
    # the progress total counts only the units that run
    assert sep.count_chunks(8000, 44100, ["vocals"]) < sep.count_chunks(8000, 44100)
    _separate(best, x, ["vocals", "accompaniment"])
    assert ran == [16000]  # the vocal model only; the four-stem members never run
    ran.clear()
    _separate(best, x, ["drums"])
    assert ran == [44100]  # drums has weight 1 in the first member, 0 in the second
    ran.clear()
    _separate(best, x, ["other"])
    assert ran == [44100, 44100]


def test_bad_bags_are_refused(parts):
    vocal, four = parts
    with pytest.raises(UsageError, match="one part"):
        compose_bag([(vocal, ["vocals"]), (four, ["vocals"])])
    with pytest.raises(UsageError, match="no stem piano"):
        compose_bag([(vocal, ["piano"]), (four, ["drums"])])


def _served(file_server, path, name):
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return {"name": name, "format": "sepcli", "licence": f"{name} terms", "sources": [],
            "url": file_server.add(f"/{name}.sepcli", data), "sha256": sha, "size": len(data)}  # fmt: skip


@pytest.mark.network
def test_registry_bag_downloads_its_parts_composes_once_and_works_offline(
    parts, file_server, hub_env, tmp_path
):
    vocal, four = parts
    entries = [
        _served(file_server, vocal.path, "voc"),
        _served(file_server, four.path, "four"),
        {"name": "best", "format": "bag", "description": "test bag",
         "accompaniment": "mixture-minus-vocals",
         "parts": [{"model": "voc", "stems": ["vocals"]},
                   {"model": "four", "stems": ["drums", "bass", "other"]}]},
    ]  # fmt: skip
    reg = str(write_registry(tmp_path / "r.json", entries))
    best = load_model("best", registry=reg)
    assert best.metadata.sources == ("vocals", "drums", "bass", "other")
    assert best.metadata.licence == "voc: voc terms | four: four terms"
    files = [p.split("/")[-1] for p in cached_files(hub_env)]
    assert sorted(files) == [
        "best.sepcli", "best.sepcli.verified.json", "four.sepcli", "four.sepcli.verified.json",
        "voc.sepcli", "voc.sepcli.verified.json",
    ]  # fmt: skip
    assert resolve_model("best", registry=reg, offline=True) == best.path
    # composed from cached parts offline when only the bag is gone
    best.path.unlink()
    assert resolve_model("best", registry=reg, offline=True).is_file()


def test_registry_bag_errors(tmp_path, hub_env):
    bad = [{"name": "best", "format": "bag",
            "parts": [{"model": "nope", "stems": ["vocals"]}, {"model": "also", "stems": ["drums"]}]}]  # fmt: skip
    reg = str(write_registry(tmp_path / "r.json", bad))
    with pytest.raises(RegistryError, match="'nope' is not in the registry"):
        resolve_model("best", registry=reg)
    twice = [{"name": "best", "format": "bag",
              "parts": [{"model": "a", "stems": ["vocals"]}, {"model": "b", "stems": ["vocals"]}]}]  # fmt: skip
    reg = str(write_registry(tmp_path / "r2.json", twice))
    with pytest.raises(RegistryError, match="exactly one part"):
        resolve_model("best", registry=reg)


@pytest.mark.network
def test_cli_bag_offline_or_without_network_names_every_part_and_the_one_command(
    parts, file_server, hub_env, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from sepcli.cli import main

    vocal, four = parts
    entries = [
        _served(file_server, vocal.path, "voc"),
        _served(file_server, four.path, "four"),
        {"name": "best", "format": "bag", "accompaniment": "mixture-minus-vocals",
         "parts": [{"model": "voc", "stems": ["vocals"]},
                   {"model": "four", "stems": ["drums", "bass", "other"]}]},
    ]  # fmt: skip
    sizes = {e["name"]: e["size"] for e in entries[:2]}
    good = str(write_registry(tmp_path / "good.json", entries))
    for e in entries[:2]:  # the same registry, its host unreachable (no network)
        e["url"] = f"https://nonexistent.invalid/{e['name']}.sepcli"
    unreachable = str(write_registry(tmp_path / "down.json", entries))
    song = tmp_path / "song.wav"
    import soundfile as sf

    sf.write(song, np.zeros((4410, 2), np.float32), 44100)
    run = CliRunner().invoke

    def separate(registry, *extra):
        monkeypatch.setenv("SEPCLI_REGISTRY", registry)
        return run(main, ["separate", str(song), "-m", "best", "-o", str(tmp_path / "o"), *extra])

    listed = [f"{n} ({sizes[n] / 1e6:.1f} MB)" for n in ("voc", "four")]
    for result in (separate(good, "--offline"), separate(unreachable)):
        assert result.exit_code == 5, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert (
            "model 'best' is a bag of 2 models; not in the cache: " + ", ".join(listed) in lines[0]
        )
        assert "run 'sepcli models download best'" in lines[0]
    assert "downloading 'voc' failed" in lines[0] and "host not found" in lines[0]
    assert not (tmp_path / "o").exists()

    # the one command fetches every part and composes the bag; then it works offline
    monkeypatch.delenv("SEPCLI_REGISTRY")
    fetched = run(main, ["models", "download", "best", "--registry", good])
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout.startswith("best ") and fetched.stdout.strip().endswith("best.sepcli")
    assert file_server.gets["/voc.sepcli"] == 1 and file_server.gets["/four.sepcli"] == 1
    done = separate(good, "--offline")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "o" / "song").glob("*.wav")) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav",
    ]  # fmt: skip
