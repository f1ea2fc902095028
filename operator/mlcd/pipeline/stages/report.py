"""Report: one HTML page per run, written whatever the run's outcome.

Serving is the loop's step after the pipeline, so this page says the exported model is served
next; whoever serves it rewrites the page with the run's final record."""

from __future__ import annotations

import pathlib

from mlcd.pipeline.context import RunContext, read_stages
from mlcd.pipeline.outcome import assemble
from mlcd.report.html import build


def run(ctx: RunContext, html_path: str) -> None:
    record = assemble(ctx.dir, ctx.run_id, ctx.trigger)
    page = build(
        read_stages(ctx.dir),
        f"Run {ctx.run_id} of {ctx.pipeline.namespace}/{ctx.pipeline.name}",
        record.model_dump(by_alias=True, mode="json"),
    )
    pathlib.Path(html_path).write_text(page)
    (ctx.dir / "report.html").write_text(page)
