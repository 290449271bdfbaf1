"""``sepcli models import``: turn another project's published weights into one archive."""

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
from sepcli.errors import UsageError

__all__ = ["import_command", "import_"]

_PRESETS = ("umx", "umxhq", "umxl", "umxse")


_MSST_TYPES = ("bs_roformer", "mel_band_roformer", "mdx23c")


@click.command("import")
@click.option(
    "--format", "fmt", type=click.Choice(["openunmix", "msst"]), required=True,
    help="Format of the SOURCES: 'openunmix', or 'msst' (a Music-Source-Separation-"
    "Training / UVR checkpoint with its --config YAML).",
)  # fmt: skip
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@archive_output_options
@click.option(
    "--preset", type=click.Choice(_PRESETS), default=None,
    help="Hyper-parameters of a published release; needed for bare TARGET=FILE.pth sources.",
)  # fmt: skip
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="msst: the MODEL.yaml that goes with the checkpoint.",
)  # fmt: skip
@click.option(
    "--model-type", type=click.Choice(_MSST_TYPES), default=None,
    help="msst: the architecture (MSST's --model_type); default: read from the YAML.",
)  # fmt: skip
@click.option(
    "--licence", default=None,
    help="msst: licence of the weights, stored in the archive (default: unknown).",
)  # fmt: skip
@click.option(
    "--name", default=None,
    help="Model name stored in the archive (default: the preset, or the checkpoint's name).",
)  # fmt: skip
@handle_errors
def import_command(
    fmt: str,
    sources: tuple[str, ...],
    output: Path,
    preset: str | None,
    config_path: Path | None,
    model_type: str | None,
    licence: str | None,
    name: str | None,
    force: bool,
) -> None:
    """Import published weights as one sepcli archive.

    \b
    --format msst: SOURCE is one checkpoint (MODEL.ckpt) of ZFTurbo's
    Music-Source-Separation-Training, as UVR and audio-separator use them, with
    its YAML given by --config: BS-RoFormer, Mel-Band RoFormer or MDX23C. The
    archive runs with the published chunking (recipe "mdxc").

    --format openunmix: a SOURCE is an Open-Unmix model folder (<target>.json + <target>.pth, and
    optionally separator.json, as its training writes them) or TARGET=FILE.pth,
    a bare state dict of one target (with --preset umxhq|umx|umxl|umxse).

    \b
    Examples:
      sepcli models import --format msst --config model_bs_roformer_ep_317_sdr_12.9755.yaml \\
          model_bs_roformer_ep_317_sdr_12.9755.ckpt -o bs-roformer.sepcli
      sepcli models import --format openunmix ./my-umx -o my-umx.sepcli
      sepcli models import --format openunmix --preset umxhq \\
          vocals=vocals-b62c91ce.pth drums=drums-9619578f.pth \\
          bass=bass-8d85a5bd.pth other=other-b52fbbf7.pth -o umxhq.sepcli
    """
    setup_logging()
    refuse_existing(output, force)
    if fmt == "msst":
        path = _import_msst(sources, output, preset, config_path, model_type, licence, name)
    else:
        if config_path is not None or model_type is not None or licence is not None:
            raise UsageError("--config, --model-type and --licence are for --format msst")
        from sepcli.models.openunmix_import import import_openunmix_archive

        path = import_openunmix_archive(list(sources), output, preset=preset, name=name)
    from sepcli.models.archive import read_metadata

    meta = read_metadata(path)
    err_console.print(
        f"imported {', '.join(meta.sources)} ({meta.num_parameters:,} parameters, "
        f"{meta.sample_rate} Hz, {meta.audio_channels} ch)"
    )
    out_console.print(str(path), soft_wrap=True, highlight=False)


def _import_msst(
    sources: tuple[str, ...],
    output: Path,
    preset: str | None,
    config_path: Path | None,
    model_type: str | None,
    licence: str | None,
    name: str | None,
) -> Path:
    if preset is not None:
        raise UsageError("--preset is for --format openunmix")
    if config_path is None:
        raise UsageError("--format msst needs --config MODEL.yaml")
    if len(sources) != 1:
        raise UsageError(f"--format msst takes one checkpoint, got {len(sources)}")
    from sepcli.models.msst_import import import_msst_archive

    fields = {} if licence is None else {"licence": licence}
    return import_msst_archive(config_path, sources[0], output, model_type, name, **fields)


import_ = import_command
