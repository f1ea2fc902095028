"""The example trainer. It follows mlcd's trainer contract (docs/trainer-contract.md):

* hyperparameters arrive as ``--name=value`` arguments;
* ``MLCD_STAGE`` says what to do: ``trial`` (fit, print the objective on the validation data),
  ``train`` (fit on all training data, possibly as one of ``WORLD_SIZE`` DDP workers, rank 0
  writes ``model.onnx`` into ``MLCD_MODEL_DIR``) or ``evaluate`` (load the trained model and
  write its outputs on ``MLCD_EVAL_DATA`` to ``MLCD_PREDICTIONS_PATH``);
* metrics are printed as ``name=value`` lines;
* on a cluster the data, model and metrics locations are ``s3://`` URIs (:mod:`.storage`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from mnist_trainer import storage
from mnist_trainer.model import DigitNet


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mnist_trainer")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--shift", type=int, default=2, help="random translation in pixels (0: none)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("MLCD_SEED", "0")))
    return p.parse_args(argv)


def load(uri: str) -> TensorDataset:
    with storage.readable(uri) as path, np.load(path) as data:
        x = torch.from_numpy(data["x"].astype(np.float32))
        y = torch.from_numpy(data["y"].astype(np.int64))
    return TensorDataset(x, y)


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data.tensors
        return float((model(x).argmax(dim=1) == y).float().mean())


def translate(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shifts the whole batch by a random offset: cheap augmentation against overfitting."""
    if pixels <= 0:
        return x
    dy, dx = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def fit(
    args: argparse.Namespace, data: TensorDataset, validation: TensorDataset | None
) -> nn.Module:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(args.seed)
    model: nn.Module = DigitNet(args.channels, dropout=args.dropout)
    if world > 1:
        dist.init_process_group("gloo")
        print(f"process group: rank {rank} of {world}", flush=True)
        model = nn.parallel.DistributedDataParallel(model)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    optimizer = make_optimizer(args, model)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    generator = torch.Generator().manual_seed(args.seed + rank)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, args.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        total, batches = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(translate(x, args.shift, generator)), y)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        schedule.step()
        line = f"epoch={epoch} loss={total / max(batches, 1):.5f}"
        if validation is not None:
            line += f" accuracy={accuracy(model, validation):.5f}"
        if rank == 0:
            print(line, flush=True)
    if world > 1:
        dist.barrier()
        model = model.module
    return model


def export(model: nn.Module, args: argparse.Namespace, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.save({"state": model.state_dict(), "args": vars(args)}, out / "model.pt")
    example = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out / "model.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )


def evaluate(args: argparse.Namespace) -> None:
    model_dir = pathlib.Path(os.environ["MLCD_MODEL_DIR"])
    saved = torch.load(model_dir / "model.pt", weights_only=False)
    trained = argparse.Namespace(**saved["args"])
    model = DigitNet(trained.channels, dropout=trained.dropout)
    model.load_state_dict(saved["state"])
    model.eval()
    with np.load(os.environ["MLCD_EVAL_DATA"]) as data:
        x = torch.from_numpy(data["x"].astype(np.float32))
    with torch.no_grad():
        logits = model(x).numpy()
    np.save(os.environ["MLCD_PREDICTIONS_PATH"], logits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stage = os.environ.get("MLCD_STAGE", "train")
    started = time.monotonic()
    if stage == "evaluate":
        evaluate(args)
        return 0
    data = load(os.environ["MLCD_TRAIN_DATA"])
    validation_path = os.environ.get("MLCD_VALIDATION_DATA")
    validation = load(validation_path) if stage == "trial" and validation_path else None
    model = fit(args, data, validation)
    if stage == "train" and int(os.environ.get("RANK", "0")) == 0:
        with storage.writable_folder(os.environ["MLCD_MODEL_DIR"]) as out:
            export(model, args, out)
        summary = {"train_seconds": round(time.monotonic() - started, 3)}
        metrics_file = os.environ.get("MLCD_METRICS_FILE")
        if metrics_file:
            storage.write_text(metrics_file, json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
