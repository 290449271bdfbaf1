"""Archives are data: format 2 holds no code, format 1 (TorchScript) runs only after
every operation of its graphs passed the allow-list (issue 30)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import _meta, assert_data_archive, make_tone, write_wav
from snr import snr_db

from sepcli.cli import main
from sepcli.errors import ArchiveError, SepcliError
from sepcli.inference.separator import Separator
from sepcli.models import UMXConfig, build_model, export_archive
from sepcli.models.archive import (
    METADATA_FILE,
    load_archive,
    read_metadata,
    save_archive,
    upgrade_archive,
)
from sepcli.models.archive.audit import refused_operation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ASSETS = Path(__file__).resolve().parents[1] / "sepcli" / "assets"
#: sepcli/assets/default.sepcli as it shipped in format 1 (a TorchScript program),
#: byte for byte: the older archive every later sepcli must still read.
OLD_DEFAULT = Path(__file__).resolve().parent / "data" / "archives" / "default-format1.sepcli"
PAYLOAD = b"#!/bin/sh\necho the user's own script\n"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "cache"))


# --- hostile format-1 archives, each built here ------------------------------------


class FromFile(torch.nn.Module):
    """Writes through ``torch.from_file(path, shared=True)`` (the attack of issue 30)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        f = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        f.copy_(torch.full([8], 35, dtype=torch.uint8))
        return mix.unsqueeze(1) + f.sum().float() * 0


class Save(torch.nn.Module):
    """Writes a file with ``torch.save`` (``aten::save``), from a helper method."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1

    def helper(self, mix: torch.Tensor) -> torch.Tensor:
        torch.save(mix, self.target)
        return mix

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.helper(mix).unsqueeze(1)


class Inner(torch.nn.Module):
    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        shared = torch.zeros(1)
        shared.set_(mix)  # rebinds a tensor to another's storage
        return shared


class SetStorage(torch.nn.Module):
    """Storage sharing (``aten::set_``) in a submodule."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.inner = Inner()
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.inner(mix).unsqueeze(1)


_LIB = torch.library.Library("sepcli_test_evil", "DEF")
_LIB.define("touch(Tensor x, str path) -> Tensor")


def _touch(x: torch.Tensor, path: str) -> torch.Tensor:
    Path(path).write_bytes(b"#")
    return x.clone()


_LIB.impl("touch", _touch, "CompositeExplicitAutograd")


class CustomOp(torch.nn.Module):
    """Calls a ``torch.library`` op registered in this process."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.ops.sepcli_test_evil.touch(mix, self.target).unsqueeze(1)


class SetState(torch.nn.Module):
    """``__setstate__`` runs inside ``torch.jit.load``, before any graph can be checked."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.sample_rate, self.audio_channels, self.num_sources = 44100, 2, 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix.unsqueeze(1)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        torch.save(torch.zeros(1), state[0])
        self.target = state[0]
        self.training = state[1]


HOSTILE = {
    "from_file": (FromFile, "aten::from_file", "forward"),
    "save": (Save, "aten::save", "<module>.helper"),
    "storage": (SetStorage, "aten::set_", "inner.forward"),
    "custom op": (CustomOp, "sepcli_test_evil::touch", "forward"),
    "setstate": (SetState, "__setstate__", "__setstate__"),
}


def _hostile(kind: str, folder: Path) -> tuple[Path, Path]:
    """(archive, the user's file it attacks); the archive is written unprobed, like an
    attacker's (probing would run it)."""
    target = folder / "victim.sh"
    target.write_bytes(PAYLOAD)
    cls = HOSTILE[kind][0]
    scripted = torch.jit.script(cls(str(target)))
    meta = _meta("evil", ["vocals"], 44100, 2, "waveform", "test").replace(format_version=1)
    path = folder / f"{kind.replace(' ', '-')}.sepcli"
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: meta.to_json()})
    assert target.read_bytes() == PAYLOAD
    return path, target


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_archive_is_refused_naming_the_operation(tmp_path, kind):
    path, target = _hostile(kind, tmp_path)
    _, op, method = HOSTILE[kind]
    with pytest.raises(ArchiveError) as info:
        load_archive(path)
    message = str(info.value)
    assert "\n" not in message and op in message and method in message, message
    assert target.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_cli_refuses_a_hostile_archive_before_reading_audio(tmp_path, kind, monkeypatch):
    from sepcli.audio import decode

    path, target = _hostile(kind, tmp_path)
    opened: list[object] = []
    real_init = decode.AudioReader.__init__

    def spy(self, *args, **kwargs):
        opened.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(decode.AudioReader, "__init__", spy)
    song = write_wav(tmp_path / "song.wav", make_tone(0.5))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["separate", str(song), "-m", str(path), "-o", str(out)])
    assert r.exit_code == 4, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0] and HOSTILE[kind][1] in lines[0], r.output
    assert "Traceback" not in r.output
    assert opened == []  # no audio was read
    assert target.read_bytes() == PAYLOAD
    assert not out.exists() or not any(out.rglob("*"))


def test_allow_list():
    for kind in ("aten::conv1d", "aten::lstm", "aten::stft", "prim::If", "prim::Loop"):
        assert not refused_operation(kind), kind
    for kind in (
        "aten::from_file", "aten::save", "aten::set_", "aten::_share_memory_", "prim::PythonOp",
        "prim::CallFunction", "prim::CallMethod", "prim::fork", "aten::_nested_tensor_from_mask",
        "aten::sparse_coo_tensor", "quantized::conv2d", "torchvision::nms",
    ):  # fmt: skip
        assert refused_operation(kind), kind


# --- format 2 ------------------------------------------------------------------------


def test_default_asset_is_data_and_equals_its_format1_release():
    assert_data_archive(ASSETS / "default.sepcli")
    new, old = load_archive(ASSETS / "default.sepcli"), load_archive(OLD_DEFAULT)
    assert old.metadata.format_version == 1
    assert new.metadata.replace(format_version=1) == old.metadata
    mix = torch.from_numpy(make_tone(2.0))[None]
    with torch.no_grad():
        torch.testing.assert_close(new.module(mix), old.module(mix), rtol=0, atol=0)


@pytest.mark.parametrize(
    "fixture", ["identity_archive", "tiny_wave_archive", "tiny_mask_archive", "old_default"]
)
def test_old_archives_still_separate_as_before(fixture, request, tmp_path):
    """Format-1 fixtures pass the audit and separate as their module does unchecked."""
    path = OLD_DEFAULT if fixture == "old_default" else request.getfixturevalue(fixture)
    mix = make_tone(1.2)
    got = Separator(path, device="cpu", segment_seconds=0.5).separate(mix, 44100)
    raw = torch.jit.load(str(path))  # the module as before, without sepcli's checks
    meta = read_metadata(path)
    from sepcli.models.archive import Archive

    before = Separator(Archive(raw, meta, path), device="cpu", segment_seconds=0.5).separate(
        mix, 44100
    )
    for stem, y in before.items():
        assert snr_db(y.numpy(), got[stem].numpy(), stem, floor=1e-30) >= 60, stem


def test_upgrade_rewrites_a_format1_archive_as_equal_data(tmp_path):
    out = tmp_path / "default-v2.sepcli"
    r = CliRunner().invoke(main, ["models", "upgrade", str(OLD_DEFAULT), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert_data_archive(out)
    assert out.read_bytes() == (ASSETS / "default.sepcli").read_bytes()
    again = CliRunner().invoke(main, ["models", "upgrade", str(out), "-o", str(tmp_path / "x")])
    assert again.exit_code == 4 and "already a data archive" in again.output


def test_upgrade_refuses_a_module_of_no_family(tiny_wave_archive, tmp_path):
    with pytest.raises(ArchiveError, match="which family"):
        upgrade_archive(tiny_wave_archive, tmp_path / "x.sepcli")
    with pytest.raises(ArchiveError, match="sepcli's families"):
        archive = load_archive(tiny_wave_archive)
        save_archive(archive.module, archive.metadata, tmp_path / "y.sepcli")
    assert not (tmp_path / "y.sepcli").exists()


def _tiny_umx() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = UMXConfig(n_fft=256, hop_length=64, hidden_size=8, num_layers=1, sources=("vocals",))
    return build_model("umx", cfg)


def _rewrite(src: Path, dst: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, data if info.filename == member else zin.read(info))
    return dst


def test_strict_weights_name_the_first_mismatch(tmp_path):
    path = export_archive(_tiny_umx(), tmp_path / "umx.sepcli", name="umx")
    meta = json.loads(read_metadata(path).to_json())
    meta["config"]["hidden_size"] = 12
    bad = _rewrite(path, tmp_path / "bad.sepcli", "sepcli.json", json.dumps(meta).encode())
    with pytest.raises(ArchiveError, match=r"tensor '.*' has shape \(.*\), the config gives"):
        load_archive(bad)
    from safetensors.torch import load, save

    with zipfile.ZipFile(path) as zf:
        tensors = load(zf.read("weights.safetensors"))
    first = sorted(tensors)[0]
    del tensors[first]
    short = _rewrite(path, tmp_path / "short.sepcli", "weights.safetensors", save(tensors))
    with pytest.raises(ArchiveError, match=f"weights lack tensor '{first}'"):
        load_archive(short)
    extra = tmp_path / "extra.sepcli"
    shutil.copyfile(path, extra)
    with zipfile.ZipFile(extra, "a") as zf:  # a member a data archive never has
        zf.writestr("code/__torch__/x.py", "def f(): pass\n")
    with pytest.raises(ArchiveError, match="unexpected member 'code/__torch__/x.py'"):
        load_archive(extra)


_PEAK_SCRIPT = """
import resource, sys
import torch
from sepcli.errors import ArchiveError
from sepcli.models.archive import load_archive

torch.set_num_threads(1)
# a safety net, should the check ever regress: no more than 4 GiB more address space
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
cap = vm * 1024 + (4 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_archive(sys.argv[1])
    print("loaded")
except ArchiveError as exc:
    print("refused:", exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, RSS in KiB")
def test_a_config_asking_for_a_huge_module_is_refused_before_it_is_built(tmp_path):
    from sepcli.models.nets.bs_roformer import BSRoformerConfig

    bands = (2,) * 8 + (4,) * 4 + (8,) * 2 + (17,)
    cfg = BSRoformerConfig(
        sources=("vocals",), dim=16, depth=1, freqs_per_bands=bands, dim_head=8, heads=2,
        stft_n_fft=128, stft_hop_length=32, stft_win_length=128, dim_t=17, num_overlap=2,
    )  # fmt: skip
    torch.manual_seed(0)
    path = export_archive(build_model("bs-roformer", cfg), tmp_path / "r.sepcli", name="r")
    meta = json.loads(read_metadata(path).to_json())
    meta["config"].update(dim=65536, depth=64)  # a feed-forward layer alone: 64 GiB
    huge = _rewrite(path, tmp_path / "huge.sepcli", "sepcli.json", json.dumps(meta).encode())
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(huge)], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    verdict, growth_kib = done.stdout.strip().splitlines()[-2:]
    assert verdict.startswith("refused:") and "huge.sepcli: tensor '" in verdict, verdict
    assert "(65536," in verdict or ", 65536" in verdict, verdict  # both shapes named
    assert int(growth_kib) < 512 * 1024, f"peak RSS grew by {int(growth_kib) // 1024} MiB"


def test_scripted_module_is_cached_by_hash_and_never_trusted_across_users(tmp_path):
    from sepcli.hashing import sha256_file
    from sepcli.models.archive import scriptcache

    path = export_archive(_tiny_umx(), tmp_path / "umx.sepcli", name="umx")
    cached = scriptcache.cached_path(sha256_file(path))
    assert cached.is_file() and (cached.stat().st_mode & 0o077) == 0
    assert scriptcache.load_cached(sha256_file(path), torch.device("cpu")) is not None
    cached.chmod(0o666)  # writable by others: ignored, rebuilt from the data
    assert scriptcache.load_cached(sha256_file(path), torch.device("cpu")) is None
    load_archive(path)


def test_byte_flip_fuzz_gives_one_line_errors(tmp_path):
    """200 copies of the default with a few bytes flipped each (seeded): every load
    either succeeds or raises a one-line :class:`SepcliError`; none crashes."""
    src = (ASSETS / "default.sepcli").read_bytes()
    rng = random.Random(30)
    outcomes = {"refused": 0, "loaded": 0}
    target = tmp_path / "fuzz.sepcli"
    for _ in range(200):
        data = bytearray(src)
        # mostly the zip structure and JSON at both ends, some weights
        for _ in range(rng.randint(1, 4)):
            where = rng.choice(
                [rng.randrange(0, 2048), rng.randrange(len(data) - 2048, len(data)),
                 rng.randrange(len(data))]
            )  # fmt: skip
            data[where] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        try:
            load_archive(target)
            outcomes["loaded"] += 1
        except SepcliError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 190, outcomes


def test_a_passed_audit_is_remembered_only_for_the_same_bytes(tmp_path, identity_archive):
    """The audit verdict and the archive hash are cached; a file replaced in place (same
    path) is hashed and audited again."""
    from sepcli.models.archive import scriptcache

    path = tmp_path / "model.sepcli"
    shutil.copyfile(identity_archive, path)
    load_archive(path)
    load_archive(path)  # from the remembered hash and verdict
    hostile, target = _hostile("save", tmp_path)
    path.write_bytes(hostile.read_bytes())
    with pytest.raises(ArchiveError, match="aten::save"):
        load_archive(path)
    assert target.read_bytes() == PAYLOAD
    assert len(list((scriptcache.cache_folder() / "audited").iterdir())) == 1
