# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""Demucs entries: checkpoints downloaded, verified, converted once, then loaded offline.

Reference (test-only): ``pip install --no-deps demucs==4.1.0 einops julius``.
"""

from __future__ import annotations

import hashlib
import io
from fractions import Fraction

import pytest
import torch
from conftest import assert_data_archive
from snr import snr_db
from test_hub_server import cached_files, file_server, hub_env, write_registry  # noqa: F401

from sepcli.hub import load_model, resolve_model

htdemucs_ref = pytest.importorskip("demucs.htdemucs", reason="demucs is not installed")
demucs_apply = pytest.importorskip("demucs.apply", reason="demucs is not installed")
demucs_states = pytest.importorskip("demucs.states", reason="demucs is not installed")

pytestmark = pytest.mark.network

FOUR = ["drums", "bass", "other", "vocals"]
TINY = dict(channels=8, dconv_comp=4, depth=2, nfft=256, t_layers=2, t_heads=2,
            samplerate=8000, segment=Fraction(1, 2))  # fmt: skip


def _checkpoint(seed: int):
    """A random HTDemucs as Demucs saves it: (reference model as it loads, file bytes)."""
    torch.manual_seed(seed)
    model = htdemucs_ref.HTDemucs(FOUR, **TINY).eval()
    args, kwargs = model._init_args_kwargs
    buffer = io.BytesIO()
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs,
                "state": demucs_states.get_state(model, None, half=True)}, buffer)  # fmt: skip
    data = buffer.getvalue()
    return demucs_states.load_model(dict(torch.load(io.BytesIO(data), weights_only=False))), data


def _file(file_server, sig: str, data: bytes) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    url = file_server.add(f"/hybrid_transformer/{sig}-{sha[:8]}.th", data)
    return {"target": sig, "urls": [url], "sha256": sha, "sha256_prefix": sha[:8],
            "size": len(data)}  # fmt: skip


def test_single_and_bag_entries_convert_once_and_load_offline(file_server, hub_env, tmp_path):
    (ref1, data1), (ref2, data2) = _checkpoint(1), _checkpoint(2)
    weights = [[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]]
    entries = [
        {"name": "tiny-htdemucs", "format": "demucs", "licence": "test", "sources": FOUR,
         "scores": {"musdb18hq-test": {"average": {"SDR": 1.0}}},
         "files": [_file(file_server, "aaaa1111", data1)]},
        {"name": "tiny-bag", "format": "demucs", "licence": "test", "sources": FOUR,
         "bag": {"weights": weights},
         "files": [_file(file_server, "aaaa1111", data1), _file(file_server, "bbbb2222", data2)]},
    ]  # fmt: skip
    reg = str(write_registry(tmp_path / "r.json", entries))
    mix = torch.randn(1, 2, 4000)
    single = load_model("tiny-htdemucs", registry=reg)
    meta = single.metadata
    assert meta.family == "htdemucs" and meta.recipe == "demucs" and meta.licence == "test"
    assert meta.scores == {"musdb18hq-test": {"average": {"SDR": 1.0}}}
    with torch.no_grad():
        assert snr_db(ref1(mix), single.module(mix), "single", floor=1e-30) >= 60
    bag = load_model("tiny-bag", registry=reg)
    assert bag.metadata.family == "ensemble"
    with torch.no_grad():
        expected = demucs_apply.apply_model(
            demucs_apply.BagOfModels([ref1, ref2], weights), mix, shifts=0, split=False
        )
        assert snr_db(expected, bag.module(mix), "bag", floor=1e-30) >= 60
    # only the converted archives stay; offline works without fetching again
    names = sorted(p.split("/")[-1] for p in cached_files(hub_env))
    assert names == ["tiny-bag.sepcli", "tiny-bag.sepcli.verified.json",
                     "tiny-htdemucs.sepcli", "tiny-htdemucs.sepcli.verified.json"]  # fmt: skip
    assert resolve_model("tiny-bag", registry=reg, offline=True) == bag.path
    assert_data_archive(bag.path, members=2)
    assert_data_archive(single.path)
    assert resolve_model("tiny-htdemucs", registry=reg, offline=True) == single.path
