"""sepcli.errors: exit codes of the typed errors, and OS error wording."""

from __future__ import annotations

import errno
import os

import pytest

from sepcli.errors import (
    AudioDecodeError,
    ConfigError,
    SepcliError,
    UsageError,
    exit_code_for,
    os_error_reason,
)


def test_config_errors_are_value_errors_with_the_usage_exit_code():
    exc = ConfigError("Griffin-Lim momentum must be in [0, 1), got 1.0")
    assert isinstance(exc, SepcliError) and isinstance(exc, ValueError)
    assert not isinstance(exc, UsageError)
    assert exit_code_for(exc) == exit_code_for(UsageError("x")) == 2


def test_exit_codes_follow_the_most_specific_class():
    assert exit_code_for(AudioDecodeError("x")) == 3
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(RuntimeError("x")) == 1


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, "nput/output error"),
    ],
)
def test_os_error_reasons_are_short(code, words):
    assert words in os_error_reason(OSError(code, os.strerror(code)))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_refused_pickle_is_named_and_torchs_weights_only_hint_never_relayed(tmp_path):
    import torch

    from sepcli.errors import ArchiveError, TrainingError, load_failure_reason
    from sepcli.models.importers.openunmix import _load_state
    from sepcli.training.checkpoint import load_checkpoint

    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(), "epoch": 1}, evil)
    with pytest.raises(Exception) as raw:
        torch.load(evil, weights_only=True)
    assert "weights_only" in str(raw.value)  # what torch says, and we must not
    refused, reason = load_failure_reason(raw.value)
    assert refused and "system" in reason and "never runs code" in reason
    assert "weights_only" not in reason and "\n" not in reason
    for load, error in ((_load_state, ArchiveError), (load_checkpoint, TrainingError)):
        with pytest.raises(error) as info:
            load(evil)
        message = str(info.value)
        assert message.startswith(f"{evil}: refused") and "weights_only" not in message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(Exception) as raw:
        torch.load(junk, weights_only=True)
    refused, reason = load_failure_reason(raw.value)
    assert not refused and "weights_only" not in reason and "Unsupported operand" in reason
    assert load_failure_reason(RuntimeError("PytorchStreamReader failed\nmore")) == (
        False,
        "PytorchStreamReader failed",
    )
