# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""The generated community registry (sepcli/hub/community.json) and finding,
downloading and freeing models at its scale.

The generator (scripts/gen_registry.py) reads splifft 0.0.9's and
audio-separator 0.47.1's package data; the tests that need them skip without.
Downloads run against the loopback server of test_hub_server.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from audio_separator_reference import reference_model, tiny_msst_yaml
from click.testing import CliRunner
from snr import snr_db
from test_hub_server import cached_files, file_server, hub_env, write_registry  # noqa: F401

from sepcli.cli import main
from sepcli.errors import ArchiveError, RegistryError
from sepcli.hub import catalog, load_model, resolve_model
from sepcli.hub.registry import MSST_MODEL_TYPES, load_registry, parse_entry
from sepcli.hub.space import DiskSpaceError

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = ROOT / "sepcli" / "hub" / "community.json"
#: Generated entries whose config does not build with this sepcli yet (keys not
#: implemented, or a published config that is inconsistent); docs/models.md names each.
#: None today (bs_roformer-fruit-sw, inference.normalize, builds since the separator
#: normalises whole tracks).
NOT_BUILDING = 0


def _generator():
    spec = importlib.util.spec_from_file_location("gen_registry", ROOT / "scripts/gen_registry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _community() -> list:
    return json.loads(COMMUNITY.read_text())["models"]


def run(*args: str):
    return CliRunner().invoke(main, ["models", *args], catch_exceptions=False)


# --- the generated registry ------------------------------------------------------


def test_generator_reproduces_the_committed_files():
    pytest.importorskip("splifft", reason="splifft 0.0.9 is the generator's input")
    pytest.importorskip("audio_separator", reason="audio-separator 0.47.1 gives the scores")
    gen = _generator()
    registry_text, docs_text = gen.outputs()
    assert COMMUNITY.read_text() == registry_text, "run scripts/gen_registry.py"
    assert gen.DOCS.read_text() == docs_text, "run scripts/gen_registry.py"


def test_generated_entries_have_the_registry_form():
    models = _community()
    assert len(models) >= 100
    reg = load_registry(registry=[])
    for raw in models:
        entry = reg.get(raw["name"])
        assert entry.format == "msst" and entry.raw["model_type"] in MSST_MODEL_TYPES
        assert entry.verifiable and [f.target for f in entry.files] == ["checkpoint"]
        spec = entry.files[0]
        assert spec.urls[0].startswith("https://") and spec.size > 1_000_000
        assert raw["hash_source"].startswith("splifft 0.0.9 data/registry.json")
        assert raw["config_source"].startswith("splifft 0.0.9 data/config/")
        assert raw["licence"].startswith("none stated")
        assert raw["authors"] and raw["purpose"] and entry.sources
        assert all(re.fullmatch(r"[a-z0-9_]+", s) for s in entry.sources)
        assert set(raw.get("stem_names", {})) <= set(entry.sources)
        training = raw["config"]["training"]
        assert training.get("instruments") == list(entry.sources)
        for dataset in entry.scores:
            assert raw["score_sources"][dataset]  # every score names its source


def test_generated_configs_build_except_those_named():
    reg = load_registry(registry=[])
    entries = [reg.get(m["name"]) for m in _community()]
    problems = {e.name: catalog.build_problem(e) for e in entries}
    blocked = {n: p for n, p in problems.items() if p is not None}
    print(f"{len(entries) - len(blocked)} of {len(entries)} generated configs build; not yet:")
    for name, why in sorted(blocked.items()):
        print(f"  {name}: {why}")
    assert len(blocked) == NOT_BUILDING
    docs = (ROOT / "docs" / "models.md").read_text()
    assert all(f"`{name}`" in docs for name in blocked)
    # one module per shape class, built for real (on the meta device: no memory)
    classes = {}
    for e in entries:
        if problems[e.name] is None:
            model = e.raw["config"]["model"]
            classes.setdefault((e.raw["model_type"], tuple(sorted(model))), e)
    assert len(classes) >= 3
    for e in classes.values():
        assert catalog.build_problem(e, build=True) is None, e.name


def test_builtin_hashes_cite_where_they_were_found():
    for name in ("registry.json", "community.json"):
        path = ROOT / "sepcli" / "hub" / name
        for model in json.loads(path.read_text())["models"]:
            for f in model.get("files", []):
                if f.get("sha256"):
                    assert f.get("hash_source") or model.get("hash_source"), model["name"]
    kim = load_registry(registry=[]).get("mel-roformer-kim")
    ckpt = next(f for f in kim.files if f.target == "checkpoint")
    assert ckpt.urls[0] == (
        "https://huggingface.co/KimberleyJSN/melbandroformer/resolve/"
        "ac9b0614ab3cd7f77219e18ba494dfd93956c348/MelBandRoformer.ckpt"
    )
    assert "mel_roformer-kim-vocals" in kim.raw["files"][1]["hash_source"]
    for name in ("htdemucs", "htdemucs_ft", "htdemucs_6s"):
        assert "facebookresearch/demucs/issues/508" in load_registry(registry=[]).get(name).licence


def test_purposes_come_from_fields_and_stems():
    assert catalog.derive_purposes("dereverb", ["dry"]) == ["dereverb"]
    assert catalog.derive_purposes("separation", ["lead_vocals", "back_vocals"]) == ["karaoke"]
    assert catalog.derive_purposes(None, ["drums", "bass", "other", "vocals"]) == [
        "instrument", "multistem", "vocals"
    ]  # fmt: skip
    assert catalog.safe_stem("No Reverb") == "no_reverb" and catalog.safe_stem("instrum") == (
        "instrumental"
    )


def test_list_and_download_share_one_purpose_option():
    from sepcli.cli.models import download_command, list_command

    options = [
        next(p for p in cmd.params if p.name == "purpose")
        for cmd in (list_command, download_command)
    ]
    assert all(o.multiple and o.metavar == "TASK" for o in options)
    tasks = "vocals, instrumental, karaoke, dereverb"
    assert options[0].help.startswith("Only models for TASK: " + tasks)
    assert options[1].help.startswith(
        "Also every verifiable model that this sepcli runs for TASK: "
    )
    assert options[0].help.split("TASK:")[1] == options[1].help.split("TASK:")[1]


def test_best_rule_picks_the_highest_score_per_stem():
    E = namedtuple("E", "name format verifiable builtin sources scores raw")
    a = E("a", "msst", True, None, ("vocals",), {"published": {"vocals": {"SDR": 9.0}}}, {})
    b = E("b", "msst", True, None, ("vocals",), {"published": {"vocals": {"SDR": 11.0}}}, {})
    c = E("c", "msst", True, None, ("vocals",), {"multisong": {"vocals": {"SDR": 5.0}}}, {})
    rule = catalog.best_by_rule([a, b], ["vocals", "drums"])
    assert rule["vocals"].value == 11.0 and rule["vocals"].source.startswith("b:")
    assert rule["drums"] is None
    # a preferred dataset wins over a higher figure on a later one
    assert catalog.best_by_rule([a, b, c], ["vocals"])["vocals"].source.startswith("c:")


# --- finding models -----------------------------------------------------------------


def _names(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [m["name"] for m in json.loads(result.output)]


def test_list_filters_and_sorts(hub_env):
    karaoke = _names(run("list", "--purpose", "karaoke", "--json"))
    assert "mel_roformer-becruily-karaoke" in karaoke and "umxhq" not in karaoke
    mdx = _names(run("list", "--arch", "mdx23c", "--json"))
    assert "mdx23c-instvoc-hq" in mdx and all("mdx23c" in n for n in mdx)
    assert _names(run("list", "--arch", "mel-roformer", "--json")) == _names(
        run("list", "--arch", "mel_roformer", "--json")
    )
    drums = _names(run("list", "--stem", "drums", "--licence", "research", "--json"))
    assert set(drums) == {"best", "htdemucs", "htdemucs_ft", "htdemucs_6s"}
    out = json.loads(run("list", "--stem", "dry", "--sort", "SDR:dry", "--json").output)
    values = [m["score"]["value"] for m in out if m["score"]]
    assert len(values) >= 3 and values == sorted(values, reverse=True)
    assert all(m["score"]["source"] for m in out if m["score"])
    table = run("list", "--purpose", "dereverb", "--sort", "SDR:dry")
    assert (
        "score: SDR dry (published)" in table.output
        and "mel_roformer-anvuew-dereverb" in table.output
    )
    typo = CliRunner().invoke(main, ["models", "list", "--purpose", "karoke"])
    assert "no model matches these filters; did you mean karaoke?" in typo.output
    bad = CliRunner().invoke(main, ["models", "list", "--sort", "vocals"])
    assert bad.exit_code == 2 and "METRIC:STEM" in bad.output


def test_list_marks_models_that_do_not_build_yet(hub_env, tmp_path, monkeypatch):
    # an entry whose config has a key sepcli does not implement (none is generated)
    odd = next(m for m in _community() if m["name"] == "bs_roformer-fruit-sw")
    odd = json.loads(json.dumps(odd))
    odd["name"] = "fruit-with-an-odd-key"
    odd["config"]["model"]["fno_layers"] = 2
    monkeypatch.setenv("SEPCLI_REGISTRY", str(write_registry(tmp_path / "r.json", [odd])))
    out = json.loads(run("list", "--arch", "bs_roformer", "--json").output)
    runs = {m["name"]: m["runs"] for m in out}
    assert runs["bs-roformer-viperx"] == "yes"
    assert runs["bs_roformer-unwa-hyperace_v2_vocals"] == "yes"
    assert runs["bs_roformer-fruit-sw"] == "yes"  # inference.normalize: whole-track stats
    assert runs["fruit-with-an-odd-key"].startswith("not yet:")
    assert "fno_layers" in runs["fruit-with-an-odd-key"]
    assert "not yet" in run("info", "fruit-with-an-odd-key").output


def test_info_shows_the_card(hub_env):
    out = run("info", "bs_roformer-fruit-sw").output
    for text in ("architecture", "bs_roformer", "purpose", "authors", "fruit", "runs",
                 "hash source", "splifft 0.0.9 data/registry.json"):  # fmt: skip
        assert text in out, text
    assert "instrumental = 'instrum'" in run("info", "mel_roformer-becruily-deux").output
    assert "whole track's mean and std" in " ".join(out.split())  # inference.normalize
    assert "whole track" not in run("info", "bs-roformer-viperx").output


def test_a_typo_suggests_the_nearest_names(hub_env):
    result = CliRunner().invoke(main, ["models", "info", "mel_roformer-becruily-karoke"])
    assert result.exit_code == 4
    assert "did you mean mel_roformer-becruily-karaoke" in result.output


def test_an_unknown_model_type_names_the_types_sepcli_runs():
    base = {"name": "x", "format": "msst", "model_type": "scnet_masked",
            "files": [{"target": "checkpoint", "urls": ["https://a.example/x.ckpt"],
                       "sha256": "1" * 64, "size": 2}],
            "config": {"model": {}}}  # fmt: skip
    with pytest.raises(RegistryError, match="it runs bs_roformer, mel_band_roformer, mdx23c"):
        parse_entry(base)


# --- downloading and freeing ---------------------------------------------------------


def _inline_entry(file_server, name: str, seed: int = 3, **extra) -> tuple[dict, torch.nn.Module]:
    """A generated-style entry: the checkpoint served, the config inline."""
    cfg = tiny_msst_yaml("mel_band_roformer")
    ref = reference_model("mel_band_roformer", cfg, seed=seed)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    data = buffer.getvalue()
    url = file_server.add(f"/{name}/model.ckpt", data)
    entry = {"name": name, "format": "msst", "model_type": "mel_band_roformer",
             "purpose": ["vocals"], "sources": ["vocals"], "licence": "none stated",
             "config": json.loads(json.dumps(cfg)),
             "files": [{"target": "checkpoint", "urls": [url],
                        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
             **extra}  # fmt: skip
    return entry, ref


def test_inline_config_entry_downloads_verifies_and_converts(file_server, hub_env, tmp_path):
    entry, ref = _inline_entry(file_server, "tiny-inline")
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    archive = load_model("tiny-inline", registry=reg)
    assert archive.metadata.family == "mel-roformer" and archive.metadata.sources == ("vocals",)
    mix = 0.3 * torch.randn(1, 2, 8820)
    with torch.no_grad():
        want, got = ref(mix)[:, None], archive.module(mix)
    assert snr_db(want, got, floor=1e-30) >= 60
    assert sorted(p.split("/")[-1] for p in cached_files(hub_env)) == [
        "tiny-inline.sepcli", "tiny-inline.sepcli.verified.json"
    ]  # fmt: skip


def test_an_entry_with_inference_normalize_converts_to_an_archive_that_says_so(
    file_server, hub_env, tmp_path
):
    entry, _ = _inline_entry(file_server, "tiny-normalised")
    entry["config"].setdefault("inference", {})["normalize"] = True
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    archive = load_model("tiny-normalised", registry=reg)
    assert archive.metadata.input_normalization == "track"
    assert "whole track's mean and std" in " ".join(run("info", str(archive.path)).output.split())


def test_a_config_the_checkpoint_does_not_fit_names_the_first_key(file_server, hub_env, tmp_path):
    entry, _ = _inline_entry(file_server, "tiny-wrong")
    entry["config"]["model"]["dim"] *= 2
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    with pytest.raises(ArchiveError, match=r"does not fit its config: \S+: the checkpoint has "
                       r"shape \(\d+,?\d*\), the config gives"):  # fmt: skip
        resolve_model("tiny-wrong", registry=reg)


def test_download_checks_free_space_first(file_server, hub_env, tmp_path, monkeypatch):
    entry, _ = _inline_entry(file_server, "tiny-full")
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("sepcli.hub.space.shutil.disk_usage", lambda p: Usage(10, 10, 1000))
    with pytest.raises(DiskSpaceError, match=r"not enough disk space for model 'tiny-full': "
                       r"needs [\d.]+ \w?B in \S+, 1.0 kB free there"):  # fmt: skip
        resolve_model("tiny-full", registry=reg)
    assert cached_files(hub_env) == [] and file_server.bytes_sent == 0
    result = CliRunner().invoke(main, ["models", "download", "tiny-full", "--registry", reg])
    assert result.exit_code == 5 and "not enough disk space for 1 model(s)" in result.output


def test_download_by_purpose_remove_and_prune(file_server, hub_env, tmp_path):
    a, _ = _inline_entry(file_server, "tiny-a", seed=1, purpose=["tinytask"])
    b, _ = _inline_entry(file_server, "tiny-b", seed=2, purpose=["tinytask"])
    reg = str(write_registry(tmp_path / "r.json", [a, b]))
    result = run("download", "--purpose", "tinytask", "--registry", reg)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["tiny-a", "tiny-b"]
    # a stale version (another hash) and an orphan (a name no registry has)
    stale = hub_env / "models" / "tiny-a" / "0123456789abcdef"
    stale.mkdir()
    (stale / "old.sepcli").write_bytes(b"x" * 1000)
    orphan = hub_env / "models" / "gone" / "fedcba9876543210"
    orphan.mkdir(parents=True)
    (orphan / "gone.sepcli").write_bytes(b"y" * 500)
    dry = run("prune", "--dry-run", "--registry", reg)
    assert "would free 1.5 kB" in dry.output and stale.exists() and orphan.exists()
    done = run("prune", "--registry", reg)
    assert (
        "stale: an earlier version" in done.output and "orphan: not in the registry" in done.output
    )
    assert not stale.exists() and not orphan.parent.exists()
    assert resolve_model("tiny-a", registry=reg, offline=True).is_file()  # current one kept
    removed = run("remove", "tiny-a", "tiny-b", "--registry", reg)
    assert "removed tiny-a" in removed.output and "freed" in removed.output
    assert cached_files(hub_env) == []
    none = CliRunner().invoke(
        main, ["models", "download", "--purpose", "nothing", "--registry", reg]
    )
    assert none.exit_code == 2 and "purpose 'nothing'" in none.output


def test_free_space_counts_only_what_a_resumed_download_still_needs(
    file_server, hub_env, tmp_path, monkeypatch
):
    from test_hub_server import payload, sepcli_entry

    from sepcli.hub.cache import entry_path, part_path
    from sepcli.hub.space import MARGIN_BYTES

    data = payload(300_000)
    entry = sepcli_entry("tiny-resume", file_server.add("/r.sepcli", data), data)
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    dest = entry_path(hub_env, load_registry(reg, cache_root=hub_env).get("tiny-resume"))
    dest.parent.mkdir(parents=True)
    part_path(dest).write_bytes(data[:200_000])
    Usage = namedtuple("Usage", "total used free")
    free = MARGIN_BYTES + 100_000  # enough for the rest, not for the whole file
    monkeypatch.setattr("sepcli.hub.space.shutil.disk_usage", lambda p: Usage(0, 0, free))
    assert resolve_model("tiny-resume", registry=reg) == dest
    assert dest.read_bytes() == data and file_server.bytes_sent == 100_000


def test_hand_entries_get_generated_scores_with_their_source():
    kim = load_registry(registry=[]).get("mel-roformer-kim")
    median = kim.scores["audio-separator-median"]["vocals"]["SDR"]
    assert 12.0 < median < 13.0 and kim.scores["multisong"]["vocals"]["SDR"] == 10.98
    assert "vocals_mel_band_roformer.ckpt" in kim.raw["score_sources"]["audio-separator-median"]
    rule = catalog.best_by_rule(load_registry(registry=[]), ["vocals"])
    assert rule["vocals"].source.startswith("mel-roformer-kim:")


def test_separate_names_a_few_models_for_a_missing_stem_best_first(hub_env):
    from sepcli.cli.separate import _models_hint

    hint = _models_hint(["dry"], None, True)
    shown = hint.split(": ", 1)[1].split(" and ")[0].split(", ")
    assert shown[0] == "mel_roformer-anvuew-dereverb_mono" and len(shown) == 5  # 20.40 published
    assert "more ('sepcli models list --stem dry')" in hint
