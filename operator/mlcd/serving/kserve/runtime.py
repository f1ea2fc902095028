"""The predictor container of mlcd's ServingRuntime (deploy/kserve/): the project's own model
server (KServe's ModelServer with onnxruntime, as on one machine) serving the version folder
KServe's storage initializer downloaded to ``--model_dir``.

``python -m mlcd.serving.kserve.runtime --model_name=NAME --model_dir=/mnt/models
--http_port=8080``: the folder holds ``model.onnx`` and ``metadata.json`` (its version and
sha256). ``MLCD_MODEL_SHA256``, set on the InferenceService by the operator, is the digest the
model repository recorded; a folder whose model differs is refused and the pod never becomes
ready, so KServe keeps the InferenceService (or its canary) not Ready.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

EXPECTED_SHA256 = "MLCD_MODEL_SHA256"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlcd.serving.kserve.runtime")
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_dir", default="/mnt/models", type=pathlib.Path)
    parser.add_argument("--http_port", default=8080, type=int)
    parser.add_argument("--host", default="0.0.0.0")
    # KServe passes flags of its own model servers; they mean nothing here.
    return parser.parse_known_args(argv)[0]


def pointer_for(model_dir: pathlib.Path, expected: str | None) -> dict[str, str]:
    """What the model server is to serve, checked against the repository's record."""
    try:
        metadata = json.loads((model_dir / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{model_dir}/metadata.json is unreadable: {exc}") from exc
    if not (model_dir / "model.onnx").is_file():
        raise SystemExit(f"{model_dir} has no model.onnx")
    recorded = str(metadata.get("sha256") or "")
    if expected and recorded != expected:
        raise SystemExit(
            f"{model_dir} holds a model with sha256 {recorded or '?'}, "
            f"the InferenceService asks for {expected}"
        )
    return {
        "version": str(metadata.get("version") or "?"),
        "path": str(model_dir),
        "sha256": expected or recorded,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    target = pointer_for(args.model_dir, os.environ.get(EXPECTED_SHA256) or None)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="mlcd-serving-"))
    pointer = folder / "pointer.json"
    pointer.write_text(json.dumps(target))
    os.environ.update(
        {
            "MLCD_SERVING_MODEL": args.model_name,
            "MLCD_SERVING_POINTER": str(pointer),
            "MLCD_SERVING_PORT": str(args.http_port),
            "MLCD_SERVING_HOST": args.host,
        }
    )
    # KServe's own argument parser reads sys.argv when it is imported.
    sys.argv = sys.argv[:1]
    from mlcd.serving import modelserver

    return modelserver.main()


if __name__ == "__main__":
    sys.exit(main())
