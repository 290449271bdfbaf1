"""Error types raised by the library.

The library never prints or exits; it raises one of these. The CLI maps each
class to a one-line message and an exit code (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import errno
import re

__all__ = [
    "SepcliError",
    "UsageError",
    "DeviceError",
    "ConfigError",
    "AudioError",
    "AudioDecodeError",
    "AudioEncodeError",
    "FfmpegNotFoundError",
    "ArchiveError",
    "ModelNotFoundError",
    "RegistryError",
    "DownloadError",
    "IntegrityError",
    "OfflineError",
    "DatasetError",
    "TrainingError",
    "EXIT_CODES",
    "exit_code_for",
    "os_error_reason",
    "load_failure_reason",
]


class SepcliError(Exception):
    """Base class of every error sepcli raises on purpose."""


class UsageError(SepcliError):
    """An option or argument value that cannot work (unknown stem, bad shard...)."""


class DeviceError(UsageError):
    """A device that this machine does not have (``--device cuda`` without CUDA,
    ``mps`` off Apple silicon), an unknown device name, or a model that does not
    fit the device's memory even one chunk at a time."""


class ConfigError(SepcliError, ValueError):
    """A model config or DSP parameter that cannot work (unknown family, negative
    iterations, momentum out of range...).

    Raised by library code below the CLI (configs, DSP, model constructors) in
    place of :class:`UsageError`, which names a bad option or argument of a
    command. Also a ``ValueError``, so plain Python callers can catch it as one.
    The CLI maps it to the same exit code as :class:`UsageError` (2).
    """


class AudioError(SepcliError):
    """Reading or writing audio failed."""


class AudioDecodeError(AudioError):
    """A file is missing, empty, corrupt or not audio."""


class AudioEncodeError(AudioError):
    """An output could not be written (unwritable folder, full disk, bad format)."""


class FfmpegNotFoundError(AudioDecodeError):
    """A format that needs ffmpeg was asked for and ffmpeg is not installed."""


class ArchiveError(SepcliError):
    """A file is not a valid sepcli model archive, or its metadata is inconsistent."""


class ModelNotFoundError(SepcliError):
    """A model name is neither in the registry nor an existing file."""


class RegistryError(SepcliError):
    """A registry manifest is malformed or unsafe."""


class DownloadError(SepcliError):
    """A download failed (HTTP error, timeout, refused connection...)."""


class IntegrityError(DownloadError):
    """Downloaded or cached bytes do not match the registry's size or SHA-256."""


class OfflineError(SepcliError):
    """Offline mode is on and a model is not in the cache."""


class DatasetError(SepcliError):
    """A dataset folder is missing, empty or laid out wrongly."""


class TrainingError(SepcliError):
    """Training cannot start or continue."""


#: Exit codes used by the CLI. 1 = a generic failure, 2 = bad usage (click's own
#: convention), 130 = interrupted (Ctrl-C).
EXIT_CODES: dict[type[SepcliError], int] = {
    UsageError: 2,
    ConfigError: 2,
    AudioError: 3,
    ArchiveError: 4,
    ModelNotFoundError: 4,
    RegistryError: 5,
    DownloadError: 5,
    OfflineError: 5,
    DatasetError: 6,
    TrainingError: 7,
}


def exit_code_for(error: BaseException) -> int:
    """Return the CLI exit code for ``error`` (most specific class wins)."""
    if isinstance(error, KeyboardInterrupt):
        return 130
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


_OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "a parent is not a folder",
}


def os_error_reason(e: OSError) -> str:
    """A few words for an ``OSError`` in a one-line message ("disk full", "permission denied")."""
    return _OS_REASONS.get(e.errno or 0) or e.strerror or str(e) or type(e).__name__


def load_failure_reason(exc: BaseException) -> tuple[bool, str]:
    """``(refused, reason)`` for a ``torch.load(weights_only=True)`` failure, one line.

    ``refused`` is True when the file is a pickle that asks for a Python object
    (the reason then names it); otherwise ``reason`` says what broke (a damaged
    or foreign file). torch's own message for either starts by suggesting
    ``weights_only=False``, which would run whatever the file asks for: that
    advice is never relayed.
    """
    text = str(exc).strip()
    if "weights only load failed" not in text.lower():
        return False, text.splitlines()[0] if text else type(exc).__name__
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return True, (
            f"refused: the file asks to load the Python object {match.group(1)}, not only "
            "tensors; sepcli reads checkpoints as data and never runs code from them"
        )
    advice = ("weights only load failed", "check the documentation", "please file", "(1)", "(2)")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.lower().startswith(advice)]
    detail = lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else ""
    return False, f"the tensor-only unpickler stopped: {detail or 'unreadable pickle'}"
