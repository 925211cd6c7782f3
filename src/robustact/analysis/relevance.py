"""Relevance-sorted channel activations (CIFS paper, Yan et al. 2021, Fig. 1/4): does adversarial data
over-activate the channels that are *negatively* relevant to the true class?

For each run and one class C: the first `n` test images, those of class C; adversarial versions by PGD-20
(step ε/10, no random start, the CIFS paper protocol's joint loss with β_atk = 2 — plain CE for a model
without CIFS sites); the per-channel mean of the penultimate features (the input of the final Linear, i.e.
after the CIFS mask for a CIFS model) over natural and over adversarial images; channels sorted by the
class's final-layer weight `W[C, c]` (its "relevance" to C), descending. For CIFS models the features of
the last site before its mask are recorded as well.

Writes per run `relevance-<run>-class<C>.csv` (rank, channel, weight, nat_mean, adv_mean[, the unmasked
pair]), a summary CSV (mean adversarial − natural activation over the positively and the negatively
relevant channels, and the weight-weighted shift Σ_c W[C,c]·(adv − nat)), and one PNG with a panel per run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from robustact.analysis.registry import AnalysisOptions, class_images, register_analysis
from robustact.checkpoints import checkpoint_label
from robustact.data import dataset_info
from robustact.defenses.base import sites
from robustact.evaluation import open_run
from robustact.evaluation.protocols.cifs import build_paper

DEFAULT_CLASS = 3  # "cat" on CIFAR-10, one of the two classes of the official figures


def _adversary(model: nn.Module, eps: float, seed: int):
    return build_paper(model, eps, seed, include_aa=False)["pgd20"]


@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(penultimate features (N, D), the last defense site's input pooled (N, C) or None)."""
    last = sites(model)[-1] if sites(model) else None
    caught: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda m, inp, out: caught.append(inp[0].mean(dim=(2, 3)))) if last else None
    try:
        feats = torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    finally:
        if hook is not None:
            hook.remove()
    return feats.float(), (torch.cat(caught).float() if caught else None)


def relevance_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_idx: int, eps: float,
                      seed: int = 0, batch: int = 250) -> dict:
    """Per-channel statistics for the images `x` (all of class `class_idx`); sorted by relevance."""
    model.eval()
    attack = _adversary(model, eps, seed)
    x_adv = torch.cat([attack(model, x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])
    nat, nat_site = _features(model, x, batch)
    adv, adv_site = _features(model, x_adv, batch)
    with torch.no_grad():
        w = model.classifier_layer().weight[class_idx].detach().float().cpu()
        pred_nat = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
        pred_adv = torch.cat([model(x_adv[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    order = torch.argsort(w, descending=True)
    out = {"order": order, "weight": w[order], "nat": nat.mean(0).cpu()[order], "adv": adv.mean(0).cpu()[order],
           "clean_acc": (pred_nat == y).float().mean().item(), "adv_acc": (pred_adv == y).float().mean().item(),
           "n": len(y)}
    if nat_site is not None and nat_site.shape[1] == len(w):
        out["nat_unmasked"] = nat_site.mean(0).cpu()[order]
        out["adv_unmasked"] = adv_site.mean(0).cpu()[order]
    return out


def _summary(prof: dict) -> dict:
    w, shift = prof["weight"], prof["adv"] - prof["nat"]
    pos, neg = w > 0, w < 0
    return {
        "n_images": prof["n"], "clean_acc": round(prof["clean_acc"], 4), "pgd20_acc": round(prof["adv_acc"], 4),
        "mean_shift_positive_channels": round(shift[pos].mean().item(), 5) if pos.any() else "",
        "mean_shift_negative_channels": round(shift[neg].mean().item(), 5) if neg.any() else "",
        "weighted_shift": round((w * shift).sum().item(), 5),
        "nat_mean_negative_channels": round(prof["nat"][neg].mean().item(), 5) if neg.any() else "",
        "adv_mean_negative_channels": round(prof["adv"][neg].mean().item(), 5) if neg.any() else "",
    }


def _plot(profiles: list[tuple[str, dict]], class_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(profiles), 1, figsize=(9, 3.2 * len(profiles)), squeeze=False)
    for ax, (name, prof) in zip(axes[:, 0], profiles):
        ranks = range(len(prof["weight"]))
        ax.plot(ranks, prof["nat"], color="tab:blue", lw=1.2, label="natural")
        ax.plot(ranks, prof["adv"], color="tab:red", lw=1.2, label="adversarial (PGD-20)")
        ax.set_ylabel("mean activation")
        ax.set_title(f"{name}: class {class_name}, {prof['n']} images, clean {prof['clean_acc']:.0%}, "
                     f"PGD-20 {prof['adv_acc']:.0%}", fontsize=10)
        twin = ax.twinx()
        twin.plot(ranks, prof["weight"], color="gray", lw=0.8, ls="--", label="relevance (final weight)")
        twin.axhline(0, color="gray", lw=0.5)
        twin.set_ylabel("final-layer weight", color="gray")
        lines = ax.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("penultimate channels, sorted by relevance to the class (descending)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_analysis("relevance")
def relevance(targets: list[Path], options: AnalysisOptions) -> list[Path]:
    class_idx = DEFAULT_CLASS if options.class_idx is None else int(options.class_idx)
    written: list[Path] = []
    profiles: list[tuple[str, dict]] = []
    summary_rows = []
    class_name = str(class_idx)
    for target in targets:
        run = open_run(target, options.which, options.n, options.device, data_root=options.data_root)
        x, y = class_images(run, class_idx)
        if not run.config.data.classes:
            names = dataset_info(run.config.data.dataset).class_names
            class_name = f"{class_idx} ({names[class_idx]})" if class_idx < len(names) else class_name
        prof = relevance_profile(run.model, x, y, class_idx, options.eps, options.seed)
        name = checkpoint_label(target)
        profiles.append((name, prof))
        path = options.out / f"relevance-{name}-class{class_idx}.csv"
        cols = ["rank", "channel", "weight", "nat_mean", "adv_mean"]
        extra = "nat_unmasked" in prof
        if extra:
            cols += ["nat_mean_before_last_mask", "adv_mean_before_last_mask"]
        with open(path, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(cols)
            for r in range(len(prof["weight"])):
                row = [r, int(prof["order"][r]), f"{prof['weight'][r]:.6g}", f"{prof['nat'][r]:.6g}",
                       f"{prof['adv'][r]:.6g}"]
                if extra:
                    row += [f"{prof['nat_unmasked'][r]:.6g}", f"{prof['adv_unmasked'][r]:.6g}"]
                wr.writerow(row)
        written.append(path)
        summary_rows.append({"run": name, "checkpoint": str(run.weights), "class": class_idx} | _summary(prof))
    path = options.out / f"relevance-summary-class{class_idx}.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(summary_rows[0]))
        wr.writeheader()
        wr.writerows(summary_rows)
    written.append(path)
    png = options.out / f"relevance-class{class_idx}.png"
    _plot(profiles, class_name, png)
    written.append(png)
    return written
