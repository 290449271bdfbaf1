"""Progress bars of the CLI, drawn from the library's :class:`~sepcli.progress.Progress` events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
from rich.progress import Progress as Bars

from sepcli.cli.common import bars_shown, err_console
from sepcli.progress import Progress, ProgressFn

__all__ = ["download_bar", "load_model_for_cli"]


@contextlib.contextmanager
def download_bar(quiet: bool = False) -> Iterator[ProgressFn]:
    """Yield a :data:`~sepcli.progress.ProgressFn` that draws ``download`` events on stderr.

    Nothing is drawn until the first byte arrives: resolving a local file, the
    packaged default or a cached model shows no bar, and neither does a download
    that fails before the server answers. One row per model (``event.item``);
    the bar disappears when the block ends.
    """
    with Bars(
        TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err_console, disable=not bars_shown(quiet), transient=True,
    ) as bars:  # fmt: skip
        tasks: dict[str, int] = {}

        def update(event: Progress) -> None:
            if event.task != "download":
                return
            if event.item not in tasks:
                tasks[event.item] = bars.add_task(event.item, total=event.total)
            bars.update(tasks[event.item], completed=event.done, total=event.total)

        yield update


def load_model_for_cli(
    model: str,
    device: Any,
    cache_dir: str | None = None,
    offline: bool = False,
    quiet: bool = False,
):
    """Resolve a name or path (downloading on first use, with a progress bar)."""
    from sepcli.hub import load_model

    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    if offline:
        kwargs["offline"] = True
    with download_bar(quiet) as on_progress:
        return load_model(model, device=device, progress=on_progress, **kwargs)
