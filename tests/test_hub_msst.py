# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""MSST entries (RoFormer / MDX23C): YAML + checkpoint downloaded, verified, converted once.

The files are tiny checkpoints in the published format, written from the
audio-separator 0.47.1 reference classes (tests/audio_separator_reference.py)
and served from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from audio_separator_reference import reference_model, tiny_msst_yaml, write_msst_yaml
from conftest import assert_data_archive
from snr import snr_db
from test_hub_server import cached_files, file_server, hub_env, write_registry  # noqa: F401

from sepcli.errors import RegistryError
from sepcli.hub import load_model, resolve_model
from sepcli.hub.registry import load_registry, parse_entry

pytestmark = pytest.mark.network


def _file(file_server, target: str, path: str, data: bytes) -> dict:
    url = file_server.add(path, data)
    return {"target": target, "urls": [url], "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}  # fmt: skip


def test_msst_entry_converts_once_and_loads_offline(file_server, hub_env, tmp_path):
    cfg = tiny_msst_yaml("bs_roformer")
    ref = reference_model("bs_roformer", cfg, seed=3)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    config = write_msst_yaml(tmp_path / "tiny.yaml", cfg).read_bytes()
    entry = {
        "name": "tiny-bs", "format": "msst", "model_type": "bs_roformer", "licence": "none stated",
        "sources": ["vocals"], "scores": {"multisong": {"vocals": {"SDR": 1.0}}},
        "files": [_file(file_server, "config", "/cfg/tiny.yaml", config),
                  _file(file_server, "checkpoint", "/ckpt/tiny.ckpt", buffer.getvalue())],
    }  # fmt: skip
    reg = str(write_registry(tmp_path / "r.json", [entry]))
    archive = load_model("tiny-bs", registry=reg)
    meta = archive.metadata
    assert (meta.family, meta.recipe, meta.licence, meta.sources) == (
        "bs-roformer",
        "mdxc",
        "none stated",
        ("vocals",),
    )
    assert meta.scores == {"multisong": {"vocals": {"SDR": 1.0}}}
    assert meta.extra["registry"]["files"]["checkpoint"] == entry["files"][1]["sha256"]
    mix = 0.3 * torch.randn(1, 2, 8820)
    with torch.no_grad():
        assert snr_db(ref(mix)[:, None], archive.module(mix), floor=1e-30) >= 60
    names = sorted(p.split("/")[-1] for p in cached_files(hub_env))
    assert names == ["tiny-bs.sepcli", "tiny-bs.sepcli.verified.json"]
    assert_data_archive(archive.path)
    file_server.stop()
    assert resolve_model("tiny-bs", registry=reg, offline=True) == archive.path


def test_msst_entries_need_config_and_checkpoint():
    base = {"name": "x", "format": "msst", "files": [
        {"target": "config", "urls": ["https://a.example/x.yaml"], "sha256": "0" * 64, "size": 1},
    ]}  # fmt: skip
    with pytest.raises(RegistryError, match="'config' and 'checkpoint'"):
        parse_entry(base)
    base["files"].append(
        {
            "target": "checkpoint",
            "urls": ["https://a.example/x.ckpt"],
            "sha256": "1" * 64,
            "size": 2,
        }
    )
    assert parse_entry(base).format == "msst"
    with pytest.raises(RegistryError, match="model_type"):
        parse_entry({**base, "model_type": "scnet"})


def test_builtin_msst_entries_are_pinned_and_honest():
    reg = load_registry(registry=[])
    expected = {
        "bs-roformer-viperx": ("bs_roformer", 639331213, "5b84f37e8d444c8c", ("vocals",)),
        "mel-roformer-kim": ("mel_band_roformer", 913106900, "87201f4d31afb5bc", ("vocals",)),
        "mdx23c-instvoc-hq": ("mdx23c", 448101203, "49d51472769e34a2", ("vocals", "instrumental")),
    }
    for name, (model_type, size, sha, sources) in expected.items():
        entry = reg.get(name)
        assert entry.format == "msst" and entry.verifiable and entry.raw["model_type"] == model_type
        files = {f.target: f for f in entry.files}
        assert files["checkpoint"].size == size and files["checkpoint"].sha256.startswith(sha)
        assert files["config"].size < 4096  # the YAML is pinned by hash too
        assert entry.sources == sources
        assert entry.licence.startswith(("none stated", "unclear"))
        assert "not measured by sepcli" in entry.raw["scores_note"]
