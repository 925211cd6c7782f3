"""`robustact analyze RUN --kind gates`: learned Sparta gates σ(A(x)) on natural vs adversarial inputs.

Sparta here is OUR RECONSTRUCTION (docs/sparta.md). For each run: the first n test images (of `--class` if given),
their PGD-20 adversarial versions (ε `--eps`, against the run's model), and at every Sparta site the gate map
σ(A(x)) averaged over images and channels. Per stage (the module name's stage: `act` stem, `layer1`..) the site
maps are averaged. Writes, per run:

- `gates_<run>.png`: rows natural / adversarial / adversarial − natural, one column per stage (natural and
  adversarial on one colour scale per stage, the differences on one symmetric scale for all the stages);
- `gates_<run>.csv`: per site — stage, shape, mean gate and fraction of open gates (> 0.5) on natural and
  adversarial inputs, and the learned kernel's centre tap and off-centre mass (Σ|off-centre| / Σ|all|).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from robustact.analysis.figures import LABEL, TICK, eps_text, new_figure, save_figure, set_title
from robustact.analysis.registry import WARN_BELOW, AnalysisOptions, class_images, class_name, register_analysis, warn
from robustact.attacks import predict
from robustact.attacks.registry import make_attack
from robustact.checkpoints import checkpoint_label
from robustact.errors import RobustactError
from robustact.evaluation import open_run
from robustact.models.sparta import Sparta, site_key
from robustact.utils import seed_everything


@torch.no_grad()
def collect_gates(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 250) -> dict[str, dict]:
    """{site: {"map": mean gate (H, W), "mean": float, "open": fraction > 0.5}} over the images `x`."""
    sites = {n: m for n, m in model.named_modules() if isinstance(m, Sparta)}
    sums: dict[str, dict] = {n: {"map": None, "sum": 0.0, "open": 0.0, "count": 0} for n in sites}
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: Sparta, inputs: tuple, output: torch.Tensor) -> None:
            current[name] = module.gate(inputs[0]).float()
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in sites.items()]
    try:
        for i in range(0, len(x), batch_size):
            current.clear()
            model(x[i:i + batch_size])
            for name, g in current.items():
                s = sums[name]
                m = g.mean(dim=1).sum(dim=0).cpu()
                s["map"] = m if s["map"] is None else s["map"] + m
                s["sum"] += g.sum().item()
                s["open"] += (g > 0.5).sum().item()
                s["count"] += g.numel()
    finally:
        for h in handles:
            h.remove()
    n = len(x)
    return {name: {"map": s["map"] / n, "mean": s["sum"] / s["count"], "open": s["open"] / s["count"]}
            for name, s in sums.items() if s["count"]}


def kernel_stats(module: torch.nn.Module) -> tuple[float, float]:
    """(mean centre tap, off-centre mass Σ|off| / Σ|all|) of a Sparta module's effective kernel."""
    w = module.kernel().detach().float()
    k = w.shape[-1]
    centre = w[:, :, k // 2, k // 2]
    total = w.abs().sum().item()
    off = total - centre.abs().sum().item()
    return centre.mean().item(), off / total if total > 0 else 0.0


def _stage_maps(stats: dict[str, dict]) -> dict[str, torch.Tensor]:
    groups: dict[str, list[torch.Tensor]] = {}
    for name, s in stats.items():
        groups.setdefault(site_key(name)[0], []).append(s["map"])
    return {stage: torch.stack(maps).mean(0) for stage, maps in groups.items()
            if len({tuple(m.shape) for m in maps}) == 1}


def plot_gates(label: str, nat: dict[str, torch.Tensor], adv: dict[str, torch.Tensor], eps: float, images: str,
               accuracy: tuple[float, float] | None = None):
    """Rows natural / adversarial / adversarial − natural, one column per stage. Natural and adversarial maps of
    a stage share one colour scale (and one colour bar); the differences share one symmetric scale over all the
    stages, so that the stages' shifts compare. `images` says which images, `accuracy` (clean, PGD-20) on them."""
    from matplotlib.ticker import MaxNLocator

    stages = list(nat)
    fig, axes = new_figure(3, len(stages), (2.4, 2.3))
    diffs = {stage: adv[stage] - nat[stage] for stage in stages}
    r = max(max(d.abs().max().item() for d in diffs.values()), 1e-6)
    attack = f"PGD-20 (ε = {eps_text(eps)})"
    for j, stage in enumerate(stages):
        lo = min(nat[stage].min().item(), adv[stage].min().item())
        hi = max(nat[stage].max().item(), adv[stage].max().item())
        rows = [(nat[stage], "natural"), (adv[stage], "adversarial"), (diffs[stage], "adv − nat")]
        for i, (m, what) in enumerate(rows):
            ax = axes[i][j]
            if i < 2:
                im = ax.imshow(m.numpy(), cmap="viridis", vmin=lo, vmax=hi)
            else:
                im = ax.imshow(m.numpy(), cmap="coolwarm", vmin=-r, vmax=r)
            ax.set_xticks([])
            ax.set_yticks([])
            mean = f"{m.mean().item():+.2g}" if i == 2 else f"{m.mean().item():.3f}"
            ax.set_title(f"{stage}: {what}\nmean {mean}", fontsize=LABEL)
            if i == 1:
                bar = fig.colorbar(im, ax=[axes[0][j], axes[1][j]], fraction=0.046, pad=0.04)
                bar.ax.tick_params(labelsize=TICK)
                bar.ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    bar = fig.colorbar(im, ax=list(axes[2]), fraction=0.046, pad=0.02, label="adversarial − natural gate")
    bar.ax.tick_params(labelsize=TICK)
    bar.ax.yaxis.label.set_size(LABEL)
    acc = "" if accuracy is None else f"; clean {accuracy[0]:.0%}, PGD-20 {accuracy[1]:.0%}"
    set_title(fig, f"{label}: mean Sparta gate σ(A(x)) per stage (reconstruction), natural vs {attack}",
              f"{images}{acc}")
    return fig


def _write_csv(path: Path, model: torch.nn.Module, nat: dict, adv: dict) -> None:
    modules = dict(model.named_modules())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["site", "stage", "shape", "mean_gate_nat", "mean_gate_adv", "open_frac_nat",
                    "open_frac_adv", "kernel_centre_mean", "kernel_offcentre_mass"])
        for name in nat:
            centre, off = kernel_stats(modules[name])
            w.writerow([name, site_key(name)[0], "x".join(map(str, nat[name]["map"].shape)),
                        f"{nat[name]['mean']:.5f}", f"{adv[name]['mean']:.5f}", f"{nat[name]['open']:.5f}",
                        f"{adv[name]['open']:.5f}", f"{centre:.4f}", f"{off:.4f}"])


@register_analysis("gates")
def gates(targets: list[Path], options: AnalysisOptions) -> list[Path]:
    """Without `--class`, and with `--class mean`, the gates are averaged over all the first n test images (the
    figure is not about one class). With `--class C`, a model under WARN_BELOW clean accuracy on the class's
    images gets a one-line warning."""
    one_class = isinstance(options.class_idx, int)
    written: list[Path] = []
    for target in targets:
        seed_everything(options.seed)
        run = open_run(target, options.which, None if one_class else options.n, options.device,
                       data_root=options.data_root)
        if not any(isinstance(m, Sparta) for m in run.model.modules()):
            raise RobustactError(f"{target} has no Sparta activations; --kind gates needs a model trained with "
                                 "model.activation=sparta (or a sparta variant)")
        x, y = class_images(run, options.class_idx, options.n) if one_class else (run.x, run.y)
        attack = make_attack("pgd20", options.eps, seed=options.seed)
        x_adv = torch.cat([attack(run.model, x[i:i + 250], y[i:i + 250]) for i in range(0, len(x), 250)])
        accuracy = ((predict(run.model, x) == y).float().mean().item(),
                    (predict(run.model, x_adv) == y).float().mean().item())
        label = checkpoint_label(target)
        if one_class:
            images = f"class {class_name(run, options.class_idx)}: the first {len(x)} of its test images"
            if accuracy[0] < WARN_BELOW:
                warn(f"class {class_name(run, options.class_idx)}: clean accuracy under {WARN_BELOW:.0%} on its "
                     f"{len(x)} images for {label} {accuracy[0]:.0%}; the figure may mean little; omit --class to "
                     "use all the test images")
        else:
            images = f"the first {len(x)} test images, all classes"
        nat, adv = collect_gates(run.model, x), collect_gates(run.model, x_adv)
        csv_path, png = options.out / f"gates_{label}.csv", options.out / f"gates_{label}.png"
        _write_csv(csv_path, run.model, nat, adv)
        save_figure(plot_gates(label, _stage_maps(nat), _stage_maps(adv), options.eps, images, accuracy), png)
        written += [csv_path, png]
    return written
