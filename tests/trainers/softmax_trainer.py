"""A small trainer for the tests: softmax regression in numpy, exported to ONNX with onnx.helper.

It follows the trainer contract like any user's trainer, without torch, so the loop's tests
run in seconds. ``--fault=NAME`` makes it misbehave the way a user's code can:
``trial-crash`` (trials exit 1 when lr > 0.5), ``trial-crash-all``, ``train-crash``,
``no-metrics``, ``no-model``, ``parity`` (evaluation outputs differ from the ONNX model's),
``sleep`` (trials sleep for an hour), ``leak`` (training writes its whole environment to
``$ENV_DUMP`` as JSON, prints the contents of ``$LEAK_FILE`` to stderr and fails: a trainer
that got hold of a secret and shows it), ``eval-nan``, ``eval-inf``, ``eval-neginf``
(evaluation prints ``custom=nan``, ``inf`` or ``-inf``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--fault", default="")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per epoch")
    return p.parse_args(argv)


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        x = data["x"].reshape(len(data["x"]), -1).astype(np.float32) / 255.0
        y = data["y"].astype(np.int64) if "y" in data else np.zeros(len(x), dtype=np.int64)
    return x, y


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit(
    x: np.ndarray,
    y: np.ndarray,
    args: argparse.Namespace,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    classes = 10
    w = np.zeros((x.shape[1], classes), dtype=np.float32)
    b = np.zeros(classes, dtype=np.float32)
    onehot = np.eye(classes, dtype=np.float32)[y]
    for epoch in range(1, args.epochs + 1):
        p = softmax(x @ w + b)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        grad = (p - onehot) / len(y)
        w -= args.lr * (x.T @ grad + args.l2 * w)
        b -= args.lr * grad.sum(axis=0)
        time.sleep(args.sleep)
        line = f"epoch={epoch} loss={loss:.5f}"
        if validation is not None:
            vx, vy = validation
            line += f" accuracy={float(((vx @ w + b).argmax(1) == vy).mean()):.5f}"
        print(line, flush=True)
    return w, b


def export(w: np.ndarray, b: np.ndarray, shape: tuple[int, ...], out: pathlib.Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Div", ["flat", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    np.savez(out / "weights.npz", w=w, b=b)


def main() -> int:
    args = parse(sys.argv[1:])
    stage = os.environ["MLCD_STAGE"]
    model_dir = pathlib.Path(os.environ["MLCD_MODEL_DIR"])
    if stage == "evaluate":
        with np.load(model_dir / "weights.npz") as weights:
            w, b = weights["w"], weights["b"]
        x, _ = load(os.environ["MLCD_EVAL_DATA"])
        logits = x @ w + b
        if args.fault == "parity":
            logits = logits + 0.5
        np.save(os.environ["MLCD_PREDICTIONS_PATH"], logits)
        print("eval-extra=1.5")
        custom = {"eval-nan": "nan", "eval-inf": "inf", "eval-neginf": "-inf"}.get(args.fault)
        print(f"custom={custom or 0.5}")
        return 0
    if stage == "trial":
        if args.fault == "sleep":
            time.sleep(3600)
        if args.fault == "trial-crash-all" or (args.fault == "trial-crash" and args.lr > 0.5):
            print("Traceback (most recent call last):\nValueError: lr too high", file=sys.stderr)
            return 1
    if stage == "train" and args.fault == "leak":
        pathlib.Path(os.environ["ENV_DUMP"]).write_text(json.dumps(dict(os.environ)))
        print(
            f"cannot reach the store with {pathlib.Path(os.environ['LEAK_FILE']).read_text()}",
            file=sys.stderr,
        )
        return 2
    if stage == "train" and args.fault == "train-crash":
        print("RuntimeError: worker lost", file=sys.stderr)
        return 3
    x, y = load(os.environ["MLCD_TRAIN_DATA"])
    validation = load(os.environ["MLCD_VALIDATION_DATA"]) if stage == "trial" else None
    if args.fault == "no-metrics" and stage == "train":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    w, b = fit(x, y, args, validation)
    if stage == "train" and args.fault != "no-model":
        model_dir.mkdir(parents=True, exist_ok=True)
        with np.load(os.environ["MLCD_TRAIN_DATA"]) as data:
            shape = tuple(data["x"].shape[1:])
        export(w, b, shape, model_dir)
        metrics_file = os.environ.get("MLCD_METRICS_FILE")
        if metrics_file and args.fault != "no-metrics":
            pathlib.Path(metrics_file).write_text(json.dumps({"samples": len(y)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
