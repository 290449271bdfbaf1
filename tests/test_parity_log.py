"""tests/snr.py (the tests' one SNR and its log) and scripts/compare_parity.py."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import snr
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_parity.py"


@pytest.fixture
def fresh_log(tmp_path, monkeypatch) -> Path:
    """An empty figure log of its own, written to a temporary file."""
    path = tmp_path / "parity.json"
    monkeypatch.setenv(snr.LOG_ENV, str(path))
    monkeypatch.setattr(snr, "_figures", [])
    monkeypatch.setattr(snr, "_count", {})
    return path


def test_snr_db_is_float64_for_numpy_and_torch_alike():
    g = np.random.default_rng(0)
    ref = g.standard_normal((2, 1000)).astype(np.float32)
    est = ref + np.float32(1e-3) * g.standard_normal((2, 1000)).astype(np.float32)
    r64, e64 = ref.astype(np.float64), est.astype(np.float64)
    want = 10 * math.log10(np.sum(r64**2) / np.sum((r64 - e64) ** 2))
    assert snr.snr_db(ref, est) == want
    assert snr.snr_db(torch.from_numpy(ref), torch.from_numpy(est)) == want
    assert snr.snr_db(ref, torch.from_numpy(est)) == want
    assert snr.snr_db(torch.from_numpy(ref).bfloat16(), est) < want  # bf16 input accepted


def test_snr_db_equal_silent_and_nan():
    x = torch.ones(3)
    assert snr.snr_db(x, x) == math.inf
    assert snr.snr_db(x, x, floor=1e-30) == pytest.approx(10 * math.log10(3 / 1e-30))
    assert snr.snr_db(torch.zeros(3), x) == -math.inf
    assert math.isnan(snr.snr_db(x, torch.tensor([1.0, math.nan, 1.0])))


def test_figures_are_logged_by_test_label_and_order(fresh_log):
    x, y = torch.ones(4), torch.full((4,), 1.5)
    snr.snr_db(x, y, "vocals")
    snr.snr_db(x, y, "vocals")
    snr.snr_db(x, x)
    assert snr.write_log() == fresh_log
    figures = json.loads(fresh_log.read_text())["figures"]
    node = "tests/test_parity_log.py::test_figures_are_logged_by_test_label_and_order"
    assert [(f["test"], f["label"], f["n"]) for f in figures] == [
        (node, "vocals", 0), (node, "vocals", 1), (node, "", 0)
    ]  # fmt: skip
    assert figures[0]["db"] == 10 * math.log10(4 / 1.0) and figures[2]["db"] == math.inf


def test_nothing_is_logged_without_the_variable(monkeypatch):
    monkeypatch.delenv(snr.LOG_ENV, raising=False)
    monkeypatch.setattr(snr, "_figures", [])
    snr.snr_db(torch.ones(2), torch.zeros(2))
    assert snr._figures == [] and snr.write_log() is None


def _compare(tmp_path: Path, a: list[dict], b: list[dict]) -> int:
    spec = importlib.util.spec_from_file_location("compare_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, figures in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps({"figures": figures}))
    return module.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])


def test_compare_parity_wants_every_figure_bit_equal(tmp_path, capsys):
    one = {"test": "t::a", "label": "vocals", "n": 0, "db": 137.01234567890123}
    inf = {"test": "t::b", "label": "", "n": 0, "db": math.inf}
    assert _compare(tmp_path, [one, inf], [inf, one]) == 0
    assert "2 figures: 2 identical, 0 differ, 0 in one run only" in capsys.readouterr().out
    moved = {**one, "db": math.nextafter(one["db"], 0)}
    assert _compare(tmp_path, [one, inf], [moved, inf]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "largest difference: 2.84217e-14 dB at t::a [vocals] #0" in out
    assert _compare(tmp_path, [one, inf], [one]) == 1
    assert "1 in one run only" in capsys.readouterr().out
