"""``sepcli separate`` against audio-separator 0.47.1's MDXC ``demix``: the steps the
CLI parity tests share (tests/test_cli_separate_mdxc.py,
tests/test_cli_separate_shapes.py).

:func:`import_archive` writes a checkpoint in the published format and imports it
with ``sepcli models import --format msst``; :func:`cli_separate` runs ``sepcli
separate`` on a file (float32 WAV out, no clipping); :func:`reference_separate`
runs audio-separator's own ``MDXCSeparator.demix`` with a given model on the same
samples, driven as in tests/test_mdxc_recipe.py (object made with ``__new__``,
only the attributes ``demix`` reads set; residual stems as audio-separator
computes them). Only its file pipeline's peak normalisation is left out.
Reference installation: tests/audio_separator_reference.py.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_separator_reference import reference_module, write_msst_yaml
from click.testing import CliRunner

from sepcli.cli import main
from sepcli.models.importers.msst import safe_stem_name


def import_archive(tmp_path: Path, name: str, cfg: dict, state: dict) -> Path:
    """``sepcli models import --format msst`` of ``cfg`` (an MSST YAML dict) and the
    checkpoint ``state``; the archive's path."""
    ckpt = tmp_path / f"{name}.ckpt"
    torch.save(state, ckpt)
    config = write_msst_yaml(tmp_path / f"{name}.yaml", cfg)
    archive = tmp_path / f"{name}.sepcli"
    result = CliRunner().invoke(
        main, ["models", "import", "--format", "msst", "--config", str(config), str(ckpt),
               "-o", str(archive)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return archive


def reference_separate(model: torch.nn.Module, cfg: dict, mix: np.ndarray) -> dict[str, np.ndarray]:
    """audio-separator's ``MDXCSeparator.demix`` with ``model`` (``(1, channel, n) ->``
    its stems) on ``mix (channel, time)``, by sepcli stem name (published names
    through ``safe_stem_name``; a one-stem model's residual under the other
    published instrument, else ``residual``)."""
    ml_collections = pytest.importorskip("ml_collections")
    module = reference_module("architectures.mdxc_separator")
    sep = module.MDXCSeparator.__new__(module.MDXCSeparator)  # no file loading, no devices
    sep.logger = logging.getLogger("audio-separator-reference")
    sep.pitch_shift = 0
    sep.is_roformer = "num_subbands" not in cfg["model"]
    sep.override_model_segment_size = False
    sep.segment_size = 256
    sep.overlap = cfg["inference"].get("num_overlap", 8)
    sep.batch_size = cfg["inference"].get("batch_size", 1)
    sep.torch_device = sep.torch_device_cpu = torch.device("cpu")
    cfg = copy.deepcopy(cfg)
    cfg["training"].setdefault("target_instrument", None)  # demix reads it
    sep.model_data_cfgdict = ml_collections.ConfigDict(cfg)
    sep.model_run = model
    target = cfg["training"].get("target_instrument")
    sep.is_primary_stem_main_target = bool(target)
    if target:
        sep.primary_stem_name = target
        others = [i for i in cfg["training"]["instruments"] if i != target]
        sep.secondary_stem_name = others[0] if others else "residual"
    with torch.no_grad():
        out = sep.demix(mix.astype(np.float32), override_model_segment_size=False)
    return {safe_stem_name(k): np.asarray(v) for k, v in out.items()}


def cli_separate(tmp_path: Path, archive: Path, song: Path, stems: str) -> dict[str, np.ndarray]:
    """``sepcli separate`` of ``song`` with ``archive``: ``{stem: (channel, time)}``."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["separate", str(song), "-m", str(archive), "-o", str(out), "--stems", stems,
               "--bit-depth", "32", "--clip", "none", "--device", "cpu", "--force", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    found = {}
    for stem in stems.split(","):
        audio, rate = sf.read(out / song.stem / f"{stem}.wav", dtype="float32", always_2d=True)
        assert rate == 44100
        found[stem] = audio.T
    return found
