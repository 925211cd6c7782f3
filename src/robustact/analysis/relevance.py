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

The class: `--class C`, `--class mean` (every class's rank profile averaged over the classes), or by default the
class on which the models' lowest clean accuracy is highest (`resolve_class`; the official figures show "cat",
class 3, which small CIFAR-10 models hardly classify). The panels share the x-axis, the y-axis (each model's
activations divided by its mean natural activation) and the relevance axis.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustact.analysis.figures import (
    ADVERSARIAL,
    NATURAL,
    RELEVANCE,
    common_limits,
    eps_text,
    legend_from,
    new_figure,
    save_figure,
    set_title,
    style_axes,
)
from robustact.analysis.registry import AnalysisOptions, ClassChoice, class_images, register_analysis, resolve_class
from robustact.attacks import predict
from robustact.checkpoints import checkpoint_label
from robustact.defenses.base import sites
from robustact.evaluation import open_run
from robustact.evaluation.protocols.cifs import build_paper


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


def relevance_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0,
                   batch: int = 250) -> dict:
    """Penultimate features (and the last site's input) of `x` and of its PGD-20 versions, and both predictions."""
    model.eval()
    attack = _adversary(model, eps, seed)
    x_adv = torch.cat([attack(model, x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])
    nat, nat_site = _features(model, x, batch)
    adv, adv_site = _features(model, x_adv, batch)
    return {"nat": nat.cpu(), "adv": adv.cpu(), "nat_site": None if nat_site is None else nat_site.cpu(),
            "adv_site": None if adv_site is None else adv_site.cpu(), "y": y.cpu(),
            "correct_nat": (predict(model, x, batch) == y).cpu(),
            "correct_adv": (predict(model, x_adv, batch) == y).cpu(),
            "weights": model.classifier_layer().weight.detach().float().cpu()}


def class_profile(data: dict, class_idx: int) -> dict:
    """The per-channel statistics of one class's images in `data` (`relevance_pass`), sorted by relevance."""
    keep = data["y"] == class_idx
    w = data["weights"][class_idx]
    order = torch.argsort(w, descending=True)
    out = {"order": order, "weight": w[order], "nat": data["nat"][keep].mean(0)[order],
           "adv": data["adv"][keep].mean(0)[order], "clean_acc": data["correct_nat"][keep].float().mean().item(),
           "adv_acc": data["correct_adv"][keep].float().mean().item(), "n": int(keep.sum())}
    if data["nat_site"] is not None and data["nat_site"].shape[1] == len(w):
        out["nat_unmasked"] = data["nat_site"][keep].mean(0)[order]
        out["adv_unmasked"] = data["adv_site"][keep].mean(0)[order]
    return out


def mean_profile(profiles: list[dict]) -> dict:
    """Per relevance rank, the class profiles averaged over the classes (a rank is a different channel in each
    class, so there is no channel order); accuracies class-balanced."""
    out: dict = {"order": None, "n": sum(p["n"] for p in profiles)}
    for key in ("weight", "nat", "adv", "nat_unmasked", "adv_unmasked"):
        if all(key in p for p in profiles):
            out[key] = torch.stack([p[key] for p in profiles]).mean(0)
    for key in ("clean_acc", "adv_acc"):
        out[key] = sum(p[key] for p in profiles) / len(profiles)
    return out


def relevance_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_idx: int, eps: float,
                      seed: int = 0, batch: int = 250) -> dict:
    """Per-channel statistics for the images `x` (all of class `class_idx`); sorted by relevance."""
    return class_profile(relevance_pass(model, x, y, eps, seed, batch), class_idx)


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


def _mean_summary(rows: list[dict]) -> dict:
    """The class summaries averaged over the classes (a field empty in any class stays empty)."""
    out = {"n_images": sum(r["n_images"] for r in rows)}
    for key in list(rows[0])[1:]:
        vals = [r[key] for r in rows]
        out[key] = "" if any(v == "" for v in vals) else round(sum(vals) / len(vals), 5)
    return out


def plot_relevance(profiles: list[tuple[str, dict]], choice: ClassChoice, eps: float):
    """One panel per model, stacked: natural and adversarial mean activation per channel, channels sorted by
    relevance (shared x), each model's activations divided by its mean natural activation so that models whose
    features differ in scale (CIFS' are ~50× smaller) share one y-axis; the relevance weights on a right axis,
    also shared. One legend, built from the first panel's lines."""
    fig, axes = new_figure(len(profiles), 1, (7.5, 2.6), sharex=True, sharey=True)
    attack = f"PGD-20 (ε = {eps_text(eps)})"
    twins = []
    for ax, (name, prof) in zip(axes[:, 0], profiles):
        ranks = np.arange(len(prof["weight"]))
        scale = float(prof["nat"].mean()) or 1.0
        (nat,) = ax.plot(ranks, (prof["nat"] / scale).numpy(), color=NATURAL, lw=1.1, label="natural")
        (adv,) = ax.plot(ranks, (prof["adv"] / scale).numpy(), color=ADVERSARIAL, lw=1.1,
                         label=f"adversarial, {attack}")
        ax.set_ylabel("activation ÷ mean natural")
        ax.set_title(f"{name}: clean {prof['clean_acc']:.0%}, PGD-20 {prof['adv_acc']:.0%} "
                     f"(mean natural activation {scale:.3g})")
        twin = ax.twinx()
        if twins:
            twin.sharey(twins[0])
        twins.append(twin)
        (rel,) = twin.plot(ranks, prof["weight"].numpy(), color=RELEVANCE, lw=0.9, ls="--",
                           label="relevance (final-layer weight)")
        twin.axhline(0, color=RELEVANCE, lw=0.5)
        twin.set_ylabel("final-layer weight", color=RELEVANCE)
        style_axes(ax, channel_x=True)
        style_axes(twin)
        if not twins[1:]:
            legend_from(fig, [nat, adv, rel], loc="outside lower center", ncol=3)
    twins[0].set_ylim(*common_limits([p["weight"].numpy() for _, p in profiles], include_zero=True))
    axes[-1, 0].set_xlabel("penultimate channels, ranked by relevance to the class (descending)")
    style_axes(axes[-1, 0], channel_x=True)
    set_title(fig, f"Relevance-sorted penultimate activations: natural vs {attack}", choice.describe())
    return fig


def _write_profile_csv(path: Path, prof: dict) -> None:
    cols = ["rank", "channel", "weight", "nat_mean", "adv_mean"]
    extra = "nat_unmasked" in prof
    if extra:
        cols += ["nat_mean_before_last_mask", "adv_mean_before_last_mask"]
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(cols)
        for r in range(len(prof["weight"])):
            channel = "" if prof["order"] is None else int(prof["order"][r])
            row = [r, channel, f"{prof['weight'][r]:.6g}", f"{prof['nat'][r]:.6g}", f"{prof['adv'][r]:.6g}"]
            if extra:
                row += [f"{prof['nat_unmasked'][r]:.6g}", f"{prof['adv_unmasked'][r]:.6g}"]
            wr.writerow(row)


@register_analysis("relevance")
def relevance(targets: list[Path], options: AnalysisOptions) -> list[Path]:
    """Per run a profile CSV (`--class mean`: the class-averaged rank profile, no channel column values), a
    summary CSV (`--class mean`: a row per class and the mean), and the figure."""
    runs = [(checkpoint_label(t), open_run(t, options.which, options.n, options.device, data_root=options.data_root))
            for t in targets]
    choice = resolve_class(options.class_idx, runs)
    written: list[Path] = []
    profiles: list[tuple[str, dict]] = []
    summary_rows = []
    for name, run in runs:
        base = {"run": name, "checkpoint": str(run.weights)}
        if choice.index is None:
            data = relevance_pass(run.model, run.x, run.y, options.eps, options.seed)
            per_class = [class_profile(data, c) for c in choice.classes]
            rows = [base | {"class": c} | _summary(p) for c, p in zip(choice.classes, per_class)]
            summary_rows += rows + [base | {"class": "mean"} | _mean_summary([_summary(p) for p in per_class])]
            prof = mean_profile(per_class)
        else:
            x, y = class_images(run, choice.index)
            prof = relevance_profile(run.model, x, y, choice.index, options.eps, options.seed)
            summary_rows.append(base | {"class": choice.index} | _summary(prof))
        profiles.append((name, prof))
        path = options.out / f"relevance-{name}-{choice.stem}.csv"
        _write_profile_csv(path, prof)
        written.append(path)
    path = options.out / f"relevance-summary-{choice.stem}.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(summary_rows[0]))
        wr.writeheader()
        wr.writerows(summary_rows)
    written.append(path)
    png = options.out / f"relevance-{choice.stem}.png"
    save_figure(plot_relevance(profiles, choice, options.eps), png)
    written.append(png)
    return written
