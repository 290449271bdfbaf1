"""The archive shipped inside the package: loadable offline, within its budget, usable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tone

from sepcli.hub import load_model, resolve_model
from sepcli.inference.separator import Separator


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("SEPCLI_OFFLINE", "1")
    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEPCLI_DEFAULT_MODEL", raising=False)
    monkeypatch.delenv("SEPCLI_REGISTRY", raising=False)


def test_default_is_packaged_and_within_budget(offline):
    path = resolve_model("default")
    assert path.parent.name == "assets" and path.name == "default.sepcli"
    assert path.stat().st_size < 25 * 1024 * 1024
    archive = load_model("default")
    meta = archive.metadata
    assert meta.num_parameters < 10_000_000
    assert "vocals" in meta.sources and meta.sample_rate == 44100
    assert "research" in meta.licence.lower() and "musdb" in meta.training_data.lower()


def test_default_separates_offline(offline):
    sep = Separator(load_model("default"), device="cpu")
    mix = make_tone(1.5)
    out = sep.separate(mix, 44100, ["vocals", "accompaniment"])
    for y in out.values():
        assert y.shape == mix.shape and bool(np.isfinite(y.numpy()).all())
    np.testing.assert_allclose((out["vocals"] + out["accompaniment"]).numpy(), mix, atol=1e-4)
