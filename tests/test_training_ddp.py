"""``torchrun --nproc_per_node 2`` on CPU (gloo): a few steps, then both ranks
hold identical weights, and rank 0 alone wrote the run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tone, write_wav

pytestmark = pytest.mark.slow
SR = 8000

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from sepcli.training import TrainConfig, train, build_run_model

    data, out = sys.argv[1], sys.argv[2]
    held = {}

    def factory(config):
        model, meta = build_run_model(config)
        held["model"] = model
        return model, meta

    cfg = TrainConfig(data=data, out=out, model="umx", targets=("vocals",), sample_rate=8000, audio_channels=1,
                      segment=0.25, samples_per_track=4, steps_per_epoch=2, batch_size=2, epochs=2,
                      valid="c_1", cache_dir=out + "-cache", seed=1,
                      model_config={"hidden_size": 8, "num_layers": 1, "n_fft": 256, "hop_length": 64})
    result = train(cfg, model_factory=factory)
    rank = int(os.environ["RANK"])
    torch.save(held["model"].state_dict(), f"{out}-rank{rank}.pt")
    """
)


def test_torchrun_two_cpu_ranks_hold_identical_weights(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which(
        "torchrun"
    )
    if torchrun is None:
        pytest.skip("torchrun not installed")
    data = tmp_path / "data"
    for i, name in enumerate(("a_1", "b_1", "c_1")):
        write_wav(data / name / "vocals.wav", make_tone(0.5, SR, 1, seed=i) * 0.5, SR)
        write_wav(data / name / "accompaniment.wav", make_tone(0.5, SR, 1, seed=9 + i) * 0.5, SR)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1])
        + os.pathsep
        + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(data), str(out)],
        capture_output=True,
        text=True,
        timeout=500,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(f"{out}-rank0.pt", weights_only=True)
    w1 = torch.load(f"{out}-rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    initial = torch.load(
        f"{out}-rank0.pt", weights_only=True
    )  # trained weights differ from a fresh model
    torch.manual_seed(1)
    from sepcli.training import TrainConfig, build_run_model

    fresh, _ = build_run_model(
        TrainConfig(
            model="umx",
            targets=("vocals",),
            sample_rate=SR,
            audio_channels=1,
            model_config={"hidden_size": 8, "num_layers": 1, "n_fft": 256, "hop_length": 64},
        )
    )
    assert any(not torch.equal(initial[k], v) for k, v in fresh.state_dict().items())
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # one writer: no duplicated lines
    assert (out / "umx-vocals.sepcli").is_file()
