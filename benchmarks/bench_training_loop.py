"""robustact's PGD-10 training step against the loop a researcher would write instead, on the same network,
batch and device: a torch DataLoader over the uint8 images with random crop + flip in the workers' Python,
torchattacks' PGD (`pip install --no-deps torchattacks`), a plain SGD step.

    python benchmarks/bench_training_loop.py --arch resnet_small --batches 8 [--device cpu] [--bf16]

Both loops draw the same number of batches of CIFAR-10's shape from the training split and do the same work per
step (PGD-10, ε 8/255, step 2/255, random start, model in eval mode for the attack; CE on the adversarial batch;
SGD with momentum). Prints images/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


class CropFlip(torch.utils.data.Dataset):
    """What a torchvision-free script does: pad-4 random crop and horizontal flip per image, in numpy."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = np.pad(self.images[i], ((0, 0), (4, 4), (4, 4)))
        dy, dx = np.random.randint(0, 9, 2)
        img = img[:, dy:dy + 32, dx:dx + 32]
        if np.random.rand() < 0.5:
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)).float() / 255, int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline(arch: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, batches: int, device, workers: int):
    import torchattacks

    from robustact import build_model

    torch.manual_seed(0)
    model = build_model(arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(CropFlip(x.numpy(), y.numpy()), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    it = iter(loader)
    seen, start = 0, None
    for step in range(batches + 1):  # the first step is a warm-up
        if step == 1:
            sync(device)
            start, seen = time.perf_counter(), 0
        xb, yb = next(it)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        model.eval()
        x_adv = attack(xb, yb)
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(yb)
    sync(device)
    return seen / (time.perf_counter() - start)


def ours(arch: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, batches: int, device, amp: str):
    from robustact import build_model
    from robustact.data import DeviceLoader
    from robustact.training.objectives import ObjectiveContext, get_objective
    from robustact.utils import autocast_context

    torch.manual_seed(0)
    model = build_model(arch).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = DeviceLoader(x, y, batch_size, device, train=True, channels_last=True)
    objective, ctx = get_objective("pgd_at"), ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=10)
    it = iter(loader)
    seen, start = 0, None
    for step in range(batches + 1):
        if step == 1:
            sync(device)
            start, seen = time.perf_counter(), 0
        xb, yb = next(it)
        model.train()
        with autocast_context(amp, device):
            loss, _ = objective(model, xb, yb, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(yb)
    sync(device)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet_small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=8, help="timed training steps (after one warm-up)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--bf16", action="store_true", help="robustact under bf16 autocast as well")
    args = p.parse_args(argv)
    from robustact.data import load_dataset

    device = torch.device(args.device)
    x, y = load_dataset("cifar10", "train")
    n = args.batch_size * (args.batches + 1)
    x, y = x[:n * 2], y[:n * 2]
    print(f"{args.arch}, batch {args.batch_size}, PGD-10 AT, {args.batches} timed steps; device {device}, "
          f"{torch.get_num_threads()} threads")
    base = baseline(args.arch, x, y, args.batch_size, args.batches, device, args.workers)
    print(f"DataLoader + torchattacks PGD + SGD      {base:8.1f} images/s")
    fast = ours(args.arch, x, y, args.batch_size, args.batches, device, "none")
    print(f"robustact (device loader, channels_last) {fast:8.1f} images/s   {fast / base:.2f}x")
    if args.bf16:
        bf = ours(args.arch, x, y, args.batch_size, args.batches, device, "bf16")
        print(f"robustact, bf16 autocast                 {bf:8.1f} images/s   {bf / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
