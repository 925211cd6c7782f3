"""Prepare what `benchmarks/gpu_check.sh` needs on a GPU machine that cannot reach the network or ../shared:
a CIFAR-10 folder small enough to travel with the checkout (the device tool carries 64 MiB): test images 0–999
(the bit-exact ones) and the first 10,000 training images, written as the official python batches `test_batch`
and `data_batch_1` (32 MiB). On the GPU machine gpu_check.sh copies `data_batch_1` to `data_batch_2..5`, so that
an epoch has CIFAR-10's 50,000 images for its timing (the model it trains has seen 10,000 distinct images).

    python benchmarks/make_gpu_data.py [--out .gpu/data]      (make gpu-prep does this, and fetches the wheel
                                                              of the official AutoAttack into .whl/)
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".gpu/data")
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=1000)
    args = p.parse_args(argv)
    from robustact.data import load_dataset

    folder = Path(args.out) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_dataset("cifar10", "train")
    train = {"data": x[:args.train].reshape(args.train, -1).numpy(), "labels": y[:args.train].tolist()}
    (folder / "data_batch_1").write_bytes(pickle.dumps(train, protocol=4))
    x, y = load_dataset("cifar10", "test")
    test = {"data": x[:args.test].reshape(args.test, -1).numpy(), "labels": y[:args.test].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=4))
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(f"wrote {folder} ({size:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
