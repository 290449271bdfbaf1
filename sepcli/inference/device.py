"""Where inference runs: device choice, the MPS fallback, batch size, precision, CUDA OOM.

* :func:`resolve_device` turns ``auto|cpu|cuda|cuda:N|mps`` into a
  :class:`torch.device` (``auto``: CUDA, else Apple's MPS, else the CPU) or
  raises :class:`~sepcli.errors.DeviceError` in one line.
* :func:`complex_ops_work` probes once per device whether the STFT and its
  inverse run there (MPS lacks some complex ops on some PyTorch versions) and
  :func:`plan_devices` picks where the network and the output step (phase,
  inverse STFT) run: the step that cannot run on the device falls back to the
  CPU, the rest stays on the device (Demucs users' workaround for MPS).
* :func:`auto_batch_size` and :class:`OomSafeFn`: chunks per forward pass; a
  CUDA out-of-memory error halves the batch and goes on.
* :func:`autocast` runs the network forward in ``fp16`` or ``bf16``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from sepcli.errors import DeviceError
from sepcli.inference.config import PRECISIONS

__all__ = [
    "DEVICE_HELP",
    "PRECISIONS",
    "MAX_AUTO_BATCH",
    "resolve_device",
    "mps_available",
    "complex_ops_work",
    "plan_devices",
    "DevicePlan",
    "auto_batch_size",
    "OomSafeFn",
    "BatchLimit",
    "autocast",
    "is_oom",
    "host_to_device",
]

log = logging.getLogger(__name__)

#: One line for ``--device``'s help.
DEVICE_HELP = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps."
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: ``--batch-size auto`` on a GPU starts here and halves on out-of-memory errors.
MAX_AUTO_BATCH = 16

#: ``torch.OutOfMemoryError`` (torch >= 2.5) or its older CUDA-only spelling.
_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {
        cls
        for cls in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch.cuda, "OutOfMemoryError", None),
        )
        if cls is not None
    }
)


def mps_available() -> bool:
    """Apple's Metal backend is built into this torch and usable on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA, else MPS, else CPU; any other name is checked.

    Raises:
        DeviceError: an unknown name, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r} (use {DEVICE_HELP[:-1]})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} asked for, but CUDA is not available on this machine"
            )
        if (dev.index or 0) >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not mps_available():
            raise DeviceError(
                f"device {device!r} asked for, but Apple's MPS backend is not available "
                "(it needs an Apple-silicon Mac, macOS 12.3+ and a torch built with MPS)"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {device!r} (use {DEVICE_HELP[:-1]})")
    return dev


# -- the MPS fallback ---------------------------------------------------------

_PROBES: dict[tuple[str, str], bool] = {}
_PROBE_LOCK = threading.Lock()


def _probe_stft(device: torch.device) -> None:
    x = torch.linspace(-1.0, 1.0, 512, device=device).reshape(1, 512)
    window = torch.hann_window(64, device=device)
    spec = torch.stft(x, 64, 16, window=window, center=True, return_complex=True)
    _ = spec.abs().sum().item()


def _probe_istft(device: torch.device) -> None:
    x = torch.linspace(-1.0, 1.0, 512, device=device).reshape(1, 512)
    window = torch.hann_window(64, device=device)
    spec = torch.stft(x, 64, 16, window=window, center=True, return_complex=True)
    ratio = spec.abs() / spec.abs().clamp_min(1e-30)  # the output step's complex arithmetic
    y = torch.istft(ratio * spec, 64, 16, window=window, center=True, length=512)
    err = float((y.cpu() - x.cpu()).abs().max())
    if not err < 1e-3:
        raise RuntimeError(f"inverse STFT on {device} is off by {err}")


_PROBE_FNS: dict[str, Callable[[torch.device], None]] = {
    "stft": _probe_stft,
    "istft": _probe_istft,
}


def complex_ops_work(device: torch.device, what: str = "istft") -> bool:
    """Whether the complex STFT (``"stft"``) or the output step (``"istft"``: STFT,
    complex arithmetic and inverse STFT) run on ``device``.

    Tried once per device type and cached; the CPU and CUDA always say yes.
    """
    if device.type in ("cpu", "cuda"):
        return True
    key = (device.type, what)
    with _PROBE_LOCK:
        if key not in _PROBES:
            try:
                _PROBE_FNS[what](device)
                _PROBES[key] = True
            except (RuntimeError, NotImplementedError, TypeError) as e:
                log.info("%s does not run on %s (%s); that step runs on the CPU", what, device, e)
                _PROBES[key] = False
        return _PROBES[key]


@dataclass(frozen=True)
class DevicePlan:
    """Where a separator's pieces run.

    Attributes:
        model: device of the network (and of the STFT inside spectrogram models).
        output: device of the output step (phase reconstruction, inverse STFT).
    """

    model: torch.device
    output: torch.device

    @property
    def fallback(self) -> bool:
        return self.model.type == "cpu" or self.output.type == "cpu"


def plan_devices(
    device: torch.device,
    model_needs_stft: bool,
    has_output_step: bool,
    probe: Callable[[torch.device, str], bool] = complex_ops_work,
) -> DevicePlan:
    """Where the network and the output step run on ``device``.

    Args:
        device: the device asked for.
        model_needs_stft: the network computes an STFT inside (spectrogram
            families and ensembles with such members). A TorchScript module cannot
            be split, so when the STFT does not run on ``device`` the whole
            network runs on the CPU.
        has_output_step: spectrogram output turned into waveforms outside the
            network (phase step, inverse STFT); it runs on the CPU alone when the
            inverse STFT does not run on ``device``.
        probe: ``probe(device, "stft"|"istft") -> bool`` (:func:`complex_ops_work`).
    """
    cpu = torch.device("cpu")
    if device.type in ("cpu", "cuda"):
        return DevicePlan(device, device)
    model = device
    if model_needs_stft and not probe(device, "stft"):
        log.warning(
            "the STFT does not run on %s with this torch; this model runs on the CPU", device
        )
        model = cpu
    output = model
    if has_output_step and model.type != "cpu" and not probe(device, "istft"):
        log.warning("the inverse STFT does not run on %s; the phase step runs on the CPU", device)
        output = cpu
    return DevicePlan(model, output)


def host_to_device(batch: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU batch to ``device``; on CUDA through pinned (page-locked) memory
    with a non-blocking copy, so the copy is queued behind the GPU's work instead
    of stalling it. On the CPU the batch itself is returned."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


# -- batch size and out-of-memory ---------------------------------------------


def auto_batch_size(device: torch.device) -> int:
    """Chunks per forward pass for ``--batch-size auto``: 1 on the CPU (a batch
    does not make a CPU faster, and costs memory), :data:`MAX_AUTO_BATCH` on a GPU
    (halved by :class:`OomSafeFn` until it fits)."""
    return 1 if device.type == "cpu" else MAX_AUTO_BATCH


#: Words of out-of-memory errors that arrive as a plain ``RuntimeError``: the
#: TorchScript interpreter rethrows an error raised inside a scripted module (our
#: archives) as one, with the original message in its text; MPS and cuBLAS say so too.
_OOM_WORDS = ("CUDA out of memory", "MPS backend out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


def is_oom(error: BaseException) -> bool:
    """A device out-of-memory error (typed, or a ``RuntimeError`` that says so)."""
    if _OOM_ERRORS and isinstance(error, _OOM_ERRORS):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error) for w in _OOM_WORDS)


class BatchLimit:
    """The largest batch known to fit, shared by every call of one separator
    (so that the second of 500 files starts at the size that worked)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self.halvings = 0


class OomSafeFn:
    """Wrap ``fn(batch (B, ...)) -> (B, ...)``: on an out-of-memory error the
    device cache is emptied and the batch is run in halves (recursively, down to
    one chunk); the size that worked is remembered in ``limit``.

    An out-of-memory error at batch size 1 raises
    :class:`~sepcli.errors.DeviceError`. The forward is pure,
    so rerunning part of a batch gives the same result.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], limit: BatchLimit) -> None:
        self.fn = fn
        self.limit = limit

    def __call__(self, batch: Tensor) -> Tensor:
        size = self.limit.size
        if batch.shape[0] <= size:
            return self._try(batch)
        return torch.cat([self(part) for part in batch.split(size)], dim=0)

    def _try(self, batch: Tensor) -> Tensor:
        try:
            return self.fn(batch)
        except Exception as e:
            if not is_oom(e):
                raise
            if batch.shape[0] <= 1:  # typed, so that a batch of files goes on to the next
                raise DeviceError(
                    f"out of memory on {batch.device} at one chunk per batch; use a shorter "
                    "--segment, --precision bf16 or another device"
                ) from e
        # out of the except block, so that the error and its frames are freed
        _empty_cache(batch.device)
        half = max(1, batch.shape[0] // 2)
        if half < self.limit.size:
            if self.limit.halvings == 0:
                log.warning(
                    "out of memory at %d chunks per batch on %s; going on with %d",
                    batch.shape[0],
                    batch.device,
                    half,
                )
            else:
                log.info("out of memory at %d chunks per batch; trying %d", batch.shape[0], half)
            self.limit.size = half
            self.limit.halvings += 1
        return torch.cat([self(part) for part in batch.split(half)], dim=0)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


# -- precision --------------------------------------------------------------


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed network forward in ``precision`` (``fp32``: unchanged).

    Only the network goes in here: the STFT, inverse STFT and phase steps of the
    separator stay in float32. ``fp32`` on CUDA is float32 proper: cuDNN's TF32
    convolutions (on by default in torch, 10 bits of mantissa) are off inside,
    so that stems match the CPU's to 60 dB; ``bf16`` is the fast mode.
    """
    if precision == "fp32":
        if device.type != "cuda":
            yield
            return
        cudnn = torch.backends.cudnn
        saved = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = saved
        return
    if precision not in _DTYPES:
        raise DeviceError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield
