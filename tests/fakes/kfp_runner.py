"""Executes one run of the fake KFP API: ``python -m fakes.kfp_runner DIR``.

``DIR/pipeline.yaml`` is the IR the client submitted and ``DIR/parameters.json`` its runtime
parameters; the IR is loaded as KFP loads a pipeline package and run by ``kfp.local`` on this
machine, so the submitted components themselves do the work. Exit 0: the pipeline succeeded."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    folder = pathlib.Path(argv[1])
    signal.signal(signal.SIGTERM, _interrupt)
    import kfp.local
    from kfp.components import load_component_from_file

    os.environ["_KFP_RUNTIME"] = "true"
    pipeline = load_component_from_file(str(folder / "pipeline.yaml"))
    parameters = json.loads((folder / "parameters.json").read_text())
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(folder / "root"),
        raise_on_error=True,
    )
    try:
        pipeline(**parameters)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        (folder / "error.txt").write_text(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
