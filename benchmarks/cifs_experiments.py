"""Run (a subset of) the CIFS `paper` / `adaptive` attacks on a run — CIFS or plain, the joint terms vanish on
a plain model, so a PGD-AT baseline gets exactly the same attacks — and write the usual JSON + Markdown report.
What `robustact eval RUN --suite paper|adaptive` does, plus: a subset of attacks, any model, cascade mode.

    python benchmarks/cifs_experiments.py RUN --suite paper --attacks fgsm,pgd20 --n 500 --out docs/results/x.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from robustact.evaluation import evaluate
from robustact.evaluation.protocols.cifs import build_adaptive, build_paper
from robustact.evaluation.report import format_table, write_reports
from robustact.runs import load_model
from robustact.training.data_setup import prepare_test_data
from robustact.utils import seed_everything


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--suite", choices=["paper", "adaptive"], required=True)
    ap.add_argument("--attacks", help="comma-separated subset of the suite's attack names (default: all)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first test image")
    ap.add_argument("--which", default="best", choices=["best", "last"])
    ap.add_argument("--cascade", action="store_true", help="each attack only on the examples still robust")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, config, weights = load_model(args.run, which=args.which)
    eps = 8 / 255
    build = build_paper if args.suite == "paper" else build_adaptive
    attacks = build(model, eps, 0)
    if args.attacks:
        names = [a.strip() for a in args.attacks.split(",") if a.strip()]
        unknown = [a for a in names if a not in attacks]
        if unknown:
            raise SystemExit(f"unknown attacks {unknown}; the suite has {list(attacks)}")
        attacks = {a: attacks[a] for a in names}
    seed_everything(0)
    x_u8, y = prepare_test_data(config["data"], args.start + args.n, None)
    x = x_u8[args.start:].float().div_(255)
    y = y[args.start:]
    start = time.perf_counter()
    result = evaluate(model, x, y, attacks, eps=eps, batch_size=args.batch_size, progress=False, seed=0,
                      only_robust=args.cascade)
    title = (f"{weights} — CIFS {args.suite} protocol ({config['data']['dataset']} test images "
             f"{args.start}-{args.start + args.n - 1}{', cascade' if args.cascade else ''})")
    print(format_table(result, title=title))
    meta = {"checkpoint": str(weights), "dataset": config["data"]["dataset"], "device": "cpu",
            "torch": torch.__version__, "suite": f"cifs-{args.suite}",
            "images": f"{args.start}-{args.start + args.n - 1}",
            "cascade": args.cascade, "threads": torch.get_num_threads(),
            "wall_seconds": round(time.perf_counter() - start, 1)}
    write_reports(result, Path(args.out), meta, title=title)
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
