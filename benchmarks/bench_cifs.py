"""Cost of CIFS (its double backprop) relative to the same network without it: one PGD-AT training step
(PGD-K attack in eval mode + label-conditioned forward/backward), and inference, plain vs CIFS, interleaved
so that load changes on a shared machine hit both alike. Reports wall and process CPU seconds (medians).

    python benchmarks/bench_cifs.py [--arch resnet_small] [--batch 128] [--pgd-steps 5] [--reps 5] [--out F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from robustact import build_model
from robustact.training.objectives import ObjectiveContext, pgd_at


def _timed(fn, *args) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet_small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"plain": build_model(args.arch), "cifs": build_model(args.arch, defense="cifs")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    ctx = ObjectiveContext(steps=args.pgd_steps, alpha=2.5 * (8 / 255) / args.pgd_steps)

    def step(name):
        m = models[name].train()
        loss, _ = pgd_at(m, x, y, ctx)
        opts[name].zero_grad()
        loss.backward()
        opts[name].step()

    def infer(name):
        m = models[name].eval()
        with torch.no_grad():
            m(x)

    results: dict[str, dict[str, list[float]]] = {}
    for what, fn in [("train_step", step), ("inference", infer)]:
        for name in models:
            fn(name)  # warm-up
        for _ in range(args.reps):
            for name in models:
                wall, cpu = _timed(fn, name)
                r = results.setdefault(f"{what}/{name}", {"wall": [], "cpu": []})
                r["wall"].append(wall)
                r["cpu"].append(cpu)
    summary = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in results.items()}
    for what in ("train_step", "inference"):
        p, c = summary[f"{what}/plain"], summary[f"{what}/cifs"]
        summary[f"{what}/ratio"] = {m: c[m] / p[m] for m in ("wall", "cpu")}
    summary["config"] = vars(args) | {"torch": torch.__version__, "threads": torch.get_num_threads()}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
