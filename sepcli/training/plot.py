"""``curves.svg``: training loss and validation SDR per epoch, as a plain SVG.

Written without a plotting library (matplotlib is not a dependency): two
panels with polylines, axis ranges and labels. Any browser displays it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from sepcli import atomic

__all__ = ["curves_svg", "write_curves"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_W, _H, _PAD = 640, 220, 48


def _panel(title: str, series: Mapping[str, Sequence[tuple[float, float]]], top: int) -> list[str]:
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    out = [
        f'<text x="{_PAD}" y="{top + 16}" font-size="13" font-weight="bold">{escape(title)}</text>'
    ]
    if not points:
        out.append(f'<text x="{_PAD}" y="{top + 60}" font-size="12">no data yet</text>')
        return out
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    left, right, ytop, ybot = _PAD, _W - 130, top + 28, top + _H - 28

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return ybot - (y - y0) / (y1 - y0) * (ybot - ytop)

    out.append(
        f'<rect x="{left}" y="{ytop}" width="{right - left}" height="{ybot - ytop}" fill="none" stroke="#999"/>'
    )
    out.append(
        f'<text x="{left - 4}" y="{ytop + 4}" font-size="10" text-anchor="end">{y1:.4g}</text>'
    )
    out.append(f'<text x="{left - 4}" y="{ybot}" font-size="10" text-anchor="end">{y0:.4g}</text>')
    out.append(f'<text x="{left}" y="{ybot + 14}" font-size="10">epoch {x0:g}</text>')
    out.append(
        f'<text x="{right}" y="{ybot + 14}" font-size="10" text-anchor="end">epoch {x1:g}</text>'
    )
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        good = [(sx(x), sy(y)) for x, y in pts if math.isfinite(y)]
        if len(good) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in good)
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in good]
        out.append(
            f'<text x="{right + 8}" y="{ytop + 12 + 14 * i}" font-size="11" fill="{colour}">{escape(name)}</text>'
        )
    return out


def curves_svg(history: Sequence[Mapping[str, Any]]) -> str:
    """SVG text of the curves of ``history`` (the records of ``log.jsonl``)."""
    loss = {"train loss": [(float(r["epoch"]), float(r["train_loss"])) for r in history]}
    sdr: dict[str, list[tuple[float, float]]] = {}
    for r in history:
        for target, value in (r.get("valid") or {}).items():
            v = float("nan") if value is None else float(value)
            sdr.setdefault(f"{target} SDR (dB)", []).append((float(r["epoch"]), v))
    body = _panel("training loss", loss, 0) + _panel("validation median SDR (dB)", sdr, _H)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{2 * _H}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
        + "".join(body)
        + "</svg>\n"
    )


def write_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write :func:`curves_svg` to ``path`` (temp file + rename)."""
    return atomic.write_text(path, curves_svg(history))
