"""torch.compile with every defense: does it compile, how long does compiling take, and what does it buy per
PGD-k training step against eager mode, on the same network and batch.

    python benchmarks/bench_compile.py [--arch resnet_small] [--device cpu] [--steps 3]

A defense torch.compile cannot compile is refused by robustact in one line (`training.compile`); the table says
which and why.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from robustact import build_model
from robustact.bench import time_it
from robustact.errors import RobustactError
from robustact.training.objectives import ObjectiveContext, get_objective
from robustact.training.trainer import check_compile

CASES = [("none", "relu"), ("cas", "relu"), ("ewas", "relu"), ("cifs", "relu"), ("none", "sparta")]


def one(arch: str, defense: str, activation: str, device, batch_size: int, steps: int, pgd_steps: int) -> str:
    torch.manual_seed(0)
    model = build_model(arch, defense=None if defense == "none" else defense, activation=activation).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    objective, ctx = get_objective("pgd_at"), ObjectiveContext(steps=pgd_steps)

    def step(fwd):
        def run():
            model.train()
            loss, _ = objective(fwd, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    eager = batch_size / time_it(step(model), device, steps)
    try:
        compiled = check_compile(model, True)
    except RobustactError as exc:
        return f"| {defense} | {activation} | refused | — | {eager:.1f} | — | — | {exc} |"
    start = time.perf_counter()
    try:
        step(compiled)()
    except Exception as exc:  # noqa: BLE001 — the table reports what torch.compile said
        return f"| {defense} | {activation} | fails | — | {eager:.1f} | — | — | {type(exc).__name__} |"
    first = time.perf_counter() - start
    fast = batch_size / time_it(step(compiled), device, steps, warmup=1)
    return f"| {defense} | {activation} | yes | {first:.0f} | {eager:.1f} | {fast:.1f} | {fast / eager:.2f}x | |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet_small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--pgd-steps", type=int, default=10)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"{args.arch}, batch {args.batch_size}, PGD-{args.pgd_steps} AT step; {device}, "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}\n")
    print("| defense | activation | compiles | first step incl. compiling (s) | eager (images/s) | compiled "
          "(images/s) | speed-up | note |\n|---|---|---|---:|---:|---:|---:|---|")
    for defense, activation in CASES:
        print(one(args.arch, defense, activation, device, args.batch_size, args.steps, args.pgd_steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
