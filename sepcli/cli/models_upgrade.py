"""``sepcli models upgrade``: rewrite an older (TorchScript) archive as data."""

from __future__ import annotations

from pathlib import Path

import click

from sepcli.cli.common import (
    archive_output_options,
    err_console,
    handle_errors,
    out_console,
    refuse_existing,
    setup_logging,
)

__all__ = ["upgrade_command"]


@click.command("upgrade")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@archive_output_options
@handle_errors
def upgrade_command(source: Path, output: Path, force: bool) -> None:
    """Rewrite SOURCE, an archive of format 1 (a TorchScript program), as data.

    The old archive is checked first (every operation of its graphs against the
    allow-list of pure tensor operations), then its weights are written as
    safetensors with its family and config as JSON (format 2). Only archives
    of sepcli's own families can be rewritten; the old file is left as it is.

    \b
    Example:
      sepcli models upgrade runs/umx/umx.sepcli -o umx-v2.sepcli
    """
    setup_logging()
    refuse_existing(output, force)
    from sepcli.models.archive import read_metadata, upgrade_archive

    path = upgrade_archive(source, output)
    meta = read_metadata(path)
    err_console.print(
        f"upgraded {meta.name} ({meta.family}, {meta.num_parameters:,} parameters) "
        f"to format {meta.format_version}"
    )
    out_console.print(str(path), soft_wrap=True, highlight=False)
