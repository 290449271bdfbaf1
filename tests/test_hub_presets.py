"""Presets as data (sepcli.hub.presets), `sepcli presets list/info` and `separate --preset`."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from sepcli.cli import main
from sepcli.hub.presets import load_presets, parse_presets

AUDIO_SEPARATOR_PRESETS = (
    "vocal_balanced", "vocal_clean", "vocal_full", "vocal_rvc", "karaoke",
    "instrumental_clean", "instrumental_full", "instrumental_balanced",
    "instrumental_low_resource",
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("offline_user_dirs")


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def package_file(package: str, relative: str) -> Path:
    """A data file of an installed reference package, found through its distribution
    (the parity tests leave a bare stand-in of ``audio_separator`` in sys.modules)."""
    try:
        dist = importlib.metadata.distribution(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (test-only reference)")
    return Path(dist.locate_file(package)) / relative


def test_audio_separators_nine_presets_are_shipped_as_published():
    """Same models (by audio-separator's file names), algorithm and weights as
    audio-separator 0.47.1's ensemble_presets.json."""
    published = json.loads(package_file("audio_separator", "ensemble_presets.json").read_text())[
        "presets"
    ]
    ours = load_presets()
    assert set(AUDIO_SEPARATOR_PRESETS) <= set(published) and set(published) <= set(ours)
    for name, recipe in published.items():
        preset = ours[name]
        assert preset.kind == "ensemble" and preset.algorithm == {"*": recipe["algorithm"]}
        assert preset.weights == (tuple(recipe["weights"]) if recipe["weights"] else None)
        assert [m.published_as for m in preset.members] == recipe["models"]
        assert [m.name for m in preset.members] == [
            f.rsplit(".", 1)[0].lower() for f in recipe["models"]
        ]
    assert {"best", "karaoke-chain", "clean-vocals-chain"} <= set(ours)
    assert [s.input for s in ours["karaoke-chain"].steps] == ["mix", "vocals"]


def test_every_member_digest_is_splifts_published_checkpoint_digest():
    registry = json.loads(package_file("splifft", "data/registry.json").read_text())
    data = json.loads(Path("sepcli/hub/presets.json").read_text())
    members = [
        m
        for p in data["presets"].values()
        for m in p.get("members", []) + [s.get("model") for s in p.get("steps", [])]
        if isinstance(m, dict)
    ]
    assert len(members) >= 15
    for member in members:
        if "sha256" not in member:
            assert "splifft" not in member  # no digest without its source
            continue
        (ckpt,) = [r for r in registry[member["splifft"]]["resources"] if r["kind"] == "model_ckpt"]
        assert ckpt["digest"] == "sha256:" + member["sha256"], member["name"]


def test_list_marks_missing_models_and_info_shows_sizes():
    result = cli("presets", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert "missing: " not in result.output  # JSON lists them under "missing"
    assert rows["instrumental_low_resource"]["missing"][-1] == "uvr-mdx-net-inst_hq_5"
    assert rows["best"]["missing"] == [] and rows["best"]["download_bytes"] > 10**9
    table = CliRunner().invoke(main, ["presets", "list"], env={"COLUMNS": "250"}).output
    assert "missing: uvr-mdx-net-inst_hq_5" in table and "uvr_max_spec" in table
    info = cli("presets", "info", "best")
    assert info.exit_code == 0 and "to download" in info.output and "10.98" in info.output


def tiny_archives(tmp_path: Path) -> list[Path]:
    from sepcli.models import WaveformConfig, build_model, export_archive

    torch.manual_seed(0)
    config = WaveformConfig(channels=4, depth=2, lstm_layers=1, segment=1.0)
    paths = []
    for name, sources in (("tiny-a", ["vocals", "drums"]), ("tiny-b", ["vocals"])):
        model = build_model("waveform", {**config.to_dict(), "sources": sources})
        paths.append(export_archive(model, tmp_path / f"{name}.sepcli", name=name))
    return paths


def cached_registry(
    tmp_path: Path, archives: list[Path], monkeypatch, names=None, sources=None
) -> None:
    """A registry of ``archives`` (as if downloaded: already in the cache)."""
    from sepcli.hub.cache import entry_path
    from sepcli.hub.registry import parse_entry

    entries = []
    for path, name in zip(archives, names or [p.stem for p in archives], strict=True):
        raw = {
            "name": name, "format": "sepcli", "url": f"https://example.invalid/{path.name}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
        }  # fmt: skip
        if sources:
            raw["sources"] = sources[len(entries)]
        dest = entry_path(tmp_path / "cache", parse_entry(raw))
        dest.parent.mkdir(parents=True)
        shutil.copy(path, dest)
        entries.append(raw)
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"version": 1, "models": entries}))
    monkeypatch.setenv("SEPCLI_REGISTRY", str(registry))


def test_separate_with_an_ensemble_preset(tmp_path, monkeypatch):
    """`separate --preset` builds the bag from registry members with the preset's
    algorithm: vocals = uvr_min_spec of both members, drums from the only one."""
    from sepcli.dsp.ensemble import ensemble
    from sepcli.inference.separator import Separator
    from sepcli.models.archive import load_archive

    archives = tiny_archives(tmp_path)
    cached_registry(tmp_path, archives, monkeypatch, names=["tiny-a", "renamed-b"])
    digest_b = hashlib.sha256(archives[1].read_bytes()).hexdigest()
    presets = tmp_path / "mine.toml"
    presets.write_text(
        "version = 1\n\n[presets.mine]\n"
        f'members = ["tiny-a", {{ name = "tiny-b", sha256 = "{digest_b}" }}]\n'
        'algorithm = "uvr_min_spec"\n'
    )
    x = np.random.default_rng(3).standard_normal((2, 30000)).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", x.T, 44100, subtype="FLOAT")
    listed = cli("presets", "list", "--presets", str(presets), "--json")
    row = next(r for r in json.loads(listed.output) if r["name"] == "mine")
    assert [m["registry"] for m in row["members"]] == ["tiny-a", "renamed-b"]  # by digest
    result = cli("separate", str(tmp_path / "song.wav"), "--preset", "mine",
                 "--presets", str(presets), "-o", str(tmp_path / "out"), "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    got = {s: sf.read(tmp_path / "out" / "song" / f"{s}.wav", dtype="float32")[0].T
           for s in ("vocals", "drums")}  # fmt: skip
    alone = [Separator(load_archive(p), device="cpu").separate(x, 44100) for p in archives]
    expected = ensemble(torch.stack([a["vocals"] for a in alone]), "uvr_min_spec").numpy()
    np.testing.assert_allclose(got["vocals"], expected, atol=1e-4)
    np.testing.assert_allclose(got["drums"], alone[0]["drums"].numpy(), atol=1e-4)
    # -m PRESET does the same (the bag is cached under the preset's key)
    again = cli("separate", str(tmp_path / "song.wav"), "-m", "mine", "--presets", str(presets),
                "-o", str(tmp_path / "out2"), "-q")  # fmt: skip
    assert again.exit_code == 0, again.output
    bags = list((tmp_path / "cache" / "presets" / "mine").glob("*/mine.sepcli"))
    assert len(bags) == 1


BAD = [
    ("{\n  \"version\": 1,\n  \"presets\": {,}\n}", "bad.json:3: not valid JSON"),
    ('{"version": 2, "presets": {}}', "bad.json: a presets file is"),
    ('{"version": 1, "presets": {\n "x": {\n  "members": ["a", "b"],\n  "algorithm": "loudest"}}}',
     "bad.json:2: preset 'x': algorithm: unknown algorithm 'loudest'"),
    ('{"version": 1, "presets": {"x": {"members": ["a", "B!"]}}}',
     "preset 'x': members[1]: bad model name 'B!'"),
    ('{"version": 1, "presets": {"x": {"members": ["a", "b"], "weights": [1]}}}',
     "preset 'x': weights: one number >= 0 per member (2)"),
    ('{"version": 1, "presets": {"x": {"steps": [{"model": "a"}, {"input": "drums.kick", "model": "b"}]}}}',
     "preset 'x': steps[1].input: input 'drums.kick': no earlier step runs on 'drums'"),
    ('{"version": 1, "presets": {"x": {"model": "a", "members": ["a", "b"]}}}',
     "preset 'x': give either 'model' or 'members'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_presets_files_are_one_line_errors(tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = cli("presets", "list", "--presets", str(bad))
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_separate_refuses_bad_presets_before_any_work(tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((1000, 2), np.float32), 44100)
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[presets.x]\nmembers = ["a", "b"]\nalgorithm = "loudest"\n')
    out = tmp_path / "out"
    result = cli("separate", str(song), "--presets", str(bad), "-o", str(out))
    assert result.exit_code == 2 and "bad.toml:2: preset 'x': algorithm" in result.output
    mine = tmp_path / "mine.json"
    mine.write_text(
        '{"version": 1, "presets": {\n "x": {"members": ["default", "no-such-model"]}}}'
    )
    missing = cli("separate", str(song), "--preset", "x", "--presets", str(mine), "-o", str(out))
    assert missing.exit_code == 2 and (
        "mine.json:2: preset 'x': not in the registry: no-such-model" in missing.output
    )
    # audio-separator's ONNX MDX-Net has no registry entry: refused before any download
    onnx = cli("separate", str(song), "--preset", "instrumental_low_resource", "-o", str(out))
    assert onnx.exit_code == 2 and "not in the registry: " in onnx.output
    assert onnx.output.rstrip().endswith("uvr-mdx-net-inst_hq_5")
    # a chain preset runs (tests/test_chains.py); a stem no step makes is refused first
    chain = cli("separate", str(song), "--preset", "karaoke-chain", "--stems", "vocals.kick",
                "-o", str(out))  # fmt: skip
    assert chain.exit_code == 2 and "--stems vocals.kick: step 2" in chain.output
    assert not out.exists()


def test_user_config_presets_extend_and_override(tmp_path):
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "presets.json").write_text(
        json.dumps({"version": 1, "presets": {"best": {"model": "htdemucs"}}})
    )
    assert load_presets()["best"].members[0].name == "htdemucs"
    assert load_presets()["best"].origin.startswith(str(folder / "presets.json"))
    assert len(load_presets()) == len(load_presets([])) >= 12  # the others stay
    assert parse_presets(b'{"version": 1, "presets": {}}', "x.json") == {}


def test_chain_steps_are_checked_against_the_stems_their_models_make(tmp_path, monkeypatch):
    from sepcli.hub import open_registry
    from sepcli.hub.presets import chain_problems, step_preset

    archives = tiny_archives(tmp_path)
    cached_registry(tmp_path, archives, monkeypatch, sources=[["vocals", "drums"], ["vocals"]])
    text = (
        "version = 1\n[presets.c]\nsteps = [\n"
        '  { input = "mix", model = "tiny-a" },\n'
        '  { input = "accompaniment", members = ["tiny-a", "tiny-b"], algorithm = "max_fft" },\n'
        '  { input = "bass", model = "tiny-b" },\n'
        '  { input = "accompaniment.vocals", model = "tiny-b" },\n'
        "]\n"
    )
    chain = parse_presets(text.encode(), "c.toml")["c"]
    registry = open_registry()
    assert chain_problems(chain, registry) == [
        "c.toml:2: preset 'c': steps[2].input: step 1 makes vocals, drums, not 'bass'"
    ]
    second = step_preset(chain, 1)
    assert second.kind == "ensemble" and second.algorithm == {"*": "max_fft"}
    assert second.name == "c.step2" and [m.name for m in second.members] == ["tiny-a", "tiny-b"]
