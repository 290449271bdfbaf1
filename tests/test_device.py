"""Devices without the hardware: choice logic, the MPS fallback, OOM halving, precision.

MPS and CUDA are monkeypatched here; tests/test_cuda.py runs on a real GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tone, write_wav
from snr import snr_db

import sepcli.inference.device as device_mod
import sepcli.inference.separator as separator_module
from sepcli.cli import main
from sepcli.errors import ConfigError, DeviceError, UsageError, exit_code_for
from sepcli.inference.config import SeparatorConfig
from sepcli.inference.device import (
    BatchLimit,
    DevicePlan,
    OomSafeFn,
    auto_batch_size,
    complex_ops_work,
    plan_devices,
    resolve_device,
)
from sepcli.inference.separator import Separator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
MPS = torch.device("mps")
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@pytest.fixture(autouse=True)
def _keep_log_level():
    """The CLI's ``-q`` sets the ``sepcli`` logger's level to ERROR; later
    tests read warnings."""
    loggers = [logging.getLogger(), logging.getLogger("sepcli")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_mps(monkeypatch, no_cuda):
    """This machine "has" MPS; the probe caches start empty."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(device_mod, "_PROBES", {})


# -- choice -----------------------------------------------------------------


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == MPS
    assert resolve_device("MPS") == MPS
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(" auto ") == CPU


def test_missing_devices_are_one_line_usage_errors(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, words in [
        ("cuda", "CUDA is not available"),
        ("cuda:1", "CUDA is not available"),
        ("mps", "MPS backend is not available"),
        ("tpu", "unknown device"),
        ("meta", "unsupported device"),
    ]:
        with pytest.raises(DeviceError, match=words) as info:
            resolve_device(name)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, UsageError) and exit_code_for(info.value) == 2
    assert resolve_device(torch.device("cpu")) == CPU
    # the old import path still works
    assert separator_module.resolve_device is resolve_device


def test_cuda_index_past_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="1 CUDA device"):
        resolve_device("cuda:1")


def test_cli_device_mps_without_mps(tmp_path, identity_archive, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    src = write_wav(tmp_path / "a.wav", make_tone(0.3))
    result = CliRunner().invoke(
        main, ["separate", str(src), "-m", str(identity_archive), "--device", "mps", "-q"]
    )
    assert result.exit_code == 2, result.output
    assert "MPS backend is not available" in result.output
    result = CliRunner().invoke(main, ["separate", str(src), "--batch-size", "0"])
    assert result.exit_code == 2 and "at least 1" in result.output
    result = CliRunner().invoke(main, ["separate", str(src), "--precision", "fp8"])
    assert result.exit_code == 2 and "fp8" in result.output


def test_cli_precision_and_batch_size_auto(tmp_path, identity_archive):
    src = write_wav(tmp_path / "a.wav", make_tone(0.6))
    args = ["separate", str(src), "-m", str(identity_archive), "-o", str(tmp_path / "out"), "-q",
            "--device", "cpu", "--precision", "bf16", "--batch-size", "auto"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").rglob("*.wav"))) == 2  # vocals and the rest of the mix


# -- the MPS fallback -----------------------------------------------------------


def test_probe_is_tried_once_and_cached(fake_mps, monkeypatch):
    calls = []

    def missing(device):
        calls.append(device)
        raise NotImplementedError("The operator 'aten::_fft_c2r' is not implemented for MPS")

    monkeypatch.setitem(device_mod._PROBE_FNS, "istft", missing)
    assert complex_ops_work(MPS, "istft") is False
    assert complex_ops_work(MPS, "istft") is False
    assert len(calls) == 1
    assert complex_ops_work(CPU, "istft") is True  # never probed
    assert len(calls) == 1


def test_probe_runs_the_real_ops_and_sees_a_missing_one(fake_mps, monkeypatch):
    # The probes themselves, on the CPU (standing in for a device), with istft removed.
    for what in ("stft", "istft"):
        real = device_mod._PROBE_FNS[what]
        monkeypatch.setitem(device_mod._PROBE_FNS, what, lambda d, real=real: real(CPU))

    def no_istft(*args, **kwargs):
        raise NotImplementedError("aten::_fft_c2r is not implemented for MPS")

    monkeypatch.setattr(torch, "istft", no_istft)
    assert complex_ops_work(MPS, "stft") is True
    assert complex_ops_work(MPS, "istft") is False


def test_plan_devices_moves_only_the_step_that_cannot_run():
    def probe(ok):
        return lambda device, what: what in ok

    # waveform model: nothing needs complex ops
    assert plan_devices(MPS, False, False, probe(())) == DevicePlan(MPS, MPS)
    # spectrogram model whose STFT works but inverse does not: only the phase step on the CPU
    assert plan_devices(MPS, True, True, probe(("stft",))) == DevicePlan(MPS, CPU)
    # the STFT is inside the scripted network: the whole model goes to the CPU
    assert plan_devices(MPS, True, True, probe(())) == DevicePlan(CPU, CPU)
    assert plan_devices(MPS, True, True, probe(("stft", "istft"))) == DevicePlan(MPS, MPS)
    # ensembles: members do their own STFT inside, no output step outside
    assert plan_devices(MPS, True, False, probe(())) == DevicePlan(CPU, CPU)
    assert plan_devices(CPU, True, True, probe(())) == DevicePlan(CPU, CPU)
    assert plan_devices(MPS, True, True, probe(("stft",))).fallback


def test_separator_on_mps_without_complex_ops_runs_on_the_cpu(
    fake_mps, monkeypatch, tiny_mask_archive
):
    monkeypatch.setattr(device_mod, "complex_ops_work", lambda device, what="istft": False)
    monkeypatch.setattr(separator_module, "plan_devices", _plan_with_failing_probe)
    sep = Separator(tiny_mask_archive, device="mps", segment_seconds=0.3)
    assert sep.device == MPS and sep.devices == DevicePlan(CPU, CPU)
    mix = make_tone(0.8)
    ref = Separator(tiny_mask_archive, device="cpu", segment_seconds=0.3).separate(mix, 44100)
    got = sep.separate(mix, 44100)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name])


def _plan_with_failing_probe(device, needs_stft, has_step):
    return plan_devices(device, needs_stft, has_step, probe=lambda d, what: False)


# -- batch size and out-of-memory ---------------------------------------------------


def test_batch_size_auto_and_validation():
    assert SeparatorConfig().batch_size == 0  # auto
    assert auto_batch_size(CPU) == 1 and auto_batch_size(torch.device("cuda")) == 16
    with pytest.raises(ConfigError, match="batch size"):
        SeparatorConfig(batch_size=-1)
    with pytest.raises(ConfigError, match="precision"):
        SeparatorConfig(precision="fp8")


def _doubling(calls):
    def fn(batch):
        calls.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch * 2

    return fn


def test_oom_halves_the_batch_and_remembers(caplog):
    calls: list[int] = []
    limit = BatchLimit(16)
    fn = OomSafeFn(_doubling(calls), limit)
    x = torch.arange(16.0).reshape(16, 1)
    with caplog.at_level(logging.INFO, logger="sepcli.inference.device"):
        torch.testing.assert_close(fn(x), x * 2)
    assert limit.size == 2 and limit.halvings == 3
    assert calls == [16, 8, 4, 2, 2, 2, 2, 2, 2, 2, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "out of memory" in warnings[0].getMessage()
    # the next call (next file of a batch) starts at the size that worked
    calls.clear()
    torch.testing.assert_close(fn(x[:5]), x[:5] * 2)
    assert calls == [2, 2, 1]


def test_oom_rethrown_by_the_torchscript_interpreter_counts():
    from sepcli.inference.device import is_oom

    wrapped = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\nTraceback of "
        "TorchScript (most recent call last):\nRuntimeError: CUDA out of memory. Tried to "
        "allocate 20.00 GiB"
    )
    assert is_oom(wrapped) and is_oom(OOM("x"))
    assert not is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(ValueError("CUDA out of memory"))
    calls: list[int] = []

    def fn(batch):
        calls.append(batch.shape[0])
        if batch.shape[0] > 1:
            raise wrapped
        return batch

    assert OomSafeFn(fn, BatchLimit(4))(torch.zeros(4, 1)).shape == (4, 1)
    assert calls == [4, 2, 1, 1, 1, 1]


def test_oom_at_batch_one_and_other_errors_are_raised():
    def always(batch):
        raise OOM("CUDA out of memory")

    with pytest.raises(DeviceError, match="out of memory on cpu at one chunk") as info:
        OomSafeFn(always, BatchLimit(4))(torch.zeros(4, 1))
    assert isinstance(info.value.__cause__, OOM)

    def broken(batch):
        raise RuntimeError("shape mismatch")

    limit = BatchLimit(4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        OomSafeFn(broken, limit)(torch.zeros(4, 1))
    assert limit.size == 4


def test_separator_goes_on_after_oom(tiny_mask_archive, monkeypatch):
    mix = make_tone(2.0)
    ref = Separator(tiny_mask_archive, device="cpu", segment_seconds=0.2, batch_size=1)
    expected = ref.separate(mix, 44100)
    forward = separator_module.to_waveform
    sizes = []

    def oom_above_two(output, out, batch, *args, **kwargs):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise OOM("CUDA out of memory")
        return forward(output, out, batch, *args, **kwargs)

    monkeypatch.setattr(separator_module, "to_waveform", oom_above_two)
    sep = Separator(tiny_mask_archive, device="cpu", segment_seconds=0.2, batch_size=8)
    got = sep.separate(mix, 44100)
    assert max(sizes) == 8 and sep.batch_limits[0].size == 2
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


# -- precision ---------------------------------------------------------------------


def test_bf16_autocast_changes_only_the_network(tmp_path):
    from sepcli.models import UMXConfig, build_model, export_archive

    torch.manual_seed(0)
    cfg = UMXConfig(n_fft=256, hop_length=64, hidden_size=16, num_layers=1)
    path = export_archive(build_model("umx", cfg).eval(), tmp_path / "u.sepcli", name="u")
    mix = make_tone(1.0)
    fp32 = Separator(path, device="cpu").separate(mix, 44100)
    bf16 = Separator(path, device="cpu", precision="bf16").separate(mix, 44100)
    for name in fp32:
        assert bf16[name].dtype == torch.float32
        assert bf16[name].shape == fp32[name].shape
        snr = snr_db(fp32[name], bf16[name], name, floor=1e-20)
        assert 15 < snr < 200, snr  # bf16 has 8 bits of mantissa: close, not equal
    assert Separator(path, device="cpu", precision="bf16").identity()["precision"] == "bf16"
    assert "batch_size" not in Separator(path, device="cpu").identity()
    assert np.isfinite(np.concatenate([v.numpy() for v in bf16.values()])).all()


def test_fp32_on_cuda_turns_tf32_off_inside_only():
    from sepcli.inference.device import autocast

    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32
    try:
        cudnn.allow_tf32 = True
        with autocast(torch.device("cuda"), "fp32"):
            assert cudnn.allow_tf32 is False
        assert cudnn.allow_tf32 is True
        with autocast(CPU, "fp32"):
            assert cudnn.allow_tf32 is True
    finally:
        cudnn.allow_tf32 = saved
