"""Report: one HTML page per run, written whatever the run's outcome."""

from __future__ import annotations

import pathlib

from mlcd.pipeline.context import RunContext, read_stages
from mlcd.report.html import build


def run(ctx: RunContext, html_path: str) -> None:
    page = build(
        read_stages(ctx.dir), f"Run {ctx.run_id} of {ctx.pipeline.namespace}/{ctx.pipeline.name}"
    )
    pathlib.Path(html_path).write_text(page)
    (ctx.dir / "report.html").write_text(page)
