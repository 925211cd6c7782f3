"""`robustact analyze RUN --kind gates`: learned Sparta gates σ(A(x)) on natural vs adversarial inputs.

Sparta here is OUR RECONSTRUCTION (docs/sparta.md). For each run: the first n test images (of `--class` if given),
their PGD-20 adversarial versions (ε `--eps`, against the run's model), and at every Sparta site the gate map
σ(A(x)) averaged over images and channels. Per stage (the module name's stage: `act` stem, `layer1`..) the site
maps are averaged. Writes, per run:

- `gates_<run>.png`: rows natural / adversarial / adversarial − natural, one column per stage;
- `gates_<run>.csv`: per site — stage, shape, mean gate and fraction of open gates (> 0.5) on natural and
  adversarial inputs, and the learned kernel's centre tap and off-centre mass (Σ|off-centre| / Σ|all|).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from robustact.analysis.registry import AnalysisOptions, class_images, register_analysis
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


def _figure(label: str, nat: dict[str, torch.Tensor], adv: dict[str, torch.Tensor], eps: float, n: int,
            path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(nat)
    fig, axes = plt.subplots(3, len(stages), figsize=(2.3 * len(stages), 7), squeeze=False)
    for j, stage in enumerate(stages):
        rows = [(nat[stage], "natural"), (adv[stage], "adversarial"), (adv[stage] - nat[stage], "adv − nat")]
        lo = min(nat[stage].min().item(), adv[stage].min().item())
        hi = max(nat[stage].max().item(), adv[stage].max().item())
        for i, (m, what) in enumerate(rows):
            ax = axes[i][j]
            if i < 2:
                im = ax.imshow(m.numpy(), cmap="viridis", vmin=lo, vmax=hi)
            else:
                r = max(m.abs().max().item(), 1e-6)
                im = ax.imshow(m.numpy(), cmap="coolwarm", vmin=-r, vmax=r)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{stage}: {what}\nmean {m.mean().item():.3f}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.suptitle(f"{label}: mean Sparta gate σ(A(x)) per stage (reconstruction), {n} test images, "
                 f"PGD-20 ε={eps * 255:.3g}/255", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    written: list[Path] = []
    for target in targets:
        seed_everything(options.seed)
        run = open_run(target, options.which, None if options.class_idx is not None else options.n, options.device,
                       data_root=options.data_root)
        if not any(isinstance(m, Sparta) for m in run.model.modules()):
            raise RobustactError(f"{target} has no Sparta activations; --kind gates needs a model trained with "
                                 "model.activation=sparta (or a sparta variant)")
        x, y = (run.x, run.y) if options.class_idx is None else class_images(run, options.class_idx, options.n)
        attack = make_attack("pgd20", options.eps, seed=options.seed)
        x_adv = torch.cat([attack(run.model, x[i:i + 250], y[i:i + 250]) for i in range(0, len(x), 250)])
        nat, adv = collect_gates(run.model, x), collect_gates(run.model, x_adv)
        label = checkpoint_label(target)
        csv_path, png = options.out / f"gates_{label}.csv", options.out / f"gates_{label}.png"
        _write_csv(csv_path, run.model, nat, adv)
        _figure(label, _stage_maps(nat), _stage_maps(adv), options.eps, len(x), png)
        written += [csv_path, png]
    return written
