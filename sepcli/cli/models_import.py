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


_MSST_TYPES = ("bs_roformer", "mel_band_roformer", "mdx23c", "scnet")


@click.command("import")
@click.option(
    "--format", "fmt", type=click.Choice(["openunmix", "demucs", "msst"]), required=True,
    help="Format of the SOURCES: 'openunmix' (model folders or TARGET=FILE.pth), "
    "'demucs' (one HT-Demucs FILE.th, or a bag BAG.yaml with its members beside it) or "
    "'msst' (one Music-Source-Separation-Training / UVR MODEL.ckpt with --config MODEL.yaml).",
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
    """Import Open-Unmix, Demucs v4 or MSST (RoFormer, MDX23C) weights as one sepcli archive.

    Open-Unmix: a SOURCE is a model folder (<target>.json + <target>.pth, and
    optionally separator.json, as its training writes them) or TARGET=FILE.pth,
    a bare state dict of one target (with --preset umxhq|umx|umxl|umxse).

    Demucs: one SOURCE, an HT-Demucs checkpoint SIG-HASH.th (read without
    running code from it) or a bag YAML (models, weights, segment) with its
    members' .th files beside it. The archive keeps Demucs' own chunking.

    MSST: one SOURCE, a checkpoint MODEL.ckpt of ZFTurbo's Music-Source-
    Separation-Training as UVR and audio-separator use them, with its YAML given
    by --config: BS-RoFormer, Mel-Band RoFormer, MDX23C or SCNet. The archive
    keeps their published chunking (recipe "mdxc"; SCNet: "msst").

    \b
    Examples:
      sepcli models import --format msst --config model_bs_roformer_ep_317_sdr_12.9755.yaml \\
          model_bs_roformer_ep_317_sdr_12.9755.ckpt -o bs-roformer.sepcli
      sepcli models import --format openunmix ./my-umx -o my-umx.sepcli
      sepcli models import --format openunmix --preset umxhq \\
          vocals=vocals-b62c91ce.pth drums=drums-9619578f.pth \\
          bass=bass-8d85a5bd.pth other=other-b52fbbf7.pth -o umxhq.sepcli
      sepcli models import --format demucs 955717e8-8726e21a.th -o htdemucs.sepcli
      sepcli models import --format demucs htdemucs_ft.yaml -o htdemucs_ft.sepcli
    """
    setup_logging()
    refuse_existing(output, force)
    if fmt != "msst" and (config_path is not None or model_type is not None or licence):
        raise UsageError("--config, --model-type and --licence apply to --format msst only")
    if fmt == "msst":
        path = _import_msst(sources, output, preset, config_path, model_type, licence, name)
    elif fmt == "demucs":
        if len(sources) != 1:
            raise UsageError("--format demucs takes one SOURCE (FILE.th or BAG.yaml)")
        if preset is not None:
            raise UsageError("--preset applies to --format openunmix only")
        from sepcli.models.importers.demucs import import_demucs_archive

        path = import_demucs_archive(sources[0], output, name=name)
    else:
        from sepcli.models.importers.openunmix import import_openunmix_archive

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
        raise UsageError("--preset applies to --format openunmix only")
    if config_path is None:
        raise UsageError("--format msst needs --config MODEL.yaml")
    if len(sources) != 1:
        raise UsageError(f"--format msst takes one checkpoint, got {len(sources)}")
    from sepcli.models.importers.msst import import_msst_archive

    fields = {} if licence is None else {"licence": licence}
    return import_msst_archive(config_path, sources[0], output, model_type, name, **fields)


import_ = import_command
