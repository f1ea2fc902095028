"""Small inline SVG charts: no plotting library, nothing to load, the page stands alone."""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from mlcd.domain import numbers
from mlcd.domain.metrics_text import STEP_NAMES

W, H = 320, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 24, 36
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round numbers (1, 2, 2.5 or 5 times a power of ten apart) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    # Multiples of the step, rounded so that 0.1 * 3 prints as 0.3.
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten within [low, high] (both > 0); 1-2-5 multiples when fewer than two fit."""
    for multiples in ((1,), (1, 2, 5)):
        ticks = [
            float(f"{m * 10.0**e:.12g}")
            for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
            for m in multiples
            if low * (1 - 1e-9) <= m * 10.0**e <= high * (1 + 1e-9)
        ]
        if len(ticks) >= 2:
            return ticks
    return [t for t in nice_ticks(low, high) if t > 0]


def _padded(values: Sequence[float], share: float = 0.08) -> tuple[float, float]:
    low, high = min(values, default=0.0), max(values, default=1.0)
    margin = (high - low) * share or abs(high) * share or 0.5
    return low - margin, high + margin


def _label(value: float) -> str:
    return f"{value:.6g}"


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
        for y in nice_ticks(self.y0, self.y1):
            out.append(
                f'<text x="{LEFT - 4}" y="{self.py(y) + 3:.1f}" font-size="9" '
                f'text-anchor="end">{_label(y)}</text>'
            )
        if xticks is None:
            values = (
                log_ticks(10**self.x0, 10**self.x1) if self.log_x else nice_ticks(self.x0, self.x1)
            )
            xticks = [(v, _label(v)) for v in values]
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


def trials(
    records: Sequence[Mapping[str, Any]],
    params: Sequence[str],
    metric: str,
    log_params: Collection[str] = (),
) -> str:
    """Each parameter against the objective, as Katib's UI shows it; parameters sampled
    logUniform (``log_params``) on a log axis."""
    good = [r for r in records if _finite(r.get("value")) is not None]
    ys = [float(r["value"]) for r in good]
    charts = []
    for name in params:
        xs = [r.get("params", {}).get(name) for r in good]
        numeric = bool(xs) and all(_finite(v) is not None for v in xs)
        failed = len(records) - len(good)
        title = f"{name} vs {metric}" + (f" ({failed} failed)" if failed else "")
        if numeric:
            values = [float(v) for v in xs]
            log = name in log_params and min(values) > 0
            span = (min(values) / 1.2, max(values) * 1.2) if log else _padded(values)
            frame = Frame(span, _padded(ys), log_x=log)
            parts = frame.axes(title, f"{name} (log scale)" if log else name, metric)
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


def curves(
    series: Mapping[str, Sequence[Any]], steps: Mapping[str, Mapping[str, Any]] | None = None
) -> str:
    """The training job's metrics as printed. Against the step (or epoch) the trainer printed
    on the same line when every curve has one, else against the order of the reports."""
    steps = steps or {}
    shown = {
        k: [numbers.number(v) for v in values]
        for k, values in series.items()
        if k not in STEP_NAMES and len(values) > 1
    }
    shown = {k: v for k, v in shown.items() if sum(_finite(x) is not None for x in v) > 1}
    if not shown:
        return ""
    names = {str((steps.get(k) or {}).get("name")) for k in shown}
    by_step = len(names) == 1 and all(
        len((steps.get(k) or {}).get("values") or []) == len(v) for k, v in shown.items()
    )
    lines: dict[str, list[tuple[float, float]]] = {}
    for name, values in shown.items():
        xs = steps[name]["values"] if by_step else range(1, len(values) + 1)
        lines[name] = [
            (float(x), float(y))
            for x, y in zip(xs, values, strict=True)
            if _finite(x) is not None and y is not None and math.isfinite(y)
        ]
    every_x = [x for points in lines.values() for x, _ in points]
    every_y = [y for points in lines.values() for _, y in points]
    frame = Frame((min(every_x), max(every_x)), _padded(every_y, 0.05))
    xlabel = names.pop() if by_step else "report"
    parts = frame.axes("learning curves", xlabel, "value")
    for i, (name, points) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in points)
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
