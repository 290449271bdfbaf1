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
