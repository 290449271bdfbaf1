# ruff: noqa: F811 - pytest fixtures imported from test_hub_server
"""Foreign-format entries: Open-Unmix state dicts downloaded, verified, converted, cached."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from conftest import assert_data_archive
from test_hub_server import cached_files, file_server, hub_env, write_registry  # noqa: F401

from sepcli.errors import IntegrityError
from sepcli.hub import load_model, resolve_model, verify_models
from sepcli.models.configs import UMXConfig
from sepcli.models.nets.umx import UMX

pytestmark = pytest.mark.network

PRESET = {"sample_rate": 8000, "audio_channels": 2, "n_fft": 256, "hop_length": 64,
          "hidden_size": 8, "nb_layers": 1, "bandwidth": 2000}  # fmt: skip


@pytest.fixture(scope="module")
def state_dicts() -> dict[str, bytes]:
    """Tiny Open-Unmix-shaped weights per target, as ``torch.save`` bytes."""
    torch.manual_seed(0)
    config = UMXConfig(sources=("vocals", "bass"), sample_rate=8000, n_fft=256, hop_length=64,
                       hidden_size=8, num_layers=1, bandwidth=2000.0)  # fmt: skip
    model = UMX(config)
    out = {}
    for name, net in zip(config.sources, model.targets, strict=True):
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        out[name] = buffer.getvalue()
    return out


def _entry(file_server, blobs: dict[str, bytes], served: dict[str, bytes] | None = None) -> dict:
    files = []
    for target, blob in blobs.items():
        url = file_server.add(f"/{target}-x.pth", (served or blobs)[target])
        files.append(
            {
                "target": target,
                "urls": [url],
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size": len(blob),
            }
        )
    return {"name": "tiny-umx", "format": "openunmix", "preset": PRESET, "files": files,
            "licence": "MIT (test)", "description": "tiny open-unmix", "sources": list(blobs),
            "scores": {"musdb18-test": {"vocals": {"SDR": 1.0}}}}  # fmt: skip


def test_openunmix_entry_is_downloaded_verified_and_converted(
    file_server, hub_env, tmp_path, state_dicts
):
    reg = str(write_registry(tmp_path / "r.json", [_entry(file_server, state_dicts)]))
    archive = load_model("tiny-umx", registry=reg)
    meta = archive.metadata
    assert meta.name == "tiny-umx" and meta.sources == ("vocals", "bass")
    assert meta.family == "umx" and meta.licence == "MIT (test)" and meta.sample_rate == 8000
    assert meta.scores == {"musdb18-test": {"vocals": {"SDR": 1.0}}}
    path = archive.path
    assert_data_archive(path)
    # the converted archive and its recorded hash stay; the downloaded .pth files go
    assert sorted(p.split("/")[-1] for p in cached_files(hub_env)) == [
        "tiny-umx.sepcli",
        "tiny-umx.sepcli.verified.json",
    ]
    with torch.inference_mode():
        out = archive.module(torch.zeros(1, 2, 4000))
    assert out.shape[:3] == (1, 2, 2)
    # cached: offline works and nothing is fetched again
    assert resolve_model("tiny-umx", registry=reg, offline=True) == path
    assert file_server.gets["/vocals-x.pth"] == 1


def test_corrupt_converted_archive_is_caught_and_rebuilt(
    file_server, hub_env, tmp_path, state_dicts
):
    reg = str(write_registry(tmp_path / "r.json", [_entry(file_server, state_dicts)]))
    path = resolve_model("tiny-umx", registry=reg)
    assert [r.status for r in verify_models(["tiny-umx"], registry=reg)] == ["ok"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = next(r for r in verify_models(registry=reg) if r.name == "tiny-umx")
    assert result.status == "repaired" and "SHA-256" in result.detail
    assert load_model("tiny-umx", registry=reg, offline=True).metadata.name == "tiny-umx"
    assert file_server.gets["/bass-x.pth"] == 2


def test_foreign_file_with_wrong_hash_is_never_converted(
    file_server, hub_env, tmp_path, state_dicts
):
    bass = bytearray(state_dicts["bass"])
    bass[-10] ^= 0xFF
    tampered = dict(state_dicts, bass=bytes(bass))  # right size, wrong bytes
    reg = str(
        write_registry(tmp_path / "r.json", [_entry(file_server, state_dicts, served=tampered)])
    )
    with pytest.raises(IntegrityError, match="'tiny-umx'.*SHA-256 mismatch"):
        resolve_model("tiny-umx", registry=reg)
    left = cached_files(hub_env)
    assert not any(p.endswith(".sepcli") for p in left)
    assert all("/src/" in p for p in left)  # only the verified vocals file, for the next try


@pytest.mark.parametrize("name, hidden", [("umxhq", 512), ("umxl", 1024)])
def test_builtin_presets_fit_the_converter_and_claimed_parameter_counts(name, hidden):
    """Published-size weights of one target convert with the registry's preset, and the
    registry's parameter count is 4 targets of that size."""
    from sepcli.hub import load_registry
    from sepcli.models.importers.openunmix import convert

    entry = load_registry(registry=[]).get(name)
    net = UMX(UMXConfig(sources=("vocals",), hidden_size=hidden, max_bin=1487)).targets[0]
    _, meta = convert({"vocals": net.state_dict()}, dict(entry.preset), name=name)
    assert meta.stft is not None and (meta.stft.n_fft, meta.stft.hop_length) == (4096, 1024)
    assert meta.sample_rate == entry.sample_rate == 44100
    assert entry.parameters == 4 * meta.num_parameters
