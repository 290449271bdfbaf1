"""``sepcli models blend``: several trained archives as one ensemble archive.

The command itself is registered in :mod:`sepcli.cli.models` (hub options).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sepcli.cli.common import archive_output_options, err_console, out_console, refuse_existing
from sepcli.errors import UsageError

__all__ = ["blend", "blend_options", "parse_modes", "parse_weights"]

F = TypeVar("F", bound=Callable[..., Any])


def parse_weights(values: tuple[str, ...]) -> dict[str, list[float]]:
    """``("vocals=0.7,0.3", ...)`` -> ``{"vocals": [0.7, 0.3]}``."""
    out: dict[str, list[float]] = {}
    for value in values:
        stem, sep, rest = value.partition("=")
        stem = stem.strip()
        if not sep or not stem or stem in out:
            raise UsageError(f"--weights {value!r}: expected STEM=W1,W2,... once per stem")
        try:
            out[stem] = [float(w) for w in rest.split(",")]
        except ValueError:
            raise UsageError(f"--weights {value!r}: weights must be numbers") from None
    return out


def blend_options(func: F) -> F:
    """The options and arguments of ``sepcli models blend`` (registered in models.py)."""
    for option in reversed(
        [
            click.argument("members", nargs=-1, required=True, metavar="MEMBER..."),
            archive_output_options,
            click.option(
                "--stems",
                default=None,
                help="Comma-separated stems of the blend [every member stem].",
            ),
            click.option(
                "--weights",
                "weights",
                multiple=True,
                metavar="STEM=W1,W2,...",
                help="One weight per member for STEM (repeatable) [equal over the members that output it].",
            ),
            click.option(
                "--mode",
                "modes",
                multiple=True,
                metavar="[STEM=]MODE",
                help="How members are combined: mean (weighted mean of waveforms), or per "
                "time-frequency bin the member with the max, min or median magnitude, or one "
                "of audio-separator's algorithms (avg_wave, median_wave, min_wave, max_wave, "
                "avg_fft, median_fft, min_fft, max_fft, uvr_max_spec, uvr_min_spec); for "
                "every stem, or STEM=MODE (repeatable) [mean].",
            ),
            click.option(
                "--wiener",
                default=None,
                metavar="N1,N2,...",
                help="Wiener iterations per member [1 where the member's phase is 'wiener', else 0].",
            ),
            click.option(
                "--name",
                default="blend",
                show_default=True,
                help="Model name stored in the archive.",
            ),
        ]
    ):
        func = option(func)
    return func


def parse_modes(values: tuple[str, ...]) -> dict[str, str]:
    """``("max",)`` -> ``{"*": "max"}``; ``("vocals=min", ...)`` -> ``{"vocals": "min"}``."""
    from sepcli.models.configs import BLEND_MODES

    out: dict[str, str] = {}
    for value in values:
        stem, sep, mode = value.rpartition("=")
        stem = stem.strip() if sep else "*"
        mode = mode.strip().lower()
        if mode not in BLEND_MODES or stem in out or not stem:
            raise UsageError(
                f"--mode {value!r}: expected MODE or STEM=MODE once per stem, "
                f"MODE one of {', '.join(BLEND_MODES)}"
            )
        out[stem] = mode
    return out


def blend(
    load: Callable[[str], Any],
    members: tuple[str, ...],
    output: Path,
    stems: str | None,
    weights: tuple[str, ...],
    modes: tuple[str, ...],
    wiener: str | None,
    name: str,
    force: bool,
) -> None:
    """Check the options, load every member with ``load(name_or_path)``, write the blend."""
    refuse_existing(output, force)
    iterations = None
    if wiener is not None:
        try:
            iterations = [int(n) for n in wiener.split(",")]
        except ValueError:
            raise UsageError(f"--wiener {wiener!r}: expected integers N1,N2,...") from None
        if len(iterations) != len(members) or min(iterations) < 0:
            raise UsageError(f"--wiener: one iteration count >= 0 per member ({len(members)})")
    parsed = parse_weights(weights)
    parsed_modes = parse_modes(modes)
    sources = [s.strip() for s in stems.split(",") if s.strip()] if stems else None
    from sepcli.models.archive import read_metadata
    from sepcli.models.bags.blend import export_blend

    archives = [load(member) for member in members]
    path = export_blend(
        archives, output, name, sources=sources, weights=parsed, wiener=iterations,
        modes=parsed_modes,
    )  # fmt: skip
    meta = read_metadata(path)
    err_console.print(
        f"blended {len(archives)} members: {', '.join(meta.sources)} "
        f"({meta.num_parameters:,} parameters, {meta.sample_rate} Hz, {meta.audio_channels} ch)"
    )
    out_console.print(str(path), soft_wrap=True, highlight=False)
