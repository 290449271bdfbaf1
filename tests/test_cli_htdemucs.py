"""``sepcli models import --format demucs`` and ``sepcli separate`` against ``demucs``.

The whole path: a checkpoint written in Demucs' own file format (random weights)
is imported through the CLI, and ``sepcli separate --shifts 0`` (the ``demucs``
chunking recipe in the streaming separator) must equal
``demucs.apply.apply_model(model, mix, shifts=0, split=True, overlap=0.25)``.

Reference, test-only (see tests/test_models_htdemucs.py)::

    pip install --no-deps demucs==4.1.0
    pip install --no-deps einops julius
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import real_song
from snr import snr_db

from sepcli.cli import main

htdemucs_ref = pytest.importorskip("demucs.htdemucs", reason="demucs is not installed")
demucs_apply = pytest.importorskip("demucs.apply", reason="demucs is not installed")
demucs_states = pytest.importorskip("demucs.states", reason="demucs is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FOUR = ["drums", "bass", "other", "vocals"]
TINY = dict(
    channels=8, dconv_comp=4, depth=2, nfft=256, t_layers=2, t_heads=2, samplerate=8000,
    segment=Fraction(1, 2),
)  # fmt: skip
#: The published kwargs (44.1 kHz, 7.8-s segments, n_fft 4096, depth 4, DConv everywhere,
#: a bottom projection, self- and cross-attention) with narrow layers and two transformer
#: layers, so that a real song runs in a few minutes on 2 cores.
NARROW_PUBLISHED = dict(
    samplerate=44100, segment=Fraction(39, 5), channels=8, nfft=4096, depth=4, dconv_mode=3,
    dconv_comp=4, bottom_channels=32, t_layers=2, t_heads=4, t_dropout=0.02,
)  # fmt: skip


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write_checkpoint(folder: Path, sig: str, seed: int, kwargs: dict):
    """A random HTDemucs saved as Demucs does, named ``SIG-HASH8.th``; returns (model, path)."""
    torch.manual_seed(seed)
    model = htdemucs_ref.HTDemucs(FOUR, **kwargs).eval()
    args, kw = model._init_args_kwargs
    package = {
        "klass": type(model),
        "args": args,
        "kwargs": kw,
        "state": demucs_states.get_state(model, None, half=True),
        "training_args": {},
    }
    demucs_states.save_with_checksum(package, folder / f"{sig}.th")
    path = next(folder.glob(f"{sig}-*.th"))
    # Demucs runs the weights as stored: fp16 values in a float32 model.
    return demucs_states.load_model(str(path)).eval(), path


def separate(archive: Path, wav: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    result = run(
        "separate", "-m", archive, wav, "-o", out, "--shifts", "0", "--bit-depth", "32",
        "--clip", "none", "-q", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stems = {}
    for path in sorted((out / wav.stem).glob("*.wav")):
        data, _ = sf.read(path, dtype="float32", always_2d=True)
        stems[path.stem] = torch.from_numpy(data.T.copy())
    return stems


def write_wav(path: Path, mix: np.ndarray, rate: int) -> torch.Tensor:
    sf.write(path, mix.T, rate, subtype="FLOAT")
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy())


def check_stems(expected: torch.Tensor, stems: dict[str, torch.Tensor]) -> list[float]:
    scores = []
    for k, name in enumerate(FOUR):
        assert stems[name].shape == expected[k].shape
        scores.append(snr_db(expected[k], stems[name], name))
    assert min(scores) >= 60, dict(zip(FOUR, scores, strict=True))
    return scores


def test_single_model_through_the_cli_equals_apply_model(tmp_path: Path) -> None:
    ref, th = write_checkpoint(tmp_path, "abcd1234", 0, TINY)
    archive = tmp_path / "tiny.sepcli"
    result = run("models", "import", "--format", "demucs", th, "-o", archive)
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    mix = write_wav(tmp_path / "song.wav", rng.normal(0, 0.2, (2, 8000 * 3 + 123)), 8000)
    stems = separate(archive, tmp_path / "song.wav", tmp_path / "out")
    with torch.no_grad():
        expected = demucs_apply.apply_model(ref, mix[None], shifts=0, split=True, overlap=0.25)[0]
    check_stems(expected, stems)
    # derived stems work as for every model
    both = separate(archive, tmp_path / "song.wav", tmp_path / "out2", "--stems",
                    "vocals,accompaniment")  # fmt: skip
    assert set(both) == {"vocals", "accompaniment"}
    # as --two-stems
    assert snr_db(expected[:3].sum(0), both["accompaniment"], "accompaniment") >= 60


def test_bag_through_the_cli_equals_bag_of_models(tmp_path: Path) -> None:
    ref1, _ = write_checkpoint(tmp_path, "f7e0c4bc", 1, TINY)
    ref2, _ = write_checkpoint(tmp_path, "d12395a8", 2, TINY)
    weights = [[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 0.5, 0.0]]
    (tmp_path / "bag.yaml").write_text(f"models: ['f7e0c4bc', 'd12395a8']\nweights: {weights}\n")
    archive = tmp_path / "bag.sepcli"
    result = run("models", "import", "--format", "demucs", tmp_path / "bag.yaml", "-o", archive)
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(1)
    mix = write_wav(tmp_path / "song.wav", rng.normal(0, 0.2, (2, 8000 * 2 + 77)), 8000)
    stems = separate(archive, tmp_path / "song.wav", tmp_path / "out")
    bag = demucs_apply.BagOfModels([ref1, ref2], weights)
    with torch.no_grad():
        expected = demucs_apply.apply_model(bag, mix[None], shifts=0, split=True, overlap=0.25)[0]
    check_stems(expected, stems)


def test_bad_files_give_one_line_errors_and_no_archive(tmp_path: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.th"
    torch.save({"klass": None, "state": {}, "x": RunsCode()}, evil)
    missing = tmp_path / "bag.yaml"
    missing.write_text("models: ['deadbeef']\n")
    for source, words in ((evil, "refused"), (missing, "not found")):
        out = tmp_path / "x.sepcli"
        result = run("models", "import", "--format", "demucs", source, "-o", out)
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], result.output
        assert "pwned" not in result.output
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind", ["single", "bag"])
def test_real_song_equals_apply_model(tmp_path: Path, shared_data: Path, kind: str):
    """31 s of real MUSDB18 previews, single model or bag, 60 dB per stem.

    7.8-s segments every 5.85 s: 6 chunks (5 overlaps, the last one mostly past the
    end), four 10-s input blocks and five 6.8-s songs; 3 minutes (31 chunks) proved no more.
    """
    mix = write_wav(tmp_path / "song.wav", real_song(shared_data, 31), 44100)
    torch.set_num_threads(2)
    ref1, th1 = write_checkpoint(tmp_path, "955717e8", 0, NARROW_PUBLISHED)
    if kind == "single":
        source, model = th1, ref1
    else:
        ref2, _ = write_checkpoint(tmp_path, "5c90dfd2", 1, NARROW_PUBLISHED)
        weights = [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]
        source = tmp_path / "bag.yaml"
        source.write_text(f"models: ['955717e8', '5c90dfd2']\nweights: {weights}\n")
        model = demucs_apply.BagOfModels([ref1, ref2], weights)
    archive = tmp_path / "m.sepcli"
    assert run("models", "import", "--format", "demucs", source, "-o", archive).exit_code == 0
    stems = separate(archive, tmp_path / "song.wav", tmp_path / "out", "--batch-size", "2")
    with torch.no_grad():
        expected = demucs_apply.apply_model(model, mix[None], shifts=0, split=True)[0]
    scores = check_stems(expected, stems)
    print(kind, [f"{s:.1f}" for s in scores])
