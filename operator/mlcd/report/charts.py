"""Small inline SVG charts: no plotting library, nothing to load, the page stands alone."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlcd.domain import numbers

W, H = 320, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 24, 36
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def _padded(values: Sequence[float], share: float = 0.08) -> tuple[float, float]:
    low, high = min(values, default=0.0), max(values, default=1.0)
    margin = (high - low) * share or abs(high) * share or 0.5
    return low - margin, high + margin


def _label(value: float) -> str:
    return f"{value:.3g}"


class Frame:
    """Maps data to pixels inside one chart's axes."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], log_x: bool = False):
        self.log_x = log_x
        self.x0, self.x1 = (math.log10(x[0]), math.log10(x[1])) if log_x else x
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        self.y0, self.y1 = y
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5

    def px(self, x: float) -> float:
        value = math.log10(x) if self.log_x else x
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        xticks: Sequence[tuple[float, str]] | None = None,
    ) -> list[str]:
        out = [
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
            f'height="{H - TOP - BOTTOM}" fill="none" stroke="#999"/>',
            f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="12">'
            f"{html.escape(title)}</text>",
            f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle" font-size="10">'
            f"{html.escape(xlabel)}</text>",
            f'<text x="10" y="{H / 2}" font-size="10" text-anchor="middle" '
            f'transform="rotate(-90 10 {H / 2})">{html.escape(ylabel)}</text>',
        ]
        for y in _ticks(self.y0, self.y1):
            out.append(
                f'<text x="{LEFT - 4}" y="{self.py(y) + 3:.1f}" font-size="9" '
                f'text-anchor="end">{_label(y)}</text>'
            )
        if xticks is None:
            raw = _ticks(self.x0, self.x1)
            xticks = [(10**v if self.log_x else v, _label(10**v if self.log_x else v)) for v in raw]
        for x, text in xticks:
            out.append(
                f'<text x="{self.px(x):.1f}" y="{H - BOTTOM + 12}" font-size="9" '
                f'text-anchor="middle">{html.escape(text)}</text>'
            )
        return out


def _svg(parts: list[str], alt: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(alt)}" '
        f'font-family="sans-serif">' + "".join(parts) + "</svg>"
    )


def trials(records: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str) -> str:
    """Each parameter against the objective, as Katib's UI shows it."""
    good = [r for r in records if _finite(r.get("value")) is not None]
    ys = [float(r["value"]) for r in good]
    charts = []
    for name in params:
        xs = [r["params"].get(name) for r in good]
        numeric = bool(xs) and all(_finite(v) is not None for v in xs)
        failed = len(records) - len(good)
        title = f"{name} vs {metric}" + (f" ({failed} failed)" if failed else "")
        if numeric:
            values = [float(v) for v in xs]
            log = min(values) > 0 and max(values) / min(values) >= 20
            span = (min(values) / 1.2, max(values) * 1.2) if log else _padded(values)
            frame = Frame(span, _padded(ys), log_x=log)
            parts = frame.axes(title, name, metric)
            points = list(zip(values, ys, strict=True))
        else:
            labels = sorted({str(v) for v in xs})
            frame = Frame((-0.5, len(labels) - 0.5), _padded(ys))
            parts = frame.axes(title, name, metric, list(enumerate(labels)))
            points = [(float(labels.index(str(v))), y) for v, y in zip(xs, ys, strict=True)]
        for x, y in points:
            parts.append(
                f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="4" '
                f'fill="{COLOURS[0]}" fill-opacity="0.7"/>'
            )
        charts.append(_svg(parts, title))
    return "".join(charts)


def _finite(value: Any) -> float | None:
    """A finite number from a record (JSON may hold "NaN" and friends), or None."""
    number = numbers.number(value)
    return number if number is not None and math.isfinite(number) else None


def curves(series: Mapping[str, Sequence[Any]]) -> str:
    shown = {
        k: [float(x) for x in v]
        for k, v in series.items()
        if k != "epoch" and len(v) > 1 and all(_finite(x) is not None for x in v)
    }
    if not shown:
        return ""
    longest = max(len(v) for v in shown.values())
    low = min(min(v) for v in shown.values())
    high = max(max(v) for v in shown.values())
    frame = Frame((1, longest), _padded([low, high], 0.05))
    parts = frame.axes("learning curves", "report", "value")
    for i, (name, values) in enumerate(shown.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{frame.px(j + 1):.1f},{frame.py(v):.1f}" for j, v in enumerate(values))
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        parts.append(
            f'<text x="{W - RIGHT - 4}" y="{TOP + 12 + 12 * i}" font-size="10" '
            f'text-anchor="end" fill="{colour}">{html.escape(name)}</text>'
        )
    return _svg(parts, "learning curves")


def confusion(matrix: Sequence[Sequence[int]]) -> str:
    size = len(matrix)
    cell = 22
    top, left = 30, 34
    width, height = left + cell * size + 10, top + cell * size + 30
    peak = max((max(row) for row in matrix), default=1) or 1
    parts = [
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">confusion matrix</text>',
        f'<text x="{left + cell * size / 2}" y="{height - 6}" font-size="10" '
        'text-anchor="middle">predicted</text>',
        f'<text x="10" y="{top + cell * size / 2}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + cell * size / 2})">actual</text>',
    ]
    for i, row in enumerate(matrix):
        parts.append(
            f'<text x="{left - 4}" y="{top + cell * i + 15}" font-size="9" '
            f'text-anchor="end">{i}</text>'
        )
        parts.append(
            f'<text x="{left + cell * i + cell / 2}" y="{top + cell * size + 12}" '
            f'font-size="9" text-anchor="middle">{i}</text>'
        )
        for j, value in enumerate(row):
            shade = value / peak
            fill = f"rgb({int(255 - 200 * shade)},{int(255 - 140 * shade)},255)"
            parts.append(
                f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" '
                f'height="{cell}" fill="{fill}" stroke="#fff"/>'
            )
            if value:
                colour = "#fff" if shade > 0.5 else "#222"
                parts.append(
                    f'<text x="{left + cell * j + cell / 2}" y="{top + cell * i + 15}" '
                    f'font-size="8" text-anchor="middle" fill="{colour}">{value}</text>'
                )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="confusion matrix" font-family="sans-serif">'
        + "".join(parts)
        + "</svg>"
    )


def roc(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> str:
    frame = Frame((0.0, 1.0), (0.0, 1.0))
    title = f"ROC, micro-average (macro AUC {numbers.name(auc)})" if auc is not None else "ROC"
    parts = frame.axes(title, "false positive rate", "true positive rate")
    parts.append(
        f'<line x1="{frame.px(0)}" y1="{frame.py(0)}" x2="{frame.px(1)}" '
        f'y2="{frame.py(1)}" stroke="#aaa" stroke-dasharray="4"/>'
    )
    path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(fpr, tpr, strict=True))
    parts.append(
        f'<polyline points="{path}" fill="none" stroke="{COLOURS[0]}" stroke-width="1.5"/>'
    )
    return _svg(parts, title)
