"""The process that runs one pipeline run with kfp.local: ``python -m mlcd.engines.runner DIR``.

It is started in its own session by the local engine, so cancelling the run is one signal to
its process group; it writes ``result.json`` into the run directory when it ends."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import sys
import warnings
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stage_decided(run_dir: pathlib.Path, stage: str) -> bool:
    """Whether the stage itself recorded why the run ended (failed or rejected)."""
    from mlcd.pipeline.context import read_stage

    return (read_stage(run_dir, stage) or {}).get("status") in ("failed", "rejected")


def main(argv: list[str]) -> int:
    run_dir = pathlib.Path(argv[1])
    text = (run_dir / "context.json").read_text()
    signal.signal(signal.SIGTERM, _interrupt)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    # KFP's own runtime flag makes ``import kfp`` skip its API client (and the Kubernetes
    # client under it: half a second). The runner never talks to a KFP API, so the package is
    # imported with the flag, and the DSL and kfp.local without it.
    os.environ["_KFP_RUNTIME"] = "true"
    import kfp

    del os.environ["_KFP_RUNTIME"]
    import kfp.local

    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.definition import training_pipeline
    from mlcd.pipeline.outcome import assemble

    # The component processes keep the flag: they skip importing the KFP client (seconds each).
    os.environ["_KFP_RUNTIME"] = "true"
    ctx = RunContext.parse(text)
    started = (
        json.loads((run_dir / "runner.json").read_text()).get("startedAt")
        if (run_dir / "runner.json").is_file()
        else None
    )
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(run_dir / "kfp"),
        raise_on_error=False,
    )
    cancelled = False
    crash: str | None = None
    try:
        training_pipeline(context=text)
    except KeyboardInterrupt:
        cancelled = True
    except Exception as exc:  # the run still gets a result that says why
        logging.exception("the pipeline runner failed")
        crash = f"the pipeline runner failed: {type(exc).__name__}: {exc}"
    record = assemble(run_dir, ctx.run_id, ctx.trigger, started)
    if cancelled and record.result in ("running", "failed"):
        record = record.model_copy(
            update={"result": "cancelled", "reason": f"cancelled during {record.stage}"}
        )
    elif crash and record.model is None and not _stage_decided(run_dir, record.stage):
        record = record.model_copy(update={"result": "failed", "reason": crash})
    tmp = run_dir / ".result.json.tmp"
    tmp.write_text(record.model_dump_json(by_alias=True, indent=2))
    tmp.replace(run_dir / "result.json")
    return 130 if cancelled else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
