"""``sepcli evaluate`` (score a model, an oracle or estimates on a dataset) and
``sepcli compare`` (evaluation folders side by side)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sepcli.cli.common import (
    err_console,
    handle_errors,
    out_console,
    separator_options,
    setup_logging,
)
from sepcli.datasets import SUBSETS, open_dataset
from sepcli.errors import UsageError
from sepcli.evaluation.runner import (
    METRIC_KINDS,
    DirectoryEstimator,
    EvalConfig,
    OracleEstimator,
    SeparatorEstimator,
    evaluate_tracks,
    summary_from_dir,
)
from sepcli.inference.config import SeparatorConfig
from sepcli.progress import Progress

_STEM_ORDER = ("vocals", "accompaniment", "drums", "bass", "other")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.2f}"


def _stem_key(stem: str) -> tuple[int, str]:
    if stem == "overall":
        return (len(_STEM_ORDER) + 1, stem)
    return (_STEM_ORDER.index(stem) if stem in _STEM_ORDER else len(_STEM_ORDER), stem)


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    agg = summary.get("aggregate", {})
    order = ("SDR", "SIR", "ISR", "SAR", "SI-SDR")
    metrics = sorted(
        {m for stems in agg.values() for m in stems},
        key=lambda m: (m not in order, order.index(m) if m in order else 0, m),
    )
    table = Table(title=title, title_justify="left")
    table.add_column("stem")
    table.add_column("over tracks")
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("tracks", justify="right")
    for stem in sorted(agg, key=_stem_key):
        cells = agg[stem]
        count = str(max((c.get("tracks", 0) for c in cells.values()), default=0))
        table.add_row(
            stem, "median", *[_fmt(cells.get(m, {}).get("median")) for m in metrics], count
        )
        table.add_row("", "mean", *[_fmt(cells.get(m, {}).get("mean")) for m in metrics], "",
                      end_section=True)  # fmt: skip
    return table


def _metrics_device(device: str) -> str:
    """BSSEval needs float64: on CUDA where the model runs, else on the CPU (not MPS)."""
    from sepcli.inference.device import resolve_device

    dev = resolve_device(device)
    return str(dev) if dev.type == "cuda" else "cpu"


def _make_estimator(
    model: str | None, estimates: Path | None, options: dict[str, Any], quiet: bool = False
):
    if (model is None) == (estimates is None):
        raise UsageError("give exactly one of --model or --estimates")
    if estimates is not None:
        return DirectoryEstimator(estimates)
    assert model is not None
    if model.startswith("oracle:"):
        return OracleEstimator(model.split(":", 1)[1])
    from sepcli.cli.bars import load_model_for_cli
    from sepcli.inference.separator import Separator, resolve_device

    device = resolve_device(options["device"])
    archive = load_model_for_cli(model, device if device.type != "mps" else "cpu", quiet=quiet)
    separator = Separator(archive, options["separator_config"], device=device)
    return SeparatorEstimator(separator, label=model)


@click.command("evaluate")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset root: MUSDB18 (.stem.mp4), MUSDB18-HQ or <track>/<stem>.<ext> folders.",
)
@click.option(
    "--subset",
    type=click.Choice(SUBSETS),
    default="test",
    show_default=True,
    help="valid = the MUSDB validation tracks of train (a flat folder: test = every track).",
)
@click.option(
    "--tracks", "track_names", multiple=True, metavar="NAME", help="Only these tracks (repeatable)."
)
@click.option(
    "--model",
    default=None,
    metavar="NAME|PATH",
    help="Model name, archive path, or oracle:irm1|irm2|ibm|mix.",
)
@click.option(
    "--estimates",
    type=click.Path(path_type=Path),
    default=None,
    help="Score existing estimates DIR/<track>/<stem>.wav instead of separating.",
)
@click.option(
    "--stems", default=None, help="Comma-separated stems to score (default: all available)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("eval"),
    show_default=True,
    help="Output folder (per-track JSON, summary.json, evaluation.json); tracks already scored "
    "there by the same model and settings are read back, another model's results are refused.",
)
@click.option(
    "--metrics",
    type=click.Choice(METRIC_KINDS),
    default="bsseval",
    show_default=True,
    help="bsseval: framewise SDR/SIR/ISR/SAR (museval v4); sdr: MDX global SDR; sisdr: SI-SDR.",
)
@click.option(
    "--filters-len",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="BSSEval distortion filter taps (museval: 512; others are not comparable).",
)
@click.option(
    "--write-estimates", is_flag=True, help="Also write the estimates to OUT/estimates/<track>/."
)
@click.option(
    "--samples",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Write listening excerpts (mixture and estimates, same offset) to OUT/samples/<track>/.",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps (the model; metrics "
    "run there on CUDA, else on the CPU).",
)
@separator_options
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary JSON on stdout instead of tables."
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def evaluate(
    data: Path, subset: str, track_names: tuple[str, ...], model: str | None, estimates: Path | None,
    stems: str | None, out_dir: Path, metrics: str, filters_len: int, write_estimates: bool, samples: float | None,
    device: str, separator_config: SeparatorConfig, as_json: bool, quiet: bool,
) -> None:  # fmt: skip
    """Score separations of a dataset with BSSEval v4 (the numbers of museval v4).

    Writes OUT/<subset>/<track>.json in museval's per-frame format and OUT/summary.json,
    and prints the median of medians and the mean per stem. Exits 1 when a track was skipped.
    """
    setup_logging(quiet=quiet)
    tracks = open_dataset(data, subset)
    if track_names:
        known = {t.name for t in tracks}
        unknown = [n for n in track_names if n not in known]
        if unknown:
            raise UsageError(
                f"no track named {', '.join(map(repr, unknown))} in subset {subset!r} of {data}"
            )
        tracks = [t for t in tracks if t.name in track_names]
    stem_list = tuple(s.strip() for s in stems.split(",") if s.strip()) if stems else None
    options = dict(device=device, separator_config=separator_config)
    estimator = _make_estimator(model, estimates, options, quiet)
    config = EvalConfig(metrics=metrics, stems=stem_list, filters_len=filters_len, samples=samples, write_estimates=write_estimates,
                        device=_metrics_device(device))  # fmt: skip

    def report(event: Progress) -> None:
        status = event.info["status"]
        if status == "skipped":
            err_console.print(
                f"[yellow]skipped[/] {event.item}: {event.info['message']}", soft_wrap=True
            )
        elif not quiet:
            err_console.print(f"{status} {event.item}", soft_wrap=True)

    result = evaluate_tracks(tracks, estimator, out_dir, config, progress=report)
    if as_json:
        click.echo(json.dumps(result.summary, indent=1))
    elif not quiet:
        title = f"{estimator.label} on {data} ({subset}, {len(result.scored) + len(result.resumed)} tracks)"
        out_console.print(_summary_table(result.summary, title))
    if result.skipped:
        err_console.print(
            f"[red]{len(result.skipped)} track(s) skipped[/]; see messages above", soft_wrap=True
        )
        raise SystemExit(1)


@click.command("compare")
@click.argument("outs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--metric",
    default="SDR",
    show_default=True,
    help="Metric to compare (SDR, SIR, ISR, SAR, SI-SDR).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@handle_errors
def compare(outs: tuple[Path, ...], metric: str, as_json: bool) -> None:
    """Side-by-side table of evaluation folders (median of medians and mean per stem)."""
    summaries = {str(p): summary_from_dir(p) for p in outs}
    stems = sorted({s for sm in summaries.values() for s in sm.get("aggregate", {})}, key=_stem_key)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for stem in stems:
        rows[stem] = {}
        for name, sm in summaries.items():
            rows[stem][name] = sm.get("aggregate", {}).get(stem, {}).get(metric, {})
    if not any(cell for row in rows.values() for cell in row.values()):
        raise UsageError(f"no {metric!r} scores in {', '.join(map(str, outs))}")
    if as_json:
        click.echo(json.dumps({"metric": metric, "stems": rows}, indent=1))
        return
    table = Table(title=f"{metric}: median of medians (mean)", title_justify="left")
    table.add_column("stem")
    for name, sm in summaries.items():
        table.add_column(f"{sm.get('estimator', name)}\n{name}", justify="right")
    for stem, cells in rows.items():
        table.add_row(stem, *[
            f"{_fmt(c.get('median'))} ({_fmt(c.get('mean'))})" if c else "-" for c in cells.values()
        ])  # fmt: skip
    out_console.print(table)
