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
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from robustact.analysis.registry import AnalysisOptions, class_images, register_analysis
from robustact.attacks import PGD, AuxTerm
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
    path = _slot_path(model)
    x_adv = _adversarial(model, x, y, eps, seed)
    with torch.no_grad():
        model.eval()
        acc_nat = (model(x).argmax(1) == y).float().mean().item()
        acc_adv = (model(x_adv).argmax(1) == y).float().mean().item()
    return {"slot": path, "natural": channel_stats(channel_values(model, x, path)),
            "adversarial": channel_stats(channel_values(model, x_adv, path)),
            "acc_natural": acc_nat, "acc_adversarial": acc_adv, "n": len(y)}


def _plot(results: list[tuple[str, dict]], class_idx: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 8), squeeze=False)
    for col, (name, r) in enumerate(results):
        nat, adv = r["natural"], r["adversarial"]
        order = torch.argsort(nat["freq"], descending=True, stable=True)
        xs = range(len(order))
        ax = axes[0][col]
        ax.bar(xs, adv["freq"][order].numpy(), color="tab:orange", width=1.0, label="adversarial (PGD-20)")
        ax.bar(xs, nat["freq"][order].numpy(), color="tab:blue", alpha=0.5, width=1.0, label="natural")
        ax.set_title(f"{name}\nclass {class_idx}: {r['n']} images, acc nat {r['acc_natural']:.0%} / "
                     f"adv {r['acc_adversarial']:.0%}", fontsize=10)
        ax.set_xlabel("channel (sorted by natural frequency)")
        ax.set_ylabel("activation frequency (images)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot(torch.sort(nat["mean"], descending=True).values.numpy(), color="tab:blue", label="natural")
        ax.plot(torch.sort(adv["mean"], descending=True).values.numpy(), color="tab:orange",
                label="adversarial (PGD-20)")
        ax.set_xlabel("channel (sorted by magnitude)")
        ax.set_ylabel("mean activation (GAP)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Channel activation at the last CAS site ({results[0][1]['slot']}), pre-mask", fontsize=11)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _write_csv(results: list[tuple[str, dict]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "slot", "channel", "freq_natural", "freq_adversarial", "mean_natural",
                    "mean_adversarial", "mean_active_natural", "mean_active_adversarial", "n_images"])
        for name, r in results:
            nat, adv = r["natural"], r["adversarial"]
            for c in range(len(nat["freq"])):
                w.writerow([name, r["slot"], c, int(nat["freq"][c]), int(adv["freq"][c]),
                            f"{nat['mean'][c]:.6g}", f"{adv['mean'][c]:.6g}", f"{nat['mean_active'][c]:.6g}",
                            f"{adv['mean_active'][c]:.6g}", r["n"]])
    tmp.replace(path)


@register_analysis("channels")
def channels(targets: list[Path], options: AnalysisOptions) -> list[Path]:
    class_idx = 0 if options.class_idx is None else int(options.class_idx)
    results: list[tuple[str, dict]] = []
    for target in targets:
        run = open_run(target, options.which, options.n, options.device, data_root=options.data_root)
        x, y = class_images(run, class_idx)
        name = checkpoint_label(target)
        results.append((name, analyse(run.model, x, y, options.eps, options.seed)))
    stem = f"channels_class{class_idx}"
    png, csv_path = options.out / f"{stem}.png", options.out / f"{stem}.csv"
    _write_csv(results, csv_path)
    _plot(results, class_idx, png)
    return [png, csv_path]
