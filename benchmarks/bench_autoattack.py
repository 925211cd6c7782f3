"""Time robustact's AutoAttack against the official implementation (`pyautoattack`) on the same model,
device and images, and print the robust accuracies side by side.

    python benchmarks/bench_autoattack.py --n 200 --arch small_cnn --device cpu --train-epochs 8
    python benchmarks/bench_autoattack.py --n 1000 --arch resnet18 --device cuda --checkpoint model.safetensors

Without --checkpoint the model is trained briefly with PGD-AT (--train-epochs > 0) or left random (0); a
random model is not robust, so nearly all the time then goes to APGD-CE and the comparison says little.
Both libraries run with seed 0 and batch size --batch-size; the official one with its own checks on.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

from robustact import build_model
from robustact.bench import quick_pgd_at, small_cnn


def build(arch: str) -> nn.Module:
    if arch == "small_cnn":
        return small_cnn()
    return build_model(arch, num_classes=10)


def load_weights(model: nn.Module, path: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    model.load_state_dict(state)


class _Times(logging.Handler):
    """Collects the official code's 'robust accuracy after X: ... (total time T s)' lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.after: dict[str, tuple[float, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", record.getMessage())
        if m:
            self.after[m.group(1).lower()] = (float(m.group(2)) / 100, float(m.group(3)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="first N CIFAR-10 test images")
    p.add_argument("--arch", default="small_cnn", help="small_cnn or a robustact architecture name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="weights (.safetensors or a torch state_dict)")
    p.add_argument("--train-epochs", type=int, default=8, help="brief PGD-AT when no checkpoint (0: random)")
    p.add_argument("--train-n", type=int, default=4000)
    p.add_argument("--eps", type=float, default=8.0, help="Linf epsilon in 1/255 units")
    p.add_argument("--version", default="standard", choices=["standard", "plus"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--only", choices=["robustact", "official"], default=None, help="run one library only")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    eps = args.eps / 255
    from robustact.data import load_dataset

    x_te, y_te = load_dataset("cifar10", "test")
    x, y = (x_te[:args.n].float() / 255).to(device), y_te[:args.n].to(device)
    model = build(args.arch).to(device)
    if args.checkpoint:
        load_weights(model, args.checkpoint)
        origin = f"checkpoint {Path(args.checkpoint).name}"
    elif args.train_epochs > 0:
        x_tr, y_tr = load_dataset("cifar10", "train")
        print(f"training {args.arch} with PGD-AT for {args.train_epochs} epochs on {args.train_n} images ...")
        start = time.perf_counter()
        torch.manual_seed(0)
        quick_pgd_at(model, (x_tr[:args.train_n].float() / 255).to(device), y_tr[:args.train_n].to(device),
                     args.train_epochs, eps, verbose=True)
        origin = f"PGD-AT {args.train_epochs} epochs on {args.train_n} images ({time.perf_counter() - start:.0f} s)"
    else:
        origin = "random weights"
    model.eval()
    print(f"model: {args.arch} ({origin}); device {device}; {torch.get_num_threads()} CPU threads; "
          f"n={args.n}; eps={args.eps:g}/255; AutoAttack {args.version}")

    rows = {}
    if args.only != "official":
        from robustact.attacks import AutoAttack

        aa = AutoAttack(eps, version=args.version, seed=0, batch_size=args.batch_size)
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        res = aa.run(model, x, y)
        sync(device)
        acc = res.accuracy()
        rows["robustact"] = (time.perf_counter() - start, time.process_time() - cpu, acc["clean"], acc["worst_case"],
                             {k: (acc[k], t) for k, t in res.seconds.items()})
    if args.only != "robustact":
        import pyautoattack

        handler = _Times()
        logger = logging.getLogger("auto-attack")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        logger.propagate = False
        ref = pyautoattack.AutoAttack(model, eps=eps, norm="Linf", version=args.version, seed=0, device=device)
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        x_adv, _ = ref.run_standard_evaluation(x, y, batch_size=args.batch_size)
        sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        with torch.no_grad():
            robust = sum((model(x_adv[i:i + 500]).argmax(1) == y[i:i + 500]).sum().item()
                         for i in range(0, len(y), 500)) / len(y)
            clean = sum((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum().item()
                        for i in range(0, len(y), 500)) / len(y)
        per, prev = {}, 0.0
        for k, (acc, total) in handler.after.items():
            per[k] = (acc, total - prev)
            prev = total
        rows["official"] = (wall, cpu, clean, robust, per)

    print(f"\n{'':10s} {'wall s':>8s} {'CPU s':>8s} {'clean':>7s} {'robust':>7s}   "
          "per attack: robust accuracy after it (wall seconds)")
    for lib, (wall, cpu, clean, robust, per) in rows.items():
        detail = "  ".join(f"{k} {a:.1%} ({t:.1f}s)" for k, (a, t) in per.items())
        print(f"{lib:10s} {wall:8.1f} {cpu:8.1f} {clean:7.1%} {robust:7.1%}   {detail}")
    if len(rows) == 2:
        ours_, ref_ = rows["robustact"], rows["official"]
        gap = (ours_[3] - ref_[3]) * 100
        print(f"\nspeed-up, official / robustact: wall {ref_[0] / ours_[0]:.2f}x, CPU time {ref_[1] / ours_[1]:.2f}x; "
              f"robust accuracy robustact - official: {gap:+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
