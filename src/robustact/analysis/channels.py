"""CAS' channel analysis (Bai et al. 2021, Figures 1-2): activation frequency and magnitude per channel at the
last CAS site, for natural and PGD-20 adversarial test images of one class, models side by side.

For each model: hook the input of the slot where CAS puts its last site (the post-ReLU output of the last
block; for a CAS model that is the site's pre-mask input, for a plain model the same place in the plain
network); per image GAP -> one value per channel. A channel is "activated" by an image if its value exceeds
1% of that image's largest channel value. Frequency = number of the class's images activating the channel
(bars, channels sorted by natural frequency). Magnitude = the mean value over all the class's images (a
true mean; the official script averages batch means pairwise, a biased running mean), curves sorted in
descending order. The CSV also holds the mean over activating images only (the official definition,
without the running-mean bias).

Adversarial images: PGD-20, ε = options.eps, step 0.003, random start, eval mode (predicted masks), loss
`CE_final + 2·mean CE_aux` (the CAS paper protocol; a plain model has no aux term) — each model attacked
white-box.

The class: `--class C`, `--class mean` (every class's statistics, as shares of its images, averaged over the
classes), or by default the class on which the models' lowest clean accuracy is highest (`resolve_class`). The
figure shares each row's y-axis and the channel range across the models; the CSV has one row per model, class
and channel.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from robustact.analysis.figures import (
    ADVERSARIAL,
    NATURAL,
    eps_text,
    legend_from,
    new_figure,
    save_figure,
    set_title,
    style_axes,
)
from robustact.analysis.registry import AnalysisOptions, ClassChoice, class_images, register_analysis, resolve_class
from robustact.attacks import PGD, AuxTerm, predict
from robustact.checkpoints import checkpoint_label
from robustact.defenses.placement import placement_slots
from robustact.evaluation import open_run

THRESHOLD = 0.01


def _slot_path(model) -> str:
    """The slot of CAS's last site in this architecture (the placement table's), defended or not."""
    return placement_slots("cas", getattr(model, "arch", ""), model)[-1].path


@torch.no_grad()
def channel_values(model, x: torch.Tensor, path: str, batch_size: int = 250) -> torch.Tensor:
    """(N, C) GAP of the activation entering module `path`, in eval mode with predicted masks."""
    captured: list[torch.Tensor] = []

    def hook(module, inputs, output) -> None:
        captured.append(inputs[0].detach().float().mean(dim=(2, 3)).cpu())

    handle = model.get_submodule(path).register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(captured)


def channel_stats(values: torch.Tensor, threshold: float = THRESHOLD) -> dict[str, torch.Tensor]:
    """Per channel: frequency (images activating it), true mean, and the mean over activating images."""
    active = values > threshold * values.amax(dim=1, keepdim=True)
    freq = active.sum(0)
    mean = values.mean(0)
    mean_active = (values * active).sum(0) / freq.clamp_min(1)
    return {"freq": freq, "mean": mean, "mean_active": mean_active}


def _adversarial(model, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    attack = PGD(eps, steps=20, alpha=0.003, random_start=True, extra_loss=AuxTerm(2.0), seed=seed)
    return torch.cat([attack(model, x[i:i + 250], y[i:i + 250]) for i in range(0, len(x), 250)])


def analyse(model, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0) -> dict:
    """Channel statistics of the images `x` (natural) and their PGD-20 versions; the per-image channel values
    and labels are kept for per-class statistics (`--class mean`)."""
    path = _slot_path(model)
    x_adv = _adversarial(model, x, y, eps, seed)
    with torch.no_grad():
        model.eval()
        correct_nat = (predict(model, x) == y).cpu()
        correct_adv = (predict(model, x_adv) == y).cpu()
    values_nat, values_adv = channel_values(model, x, path), channel_values(model, x_adv, path)
    return {"slot": path, "natural": channel_stats(values_nat), "adversarial": channel_stats(values_adv),
            "acc_natural": correct_nat.float().mean().item(), "acc_adversarial": correct_adv.float().mean().item(),
            "n": len(y), "values_natural": values_nat, "values_adversarial": values_adv, "y": y.cpu(),
            "correct_natural": correct_nat, "correct_adversarial": correct_adv}


def per_class(r: dict, classes: list[int]) -> dict[int, dict]:
    """{class: the statistics of `analyse` restricted to that class's images}."""
    out = {}
    for c in classes:
        keep = r["y"] == c
        out[c] = {"slot": r["slot"], "natural": channel_stats(r["values_natural"][keep]),
                  "adversarial": channel_stats(r["values_adversarial"][keep]), "n": int(keep.sum()),
                  "acc_natural": r["correct_natural"][keep].float().mean().item(),
                  "acc_adversarial": r["correct_adversarial"][keep].float().mean().item()}
    return out


def profile(r: dict, share: bool = False) -> dict[str, torch.Tensor]:
    """What a panel draws: frequency sorted by natural frequency (natural and adversarial in that one order) and
    magnitude sorted descending; as a share of the images with `share`."""
    nat, adv = r["natural"], r["adversarial"]
    scale = 1.0 / max(r["n"], 1) if share else 1.0
    order = torch.argsort(nat["freq"], descending=True, stable=True)
    return {"freq_natural": nat["freq"][order].double() * scale,
            "freq_adversarial": adv["freq"][order].double() * scale,
            "mag_natural": torch.sort(nat["mean"], descending=True).values.double(),
            "mag_adversarial": torch.sort(adv["mean"], descending=True).values.double()}


def mean_profile(classes: dict[int, dict]) -> dict:
    """The per-class profiles (shares of each class's images) averaged over the classes, and the class-balanced
    accuracies."""
    profiles = [profile(r, share=True) for r in classes.values()]
    out: dict = {key: torch.stack([p[key] for p in profiles]).mean(0) for key in profiles[0]}
    for key in ("acc_natural", "acc_adversarial"):
        out[key] = sum(r[key] for r in classes.values()) / len(classes)
    out["n"] = sum(r["n"] for r in classes.values())
    return out


def plot_channels(panels: list[tuple[str, dict]], choice: ClassChoice, eps: float, slot: str):
    """The figure: one column per model; row 1 activation frequency (natural bars, adversarial steps, channels
    sorted by natural frequency), row 2 mean magnitude (sorted). Each row shares its y-axis and every panel the
    channel range, so the models are compared on one scale. `panels`: (model label, `profile` + accuracies)."""
    share = choice.index is None
    fig, axes = new_figure(2, len(panels), (4.6, 3.4), sharey="row")
    channels = max(len(p["freq_natural"]) for _, p in panels)
    attack = f"PGD-20 (ε = {eps_text(eps)})"
    for col, (name, p) in enumerate(panels):
        xs = np.arange(len(p["freq_natural"]))
        ax = axes[0][col]
        bars = ax.bar(xs, p["freq_natural"].numpy(), width=1.0, color=NATURAL, alpha=0.45, linewidth=0,
                      label="natural")
        (steps,) = ax.step(xs, p["freq_adversarial"].numpy(), where="mid", color=ADVERSARIAL, lw=1.1,
                           label=f"adversarial, {attack}")
        ax.set_title(f"{name}\nclean {p['acc_natural']:.0%}, PGD-20 {p['acc_adversarial']:.0%}")
        ax.set_xlabel("channel rank (by natural frequency)")
        ax = axes[1][col]
        (nat,) = ax.plot(xs, p["mag_natural"].numpy(), color=NATURAL, lw=1.4, label="natural")
        (adv,) = ax.plot(xs, p["mag_adversarial"].numpy(), color=ADVERSARIAL, lw=1.4,
                         label=f"adversarial, {attack}")
        ax.set_xlabel("channel rank (by magnitude)")
        if col == 0:
            legend_from(axes[0][0], [bars, steps], loc="upper center", ncol=2)
            legend_from(axes[1][0], [nat, adv], loc="upper right")
    axes[0][0].set_ylabel("share of the class's images activating\n(mean over classes)" if share
                          else "images activating the channel")
    axes[1][0].set_ylabel("mean activation (GAP)")
    for row, line in enumerate(axes):
        for ax in line:
            ax.set_xlim(-0.5, channels - 0.5)
            style_axes(ax, channel_x=True, channel_y=row == 0 and not share)  # counts of images: integer ticks
    top = max(float(max(p["freq_natural"].max(), p["freq_adversarial"].max())) for _, p in panels)
    axes[0][0].set_ylim(0, 1.3 * top or 1.0)   # headroom for the legend above the bars
    set_title(fig, f"Channel activation at the last CAS site ({slot} input, pre-mask): natural vs {attack}",
              choice.describe())
    return fig


def _write_csv(results: list[tuple[str, dict]], path: Path) -> None:
    """One row per model, class and channel (the class's own statistics, before any sorting)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "slot", "channel", "freq_natural", "freq_adversarial", "mean_natural",
                    "mean_adversarial", "mean_active_natural", "mean_active_adversarial", "n_images", "class",
                    "acc_natural", "acc_adversarial"])
        for name, classes in results:
            for class_idx, r in classes.items():
                nat, adv = r["natural"], r["adversarial"]
                for c in range(len(nat["freq"])):
                    w.writerow([name, r["slot"], c, int(nat["freq"][c]), int(adv["freq"][c]),
                                f"{nat['mean'][c]:.6g}", f"{adv['mean'][c]:.6g}", f"{nat['mean_active'][c]:.6g}",
                                f"{adv['mean_active'][c]:.6g}", r["n"], class_idx, f"{r['acc_natural']:.4f}",
                                f"{r['acc_adversarial']:.4f}"])
    tmp.replace(path)


@register_analysis("channels")
def channels(targets: list[Path], options: AnalysisOptions) -> list[Path]:
    runs = [(checkpoint_label(t), open_run(t, options.which, options.n, options.device, data_root=options.data_root))
            for t in targets]
    choice = resolve_class(options.class_idx, runs)
    results: list[tuple[str, dict[int, dict]]] = []
    panels: list[tuple[str, dict]] = []
    for name, run in runs:
        if choice.index is None:  # the mean over classes: every image attacked, statistics per class
            classes = per_class(analyse(run.model, run.x, run.y, options.eps, options.seed), choice.classes)
            panels.append((name, mean_profile(classes)))
        else:
            x, y = class_images(run, choice.index)
            r = analyse(run.model, x, y, options.eps, options.seed)
            classes = {choice.index: r}
            panels.append((name, profile(r) | {k: r[k] for k in ("acc_natural", "acc_adversarial", "n")}))
        results.append((name, classes))
    stem = f"channels_{choice.stem}"
    png, csv_path = options.out / f"{stem}.png", options.out / f"{stem}.csv"
    _write_csv(results, csv_path)
    slot = next(iter(results[0][1].values()))["slot"]
    save_figure(plot_channels(panels, choice, options.eps, slot), png)
    return [png, csv_path]
