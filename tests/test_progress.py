"""sepcli.progress: the one progress-event type."""

from __future__ import annotations

import dataclasses

import pytest

from sepcli.progress import Progress


def test_events_are_frozen_with_read_only_info():
    info = {"loss": 0.5}
    event = Progress("train", 3, 10, "steps", "epoch 1", info)
    info["loss"] = 9.0  # the event keeps its own copy
    assert event.info["loss"] == 0.5 and event.fraction == 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.done = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.info["loss"] = 1.0  # type: ignore[index]


def test_fraction_is_none_without_a_total():
    assert Progress("download", 100, None, "bytes").fraction is None
    assert Progress("download", 0, 0, "bytes").fraction is None
    assert Progress("download", 12, 10, "bytes").fraction == 1.0
