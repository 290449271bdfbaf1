"""Shared fixtures: tiny generated audio and tiny random-weight archives.

Nothing here reads ../shared/data except through the ``shared_data`` fixture,
which skips (and says why) when the data is absent.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import snr
import soundfile as sf
import torch

from sepcli.dsp.stft import stft
from sepcli.models.archive import (
    METADATA_FILE,
    TORCHSCRIPT_VERSION,
    Archive,
    ArchiveMetadata,
    StftParams,
    check_module,
    probe_archive,
)
from sepcli.progress import Progress, ProgressFn

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionfinish(session, exitstatus) -> None:
    """With ``SEPCLI_PARITY_LOG`` set, write every parity figure of the run (tests/snr.py)."""
    snr.write_log()


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test, restored after it: small tensors on the
    shared 2-core machine gain nothing from a second OpenMP worker that mostly spins.
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def shared_data() -> Path:
    """Root of the real stems (../shared/data); skips the test when absent."""
    if not (SHARED_DATA / "musdb18-preview" / "train").is_dir():
        pytest.skip(f"real stems not found at {SHARED_DATA} (CI provides ../shared)")
    return SHARED_DATA


def musdb_stems(path: Path, seconds: float) -> torch.Tensor:
    """Streams 1-4 (drums, bass, other, vocals) of a MUSDB ``.stem.mp4``, first ``seconds``,
    decoded by sepcli's own reader: ``(source, channel, time)`` float32."""
    from sepcli.audio import load_audio

    n = int(round(seconds * 44100))
    stems = [load_audio(path, stream=k)[0][:, :n] for k in (1, 2, 3, 4)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(stems)))


@pytest.fixture
def offline_user_dirs(tmp_path, monkeypatch) -> None:
    """No user presets, registry or cache of the machine's own, and no network."""
    monkeypatch.setenv("SEPCLI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SEPCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEPCLI_REGISTRY", raising=False)
    monkeypatch.setenv("SEPCLI_OFFLINE", "1")


def real_song(shared_data: Path, seconds: int) -> np.ndarray:
    """MUSDB18 preview mixtures played one after another, decoded by sepcli:
    ``(2, seconds * 44100)`` float32 (the real-song parity and chain tests)."""
    from sepcli.audio import load_audio

    parts, total = [], 0
    for path in sorted((shared_data / "musdb18-preview" / "train").glob("*.stem.mp4")):
        audio, rate = load_audio(path, stream=0)
        assert rate == 44100
        parts.append(audio)
        total += audio.shape[-1]
        if total >= seconds * 44100:
            break
    mix = np.concatenate(parts, axis=-1)[:, : seconds * 44100]
    assert mix.shape == (2, seconds * 44100)
    return np.ascontiguousarray(mix, dtype=np.float32)


def with_noise_floor(mix: np.ndarray, db: float = -60.0, seed: int = 0) -> np.ndarray:
    """``mix`` plus seeded white noise ``db`` below its RMS, float32.

    The MUSDB previews are AAC-coded and all but empty above about 16 kHz, so a
    model that scales each band to unit RMS (BS-RoFormer) turns the FFT's rounding
    noise there into full-size tokens: one ulp on 1 % of the samples then moves a
    parity figure by about 80 dB. A noise floor makes those bands hold signal
    (docs/benchmarks.md, "Parity figures")."""
    rms = float(np.sqrt(np.mean(np.square(mix, dtype=np.float64))))
    noise = np.random.default_rng(seed).standard_normal(mix.shape) * (rms * 10 ** (db / 20))
    return (mix + noise).astype(np.float32)


def collect_losses(into: list[float]) -> ProgressFn:
    """A training ``progress`` callback that appends the loss of every step to ``into``."""

    def collect(event: Progress) -> None:
        if event.task == "train" and event.done:
            into.append(event.info["loss"])

    return collect


def make_tone(
    seconds: float, sample_rate: int = 44100, channels: int = 2, seed: int = 0
) -> np.ndarray:
    """A few sines plus a little noise, shape ``(channel, time)`` float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    out = np.zeros((channels, n), dtype=np.float32)
    for c in range(channels):
        for f in (220.0 * (c + 1), 330.0, 1250.0):
            out[c] += 0.12 * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
        out[c] += 0.02 * rng.standard_normal(n)
    return out.astype(np.float32)


def write_wav(
    path: Path, audio: np.ndarray, sample_rate: int = 44100, subtype: str = "FLOAT"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, sample_rate, subtype=subtype)
    return path


class IdentityModel(torch.nn.Module):
    """Outputs its input as every source: ``(B, C, T) -> (B, S, C, T)``."""

    def __init__(self, sample_rate: int = 44100, audio_channels: int = 2, num_sources: int = 1):
        super().__init__()
        self.sample_rate = sample_rate
        self.audio_channels = audio_channels
        self.num_sources = num_sources
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix.unsqueeze(1).expand(-1, self.num_sources, -1, -1) + self.dummy * 0


class TinyWaveModel(torch.nn.Module):
    """Random 1-D conv net producing sources from the mixture (waveform out)."""

    def __init__(self, sample_rate: int = 44100, audio_channels: int = 2, num_sources: int = 2):
        super().__init__()
        self.sample_rate = sample_rate
        self.audio_channels = audio_channels
        self.num_sources = num_sources
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(audio_channels, audio_channels * num_sources, 9, padding=4)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        b, c, t = mix.shape
        return torch.tanh(self.conv(mix)).view(b, self.num_sources, c, t) * 0.5


class TinyMaskModel(torch.nn.Module):
    """Random per-bin sigmoid masks on the mixture magnitude (magnitude out)."""

    def __init__(
        self,
        sample_rate: int = 44100,
        audio_channels: int = 2,
        num_sources: int = 2,
        n_fft: int = 512,
        hop_length: int = 128,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.audio_channels = audio_channels
        self.num_sources = num_sources
        self.n_fft = n_fft
        self.hop_length = hop_length
        torch.manual_seed(0)
        self.logits = torch.nn.Parameter(torch.randn(num_sources, n_fft // 2 + 1, 1))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        mag = stft(mix, self.n_fft, self.hop_length).abs()  # (B, C, F, N)
        masks = torch.softmax(self.logits, dim=0)  # (S, F, 1)
        return mag.unsqueeze(1) * masks.unsqueeze(1)  # (B, S, C, F, N)


def save_torchscript_archive(module: torch.nn.Module, metadata: ArchiveMetadata, path) -> Path:
    """Write a format-1 (TorchScript) archive, as sepcli did before format 2: the
    scripted module with ``sepcli.json`` as an extra file. Test-only: sepcli
    itself writes data archives; these fixtures are the older archives it must
    still read (after the audit of their graphs)."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    scripted = scripted.eval()
    metadata = metadata.replace(format_version=TORCHSCRIPT_VERSION)
    check_module(scripted, metadata, metadata.name)
    probe_archive(Archive(scripted, metadata))
    path = Path(path)
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: metadata.to_json()})
    return path


def assert_data_archive(path, members: int | None = None) -> None:
    """``path`` is a format-2 archive: JSON and safetensors only, no code, no pickle
    (and, for an ensemble, ``members`` members in its layout)."""
    import json
    import zipfile

    from sepcli.models.archive import read_metadata

    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        layout = json.loads(zf.read("members.json")) if "members.json" in names else None
    expected = {"sepcli.json", "weights.safetensors"} | ({"members.json"} if members else set())
    assert names == expected, sorted(names)
    assert read_metadata(path).format_version == 2
    if members:
        assert len(layout) == members


def _meta(
    name: str, sources, sample_rate, channels, output, family, stft=None, **kw
) -> ArchiveMetadata:
    return ArchiveMetadata(
        name=name,
        sources=tuple(sources),
        sample_rate=sample_rate,
        audio_channels=channels,
        output=output,
        family=family,
        stft=stft,
        segment_seconds=kw.pop("segment_seconds", 1.0),
        licence="MIT (random test weights)",
        training_data="none",
        **kw,
    )


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("archives")


@pytest.fixture(scope="session")
def identity_archive(archive_dir) -> Path:
    """One-source identity archive (source ``vocals``), 44.1 kHz stereo."""
    return save_torchscript_archive(
        IdentityModel(),
        _meta("identity", ["vocals"], 44100, 2, "waveform", "test"),
        archive_dir / "identity.sepcli",
    )


@pytest.fixture(scope="session")
def tiny_wave_archive(archive_dir) -> Path:
    """Random waveform model with sources vocals, accompaniment."""
    return save_torchscript_archive(
        TinyWaveModel(),
        _meta("tiny-wave", ["vocals", "accompaniment"], 44100, 2, "waveform", "test"),
        archive_dir / "tiny-wave.sepcli",
    )


@pytest.fixture(scope="session")
def tiny_mask_archive(archive_dir) -> Path:
    """Random magnitude-mask model with sources drums, bass, other, vocals."""
    model = TinyMaskModel(num_sources=4)
    return save_torchscript_archive(
        model,
        _meta(
            "tiny-mask",
            ["drums", "bass", "other", "vocals"],
            44100,
            2,
            "magnitude",
            "test",
            stft=StftParams(512, 128),
        ),
        archive_dir / "tiny-mask.sepcli",
    )


@pytest.fixture
def tone_wav(tmp_path) -> Path:
    """A 1.5 s stereo 44.1 kHz float WAV."""
    return write_wav(tmp_path / "in" / "tone.wav", make_tone(1.5))


@pytest.fixture
def terminal_screen(monkeypatch) -> io.StringIO:
    """The CLI's stderr console drawing live bars into a buffer, as on a terminal."""
    from sepcli.cli import common

    monkeypatch.setenv("TERM", "xterm")
    screen = io.StringIO()
    # _file, not the file property: undoing the property would pin the console to the
    # stream of this moment, and later CliRunner runs would lose its output
    monkeypatch.setattr(common.err_console, "_file", screen)
    monkeypatch.setattr(common.err_console, "_force_terminal", True)
    monkeypatch.setattr(common.err_console, "is_interactive", True)
    return screen
